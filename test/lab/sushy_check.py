#!/usr/bin/python3
"""Drive a Redfish BMC with OpenStack's sushy library (Debian python3-sushy) and print JSON.

A third-party cross-check of the embedded lab's BMC emulator (provider/src/lab): sushy is the
Redfish client of OpenStack Ironic. The script connects with sushy's default authentication
(a session, or Basic when the BMC offers no sessions), reads the systems, powers one on and off,
sets its boot device, inserts and ejects virtual media, reads the managers, chassis and the
session service, and reports every step as {"ok": true, "result": ...} or
{"ok": false, "error": ...}, so that one part sushy cannot do does not hide the others.

Usage (Debian's Python packages import only under /usr/bin/python3):

    /usr/bin/python3 test/lab/sushy_check.py --url http://127.0.0.1:PORT \
        --username admin --password secret [--system ID] [--timeout 30] [--ca-file FILE]

Exit status 0 when the JSON was printed (whatever the steps' results), 2 on bad arguments,
3 when sushy is not installed.
"""
import argparse
import json
import logging
import sys
import time
import traceback

try:
    import sushy
    from sushy import exceptions as sushy_exc
    from sushy.resources.manager import virtual_media as sushy_vm
except ImportError as e:  # pragma: no cover - environment problem
    print(json.dumps({"error": "python3-sushy is not installed (apt-get install python3-sushy): %s" % e}))
    sys.exit(3)


def value(v):
    """JSON-friendly form of sushy values (enums, sets, namedtuples)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "value") and not isinstance(v, (list, tuple, dict, set)):
        return v.value
    if isinstance(v, dict):
        return {str(value(k)): value(x) for k, x in v.items()}
    if isinstance(v, (set, frozenset)):
        return sorted(value(x) for x in v)
    if hasattr(v, "_asdict"):
        return {k: value(x) for k, x in v._asdict().items()}
    if isinstance(v, (list, tuple)):
        return [value(x) for x in v]
    return str(v)


class Report:
    def __init__(self):
        self.steps = {}

    def step(self, name, fn):
        try:
            result = fn()
            self.steps[name] = {"ok": True, "result": value(result)}
            return result
        except Exception as e:  # record and go on: one step must not hide the others
            err = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            if isinstance(e, sushy_exc.HTTPError):
                err["status"] = e.status_code
                err["code"] = e.code
            if not isinstance(e, sushy_exc.SushyError):
                err["trace"] = traceback.format_exc().splitlines()[-3:]
            self.steps[name] = err
            return None


def wait_for(fn, want, timeout):
    """Polls fn() (a refresh + read) until it returns want; returns the values seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        v = value(fn())
        if not seen or seen[-1] != v:
            seen.append(v)
        if v == want:
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError("waited %ss for %r, saw %r" % (timeout, want, seen))
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--system", help="system id (default: the first)")
    ap.add_argument("--media", help="@odata.id of the system's CD (default: found below the managers or the system)")
    ap.add_argument("--image", default="http://192.0.2.10/images/lab.iso")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--ca-file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    r = Report()
    out = {"sushy": sushy.__version__ if hasattr(sushy, "__version__") else None, "url": args.url}
    root = r.step("connect", lambda: sushy.Sushy(args.url, username=args.username, password=args.password,
                                                   verify=args.ca_file or True))
    if root is not None:
        r.steps["connect"]["result"] = "connected"
    if root is None:
        out["steps"] = r.steps
        print(json.dumps(out))
        return 0
    auth = root._auth
    out["auth"] = "session" if auth.get_session_key() else "basic"
    out["sessionUri"] = auth.get_session_resource_id()

    r.step("root", lambda: {"redfishVersion": root.redfish_version, "uuid": root.uuid,
                            "product": root.product, "name": root.name})

    systems = r.step("systems", lambda: root.get_system_collection().get_members()) or []
    r.steps.setdefault("systems", {})
    if r.steps["systems"]["ok"]:
        r.steps["systems"]["result"] = [s.identity for s in systems]
    system = None
    for s in systems:
        if args.system is None or s.identity == args.system:
            system = s
            break
    if system is None:
        out["steps"] = r.steps
        print(json.dumps(out))
        return 0

    r.step("facts", lambda: {
        "id": system.identity, "uuid": system.uuid, "name": system.name,
        "manufacturer": system.manufacturer, "model": system.json.get("Model"),  # sushy 4.3 has no System.model
        "serialNumber": system.serial_number, "sku": system.sku,
        "powerState": system.power_state, "memoryGiB": system.memory_summary.size_gib,
        "boot": {"target": system.boot.target, "enabled": system.boot.enabled,
                 "mode": system.boot.mode, "allowed": system.boot.allowed_values},
        "allowedResets": system.get_allowed_reset_system_values(),
    })
    r.step("macs", lambda: sorted(k.lower() for k in system.ethernet_interfaces.summary))
    r.step("processors", lambda: system.processors.summary)

    # Power: on (wait for On), then off (wait for Off).
    def power(reset, want):
        system.reset_system(reset)

        def read():
            system.refresh()
            return system.power_state
        return wait_for(read, want, args.timeout)
    r.step("powerOn", lambda: power(sushy.RESET_ON, "On"))
    r.step("powerOff", lambda: power(sushy.RESET_FORCE_OFF, "Off"))

    # Boot device: PATCH with the ETag sushy read (If-Match), then read back.
    def boot():
        system.refresh()
        system.set_system_boot_options(target=sushy.BOOT_SOURCE_TARGET_PXE,
                                       enabled=sushy.BOOT_SOURCE_ENABLED_CONTINUOUS,
                                       mode=sushy.BOOT_SOURCE_MODE_UEFI)
        system.refresh()
        return {"target": system.boot.target, "enabled": system.boot.enabled, "mode": system.boot.mode}
    r.step("setBoot", boot)

    def bad_boot():
        # sushy checks allowed values itself; send the PATCH directly to see how it reads our error body.
        try:
            root._conn.patch(system.path, data={"Boot": {"BootSourceOverrideTarget": "NoSuchDevice"}})
        except sushy_exc.HTTPError as e:
            return {"status": e.status_code, "code": e.code, "detail": e.detail}
        raise AssertionError("the BMC accepted an unknown boot target")
    r.step("badBootRejected", bad_boot)

    def client_side_check():
        try:
            system.set_system_boot_options(target="NoSuchDevice")
        except sushy_exc.InvalidParameterValueError as e:
            return str(e)[:120]
        raise AssertionError("sushy sent an unknown boot target")
    r.step("sushyValidatesBootTarget", client_side_check)

    # Virtual media: sushy 4.3 discovers it only below Managers; below a system it is built by path.
    managers = r.step("managers", lambda: root.get_manager_collection().get_members()) or []
    if r.steps["managers"]["ok"]:
        r.steps["managers"]["result"] = [{
            "id": m.identity, "type": value(m.manager_type), "model": m.model,
            "serialConsole": value(m.serial_console.connect_types_supported) if m.serial_console else None,
            "graphicalConsole": value(m.graphical_console.connect_types_supported) if m.graphical_console else None,
            "commandShell": value(m.command_shell.connect_types_supported) if m.command_shell else None,
        } for m in managers]

    media = []
    for m in managers:
        try:
            media.extend(m.virtual_media.get_members())
        except sushy_exc.MissingAttributeError:
            pass
    out["mediaFoundVia"] = "managers" if media else None
    if not media:
        link = (system.json.get("VirtualMedia") or {}).get("@odata.id")
        if link:
            out["mediaFoundVia"] = "system link (built by path: sushy has no ComputerSystem.virtual_media)"
            coll = root._conn.get(link).json()
            media = [sushy_vm.VirtualMedia(root._conn, mem["@odata.id"], redfish_version=root.redfish_version,
                                           registries=root.lazy_registries, root=root)
                     for mem in coll.get("Members", [])]
    # The CD of this system: the one named by --media, else one below the system, else the first CD.
    cd = None
    for vm in media:
        if args.media:
            if vm.path == args.media:
                cd = vm
        elif "CD" in value(vm.media_types) and (cd is None or vm.path.startswith(system.path)):
            cd = vm
    out["media"] = cd.path if cd else None

    if cd is not None:
        def insert():
            cd.insert_media(args.image, inserted=True, write_protected=True)

            def read():
                cd.refresh()
                return [cd.inserted, cd.image]
            return wait_for(read, [True, args.image], args.timeout)
        r.step("insertMedia", insert)

        def eject():
            cd.eject_media()

            def read():
                cd.refresh()
                return [cd.inserted, cd.image]
            return wait_for(read, [False, None], args.timeout)
        r.step("ejectMedia", eject)

        # A long action through sushy's own task-monitor support (blocking POST).
        def blocking_insert():
            target = cd.json["Actions"]["#VirtualMedia.InsertMedia"]["target"]
            resp = root._conn.post(target, data={"Image": args.image}, blocking=True, timeout=args.timeout)
            cd.refresh()
            return {"status": resp.status_code, "inserted": cd.inserted}
        r.step("blockingInsertMedia", blocking_insert)

        def cleanup():
            cd.refresh()
            if cd.inserted:
                cd.eject_media()

                def read():
                    cd.refresh()
                    return cd.inserted
                wait_for(read, False, args.timeout)
            return True
        r.step("cleanupMedia", cleanup)

    r.step("chassis", lambda: [{"id": c.identity, "type": value(c.chassis_type), "serialNumber": c.serial_number}
                               for c in root.get_chassis_collection().get_members()])

    def sessions():
        svc = root.get_session_service()
        return {"timeout": svc.session_timeout, "sessions": [s.identity for s in svc.sessions.get_members()]}
    r.step("sessionService", sessions)

    def logout():
        if not auth.get_session_key():
            return "basic: nothing to log out"
        auth.close()
        return "session deleted"
    r.step("logout", logout)
    root._auth = None  # already closed: keep sushy's __del__ from trying again

    out["steps"] = r.steps
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
