#!/usr/bin/python3
"""The demo: a throwaway systemd machine, the .deb installed, an app deployed, switched under load,
rolled back under load, and a bad release rolled back on its own.

Usage: scripts/demo.py [--deb dist/bloom-agent_X_all.deb] [--keep]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples" / "sampleapp")]

import machine as harness  # noqa: E402
from make_release import make_release  # noqa: E402

APP = """\
listen = ["127.0.0.1:8080"]
exec = "bin/sampleapp"
probation_sec = 5
ready_timeout_sec = 10
"""
LOAD_SECONDS = 12


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(result) -> None:
    for stream in (result.stdout, result.stderr):
        if stream.strip():
            print("    " + stream.strip().replace("\n", "\n    "), flush=True)


def under_load(host, command: str) -> tuple[object, str]:
    """Run ``command`` while wrk saturates the app; return its result and wrk's summary."""
    host.run(f"rm -f /tmp/wrk.out; (wrk -t2 -c50 -d{LOAD_SECONDS}s http://127.0.0.1:8080/ > /tmp/wrk.out 2>&1 &)")
    time.sleep(2)
    result = host.run(command)
    deadline = time.monotonic() + LOAD_SECONDS + 10
    while time.monotonic() < deadline and "Requests/sec" not in host.run("cat /tmp/wrk.out").stdout:
        time.sleep(0.5)
    return result, host.run("cat /tmp/wrk.out").stdout


def failures(wrk: str) -> str:
    total = re.search(r"(\d+) requests in", wrk)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", wrk)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
    failed = (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx[1]) if non2xx else 0)
    return f"{total[1] if total else '?'} requests under load, {failed} failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, default=max(REPO.glob("dist/bloom-agent_*_all.deb"), default=None,
                                                        key=lambda p: p.stat().st_mtime))
    parser.add_argument("--keep", action="store_true", help="leave the machine running and print how to reach it")
    args = parser.parse_args(argv)
    if args.deb is None or not args.deb.exists():
        print("no package found: build it with 'make deb'", file=sys.stderr)
        return 1
    problems = harness.missing_prerequisites()
    if problems:
        print("cannot boot the demo machine: " + "; ".join(problems), file=sys.stderr)
        return 1
    harness.cleanup_leftovers(log=print)
    say("booting a throwaway Debian machine with systemd as PID 1 (systemd-nspawn)")
    m = harness.NspawnMachine(progress=print).boot()
    try:
        host = m.host
        say(f"installing {args.deb.name} with apt")
        m.put(args.deb, f"/root/{args.deb.name}")
        show(host.run(f"apt-get install -y /root/{args.deb.name} 2>&1 | tail -2"))
        show(host.run("bloomctl status"))

        say("declaring the app 'web' in /etc/bloom/apps/web.toml and building three releases of the sample app")
        host.run(f"mkdir -p /etc/bloom/apps /root/releases && cat > /etc/bloom/apps/web.toml <<'EOF'\n{APP}EOF")
        show(host.run("cat /etc/bloom/apps/web.toml && bloomctl reload"))
        with tempfile.TemporaryDirectory() as tmp:
            for version, faults, note in (("1.0.0", None, ""), ("2.0.0", None, ""),
                                          ("3.0.0", {"crash_after_sec": 2}, " (bad: crashes 2 s after start)")):
                built = make_release(version, Path(tmp), faults=faults)
                m.put(built, f"/root/releases/web-{version}.tar.gz")
                m.put(Path(f"{built}.sha256"), f"/root/releases/web-{version}.tar.gz.sha256")
                print(f"    web-{version}.tar.gz{note}")

        say("first deploy: web 1.0.0")
        show(host.run("bloomctl deploy web /root/releases/web-1.0.0.tar.gz && curl -s http://127.0.0.1:8080/"))

        say("deploy 2.0.0 while wrk saturates the app")
        result, wrk = under_load(host, "bloomctl deploy web /root/releases/web-2.0.0.tar.gz")
        show(result)
        print(f"    {failures(wrk)}; now serving: {host.run('curl -s http://127.0.0.1:8080/').stdout.strip()}")

        say("roll back to 1.0.0 under load, the same way")
        result, wrk = under_load(host, "bloomctl rollback web")
        show(result)
        print(f"    {failures(wrk)}; now serving: {host.run('curl -s http://127.0.0.1:8080/').stdout.strip()}")

        say("deploy the bad 3.0.0 under load: it crashes during probation and the agent rolls back on its own")
        result, wrk = under_load(host, "bloomctl deploy web /root/releases/web-3.0.0.tar.gz")
        show(result)
        print(f"    bloomctl exit code {result.rc} (3: the new release failed and the previous one was restored)")
        print(f"    {failures(wrk)}; now serving: {host.run('curl -s http://127.0.0.1:8080/').stdout.strip()}")
        print("    (failures here are the connections the bad release held when it crashed: a process that dies\n"
              "     takes its open connections with it; the switch back itself loses none)")

        say("releases and history")
        show(host.run("bloomctl releases web"))
        show(host.run("bloomctl history web"))
        if args.keep:
            say(f"machine kept: ssh -F {m.ssh_config} {m.hostname}")
            m = None
        return 0
    finally:
        if m is not None:
            say("tearing the machine down")
            m.destroy()


if __name__ == "__main__":
    sys.exit(main())
