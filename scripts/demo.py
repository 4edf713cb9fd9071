#!/usr/bin/python3
"""The demo: a throwaway systemd machine, the .deb installed, an app deployed, switched under load,
rolled back under load, a bad release rolled back on its own, and a release whose database migration
is undone when it fails.

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

# A second app with a SQLite database; its releases carry bin/migrate (examples/sampleapp/migrate.py).
SHOP = """\
listen = ["127.0.0.1:8090"]
exec = "bin/sampleapp"
user = "shop"
probation_sec = 5
ready_timeout_sec = 10
read_write_paths = ["/var/lib/shop"]

[database]
backend = "sqlite"
url = "/var/lib/shop/shop.db"
migrate = "bin/migrate up"
migrate_down = "bin/migrate down"
pending = "bin/migrate pending"
rollback_strategy = "down_first"
"""
ORDERS = {1: ("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)", "DROP TABLE orders")}
PRICES = {**ORDERS, 2: ("ALTER TABLE orders ADD COLUMN price INTEGER NOT NULL DEFAULT 0; "
                        "CREATE TABLE refunds (id INTEGER PRIMARY KEY, amount INTEGER)",
                        "DROP TABLE refunds; ALTER TABLE orders DROP COLUMN price")}
SCHEMA = ("runuser -u shop -- python3 -c \"import sqlite3; db = sqlite3.connect('/var/lib/shop/shop.db'); "
          "[print(name, [c[1] for c in db.execute(f'PRAGMA table_info({name})')]) for (name,) in "
          "db.execute(\\\"SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name\\\")]; "
          "print('orders:', db.execute('SELECT * FROM orders').fetchall())\"")


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

        database_scene(m, host)
        if args.keep:
            say(f"machine kept: ssh -F {m.ssh_config} {m.hostname}")
            m = None
        return 0
    finally:
        if m is not None:
            say("tearing the machine down")
            m.destroy()


def database_scene(m, host) -> None:
    say("an app with a database: 'shop' keeps its orders in SQLite, and its releases migrate it")
    host.run("useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin shop && "
             "install -d -o shop -g shop /var/lib/shop && "
             "runuser -u shop -- python3 -c \"import sqlite3; sqlite3.connect('/var/lib/shop/shop.db').close()\"")
    host.run(f"cat > /etc/bloom/apps/shop.toml <<'EOF'\n{SHOP}EOF")
    show(host.run("cat /etc/bloom/apps/shop.toml && bloomctl reload"))
    with tempfile.TemporaryDirectory() as tmp:
        for version, migrations, faults in (("1.0.0", ORDERS, None), ("2.0.0", PRICES, {"crash_after_sec": 2})):
            built = make_release(version, Path(tmp), faults=faults, migrations=migrations)
            m.put(built, f"/root/releases/shop-{version}.tar.gz")
    print("    shop-1.0.0.tar.gz: migration 001 creates 'orders'")
    print("    shop-2.0.0.tar.gz: migration 002 adds a column and a table (bad: crashes 2 s after start)")

    say("deploy shop 1.0.0: a backup, its migration, then the switch; then the app takes an order")
    show(host.run("bloomctl deploy shop /root/releases/shop-1.0.0.tar.gz"))
    host.run("runuser -u shop -- python3 -c \"import sqlite3; db = sqlite3.connect('/var/lib/shop/shop.db'); "
             "db.execute(\\\"INSERT INTO orders (item) VALUES ('tea')\\\"); db.commit()\"")
    show(host.run(SCHEMA))

    say("deploy the bad shop 2.0.0: it migrates, crashes in probation, and the agent runs its migrate_down")
    result = host.run("bloomctl deploy shop /root/releases/shop-2.0.0.tar.gz")
    show(result)
    print(f"    bloomctl exit code {result.rc}; the database afterwards (as before 2.0.0, the order kept):")
    show(host.run(SCHEMA))
    show(host.run("bloomctl migrations shop && bloomctl backup list shop"))


if __name__ == "__main__":
    sys.exit(main())
