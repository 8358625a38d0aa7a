/**
 * A dialect of the ssh-cli switch driver: how one switch family is read and written through its
 * command line. Dialects are pure: they build command lines and parse command output; the driver
 * (switch.ts) runs them over SSH, applies the kind's rules (kinds/switch.ts) and retries.
 */
import type { SwitchPortConfig } from "../kinds/switch";
import type { ExecResult } from "./transport";

/** What one read shows. */
export interface CliSnapshot<Raw = unknown> {
  /** The switch's ports, by name (configuration as the kind reads it). */
  ports: Map<string, SwitchPortConfig>;
  /** Port names that exist on the device but are not ports of this switch (e.g. another OVS bridge). */
  elsewhere: Set<string>;
  /** The VLAN registry (id -> name). */
  registry: Map<number, string>;
  /**
   * false when the device has committed configuration it does not forward with yet (ovs-vswitchd
   * behind ovsdb-server); undefined when the dialect cannot tell.
   */
  applied?: boolean;
  /** Dialect-private: what the write's preconditions are built from. */
  raw: Raw;
}

/** One port the write changes. */
export interface CliPortWrite {
  port: string;
  before: SwitchPortConfig;
  after: SwitchPortConfig;
}

export interface CliWriteInput<Raw = unknown> {
  snapshot: CliSnapshot<Raw>;
  /** Ports to change (configuration or owner differ). */
  writes: CliPortWrite[];
  /** Ports whose state as read must still hold when the write commits (written and expected ports). */
  asserted: string[];
  /** The registry after the batch. */
  registry: Map<number, string>;
}

export type WriteFailure =
  /** The switch refused because it changed since the read: nothing was written, read again and retry. */
  | "precondition"
  /** Not known whether the write committed (e.g. a timeout): read again to find out. */
  | "unknown";

export interface SshCliDialect<Raw = unknown> {
  readonly name: string;
  /**
   * true when the write command checks the state read, atomically with the change, on the switch
   * (a compare-and-swap); false when the driver can only re-read right before and after writing.
   */
  readonly atomic: boolean;
  /** One command line that reads the named ports (every port when undefined) and the registry. */
  readCommand(names: string[] | undefined): string;
  /** Parses the read; throws a BaremetalError (e.g. `not-found` naming `bridge`) when the switch is not usable. */
  parseRead(result: ExecResult, names: string[] | undefined): CliSnapshot<Raw>;
  /**
   * One command line making the whole batch (one transaction where the family has them), or
   * undefined when nothing on the switch has to change. Throws `conflict` for a configuration the
   * family cannot express.
   */
  writeCommand(input: CliWriteInput<Raw>): string | undefined;
  /** Classifies a write that did not exit 0; throws when it is a plain error. */
  writeFailed(result: ExecResult): WriteFailure;
  /**
   * What a read shows after writing `c`, where the family cannot express a configuration exactly
   * (e.g. a trunk of no VLAN reads back as an unconfigured port); identity when absent.
   */
  readBack?(c: SwitchPortConfig): SwitchPortConfig;
  /** A command that waits until the device forwards with what is committed (see `applied`). */
  waitAppliedCommand?(snapshot: CliSnapshot<Raw>, timeoutMs: number): string | undefined;
}

/** The tail of a command's output, for error messages. */
export function outputTail(r: ExecResult, max = 600): string {
  const text = (r.stderr.trim() || r.stdout.trim()).replace(/\s+\n/g, "\n");
  return text.length > max ? `...${text.slice(-max)}` : text;
}

/** How a command ended, for error messages. */
export function exitText(r: ExecResult): string {
  return r.signal ? `signal ${r.signal}` : `exit code ${r.code}`;
}
