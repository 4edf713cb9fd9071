#!/usr/bin/python3
"""Benchmark: how long an app cannot write while a rollback puts its PostgreSQL database back.

    /usr/bin/python3 bench/db_restore_bench.py [--sizes 1,10,100] [--json OUT]

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first). It
boots a throw-away systemd machine, installs the newest dist/bloom-agent_*_all.deb, starts the
machine's PostgreSQL 15 and declares the app ``shop`` (the sample app as the user ``shop``, which owns
the database ``shop``). For each size (MB of table data) and each strategy (``backup_only``,
``down_first``), it fills the database, serves 1.0.0, and deploys a release whose migration adds a
column and which crashes one second after it is ready: the agent backs up, migrates, and after the
crash in probation undoes the migration and brings 1.0.0 back.

From the machine's journal it times the window in which no release of the app runs, from the crashed
release stopped to 1.0.0 started again (requests wait in the socket meanwhile; no release writes), and
from the agent's records the backup's size and time and the undo step. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import check_host, install_agent, journal, machine, machine_facts, newest_deb, run, say, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sampleapp"))
from make_release import make_release  # noqa: E402

PSQL = "psql -X -q -v ON_ERROR_STOP=1 -d \"$BLOOM_DATABASE_URL\""
APP_FILE = f"""\
listen = ["127.0.0.1:8083"]
exec = "bin/sampleapp"
user = "shop"
probation_sec = 5
ready_timeout_sec = 10
stop_timeout_sec = 10
keep_releases = 100

[database]
backend = "postgresql"
url = "postgresql:///shop"
migrate = '{PSQL} -f migrations/up.sql'
migrate_down = '{PSQL} -f migrations/down.sql'
rollback_strategy = "{{strategy}}"
keep_backups = 2
min_free_bytes = 0
"""
UP = "ALTER TABLE items ADD COLUMN price integer NOT NULL DEFAULT 0;"
DOWN = "ALTER TABLE items DROP COLUMN price;"


def put(m, work: Path, version: str, faults: dict | None = None) -> str:
    built = make_release(version, work, faults=faults,
                         files={"migrations/up.sql": UP.encode(), "migrations/down.sql": DOWN.encode()})
    remote = f"/root/releases/shop-{version}.tar.gz"
    m.put(built, remote)
    return remote


def fill(m, megabytes: int) -> None:
    """Recreate the database with about ``megabytes`` of rows (random text, so the dump cannot shrink it)."""
    run(m, "cd / && runuser -u postgres -- psql -X -q -c 'DROP DATABASE IF EXISTS shop' "
           "&& runuser -u postgres -- createdb -O shop shop")
    rows = megabytes * 1024 * 1024 // 1000
    run(m, "cd / && runuser -u shop -- psql -X -q -d shop -c \"CREATE TABLE items (id serial PRIMARY KEY, "
           "body text NOT NULL); INSERT INTO items (body) SELECT (SELECT string_agg(md5(random()::text || g || h), '') "
           f"FROM generate_series(1, 30) h) FROM generate_series(1, {rows}) g\" -c 'VACUUM ANALYZE items'", timeout=1800)


def one(m, work: Path, strategy: str, megabytes: int, n: int) -> dict:
    run(m, "bloomctl app remove shop --yes >/dev/null 2>&1 || true")  # each run from no release
    write(m, "/etc/bloom/apps/shop.toml", APP_FILE.format(strategy=strategy))
    run(m, "bloomctl reload")
    fill(m, megabytes)
    size = int(run(m, "cd / && runuser -u shop -- psql -X -At -d shop -c \"SELECT pg_database_size('shop')\"").strip())
    first = make_release("1.0.0", work, files={"migrations/up.sql": b"SELECT 1;", "migrations/down.sql": b"SELECT 1;"})
    m.put(first, "/root/releases/shop-1.0.0.tar.gz")
    run(m, "bloomctl deploy shop /root/releases/shop-1.0.0.tar.gz -q")
    bad = f"2.{n}.0"
    remote = put(m, work, bad, {"crash_after_sec": 1})
    began = time.time()
    proc = m.run(f"bloomctl deploy shop {remote} --json -q", timeout=1800)
    out = json.loads(proc.stdout)
    assert out["outcome"] == "rolled-back", out
    entries = journal(m, began - 1)
    stopped = next(e["t"] for e in entries if e.get("MESSAGE", "").startswith(f"Stopped shop@{bad}.service"))
    started = [e["t"] for e in entries if e.get("MESSAGE", "").startswith("Started shop@1.0.0.service")]
    started_again = next(t for t in started if t > stopped)
    backups = json.loads(run(m, "bloomctl backup list shop --json"))
    backup = next(b for b in backups if b["deployment"] == out["deployment"])
    return {"strategy": strategy, "megabytes": megabytes, "database_bytes": size, "backup_bytes": backup["size"],
            "backup_sec": backup["seconds"], "undo_step_sec": out["timings"].get("rolling-back-database"),
            "no_release_sec": round(started_again - stopped, 3), "reason": out["reason"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="MB of table data, comma-separated")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    check_host()
    deb = newest_deb()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    work = Path(f"/tmp/bloom-db-bench-{int(time.time())}")
    work.mkdir()
    with machine() as m:
        install_agent(m, deb, scripts=())
        run(m, "systemctl start postgresql && useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin shop "
               "&& cd / && runuser -u postgres -- psql -X -q -c 'CREATE ROLE shop LOGIN'")
        facts = machine_facts(m)
        n = 0
        for megabytes in sizes:
            for strategy in ("backup_only", "down_first"):
                n += 1
                say(f"{strategy}, {megabytes} MB")
                results.append(one(m, work, strategy, megabytes, n))
    print(f"{'strategy':<12} {'data':>6} {'database':>10} {'backup':>10} {'backup s':>9} {'undo s':>7} "
          f"{'no release s':>12}")
    for r in results:
        print(f"{r['strategy']:<12} {r['megabytes']:>4}MB {r['database_bytes'] / 1e6:>8.1f}MB "
              f"{r['backup_bytes'] / 1e6:>8.1f}MB {r['backup_sec']:>9.2f} {r['undo_step_sec']:>7.2f} "
              f"{r['no_release_sec']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
