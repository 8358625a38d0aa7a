/**
 * Time and switch transactions to put 100 ports of a real Open vSwitch (the test harness: userspace
 * datapath, ovsdb-server over TCP) into a tenant VLAN with the ovsdb switch driver:
 *   - batched:     one apply of 100 changes
 *   - sequential:  100 applies of one change, one after another
 *   - concurrent:  100 applies of one change, all at once (100 drivers, one connection each)
 * Every apply returns only once ovs-vswitchd has applied it (cur_cfg). The ports are internal ports
 * (added with one ovs-vsctl call: an OVS Port needs an Interface, and type=internal is the quickest
 * kind to create). Prints figures; asserts only that OVS shows every port in the VLAN afterwards.
 *
 * With --ssh-cli, the same ports again through the ssh-cli driver (ovs-vsctl dialect over a real
 * sshd, test/harness/sshd.ts): one batched apply of 100, then 20 sequential applies of one.
 *
 *   npx tsx bench/switch-attach.ts [--ssh-cli]   (as root, after scripts/bootstrap.sh)
 */
import { startOvs, OvsInstance } from "../test/harness/ovs";
import { OvsdbSwitchDriver } from "../provider/src/drivers/ovsdb/switch";
import { startSshd } from "../test/harness/sshd";
import { sshCliSwitchDriver } from "../provider/src/drivers/ssh-cli/switch";

const PORTS = 100;

interface Row {
  mode: string;
  applies: number;
  writes: number;
  requests: number;
  retries: number;
  ms: number;
}

async function verify(ovs: OvsInstance, names: string[], vlan: number): Promise<void> {
  const out = await ovs.vsctl(["--format=json", "--columns=name,tag", "list", "port"]);
  const tags = new Map((JSON.parse(out) as { data: [string, unknown][] }).data.map(([n, t]) => [n, t]));
  const wrong = names.filter((n) => tags.get(n) !== vlan);
  if (wrong.length) throw new Error(`${wrong.length} ports are not in VLAN ${vlan} (e.g. ${wrong[0]}: ${JSON.stringify(tags.get(wrong[0]))})`);
}

async function main(): Promise<void> {
  const ovs = await startOvs({ switches: 1 });
  const drivers: OvsdbSwitchDriver[] = [];
  try {
    const names = Array.from({ length: PORTS }, (_, i) => `p${i}`);
    const args: string[] = [];
    for (const n of names) args.push("--", "add-port", "br0", n, "--", "set", "interface", n, "type=internal");
    let t = Date.now();
    await ovs.vsctl(args.slice(1));
    console.log(`setup: ${PORTS} internal ports on br0 in ${Date.now() - t} ms (ovs-vsctl, not counted)`);

    let requests = 0;
    const driver = () => {
      const d = new OvsdbSwitchDriver({ url: ovs.ovsdbUrl, bridge: "br0", owner: "bench", onRequest: () => requests++ });
      drivers.push(d);
      return d;
    };
    const rows: Row[] = [];
    const measure = async (mode: string, vlan: number, run: () => Promise<{ transactions: number; retries: number }[]>) => {
      requests = 0;
      t = Date.now();
      const results = await run();
      const ms = Date.now() - t;
      await verify(ovs, names, vlan);
      rows.push({
        mode,
        applies: results.length,
        writes: results.reduce((s, r) => s + r.transactions, 0),
        retries: results.reduce((s, r) => s + r.retries, 0),
        requests,
        ms,
      });
    };

    const d = driver();
    await d.apply([{ kind: "access", port: "p0", vlan: 99 }]); // warm-up: connection, first reconfiguration
    await measure("batched", 101, async () => [await d.apply(names.map((port) => ({ kind: "access" as const, port, vlan: 101 })))]);
    await measure("sequential", 102, async () => {
      const out = [];
      for (const port of names) out.push(await d.apply([{ kind: "access", port, vlan: 102 }]));
      return out;
    });
    const many = names.map(() => driver());
    await Promise.all(many.map((x) => x.listVlans())); // connect them all before the clock starts
    await measure("concurrent", 103, () => Promise.all(names.map((port, i) => many[i].apply([{ kind: "access", port, vlan: 103 }]))));

    const header = ["mode", "applies", "write txns", "OVSDB requests", "retries", "total ms", "ms/port"];
    const table = [header, ...rows.map((r) => [r.mode, r.applies, r.writes, r.requests, r.retries, r.ms, (r.ms / PORTS).toFixed(2)].map(String))];
    const widths = header.map((_, i) => Math.max(...table.map((row) => row[i].length)));
    console.log(`\n${PORTS} ports into one access VLAN (ovsdb driver, waits for ovs-vswitchd each apply)`);
    for (const [i, row] of table.entries()) {
      console.log(row.map((c, j) => (j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j]))).join("  "));
      if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
    }
    if (process.argv.includes("--ssh-cli")) await sshCli(ovs, names);
  } finally {
    await Promise.all(drivers.map((d) => d.close()));
    await ovs.stop();
  }
}

/** The ssh-cli driver (ovs-vsctl over SSH) on the same ports: batched 100, sequential 20. */
async function sshCli(ovs: OvsInstance, names: string[]): Promise<void> {
  const sshd = await startSshd();
  const conn = { address: `ssh://root@127.0.0.1:${sshd.port}`, dialect: "ovs-vsctl", bridge: "br0", owner: "bench", privateKey: sshd.privateKey, hostKey: sshd.hostKeyFingerprint };
  const d = sshCliSwitchDriver(conn, { ovsdbRemote: ovs.ovsdbUrl });
  try {
    await d.apply([{ kind: "access", port: "p0", vlan: 98 }]); // warm-up: SSH connection
    const s0 = sshd.sessions();
    let t = Date.now();
    const r = await d.apply(names.map((port) => ({ kind: "access" as const, port, vlan: 201 })));
    const batched = Date.now() - t;
    await verify(ovs, names, 201);
    const s1 = sshd.sessions();
    const seq = names.slice(0, 20);
    t = Date.now();
    for (const port of seq) await d.apply([{ kind: "access", port, vlan: 202 }]);
    const sequential = Date.now() - t;
    await verify(ovs, seq, 202);
    console.log(`\nssh-cli driver (ovs-vsctl over OpenSSH on loopback, waits for ovs-vswitchd each apply)`);
    console.log(`batched:    1 apply of ${names.length}: ${batched} ms (${(batched / names.length).toFixed(2)} ms/port), ${r.transactions} write, ${s1 - s0} SSH sessions`);
    console.log(`sequential: ${seq.length} applies of 1: ${sequential} ms (${(sequential / seq.length).toFixed(1)} ms/port), ${sshd.sessions() - s1} SSH sessions`);
  } finally {
    await d.close();
    await sshd.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
