#!/usr/bin/python3
"""Benchmark: how long a rolling deploy with the Ansible collection takes across a fleet, against the
sum of the per-host switch times.

    /usr/bin/python3 bench/fleet_bench.py [--hosts 3] [--reps 2] [--json OUT]

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first). It
boots N systemd machines (each in its own network namespace, as tests/integration/test_fleet.py does),
installs the newest dist/bloom-agent_*_all.deb on each, declares the app ``web`` (the sample app,
probation_sec = 3), builds and installs the collection in ansible/, and runs the
bloom.agent.rolling_deploy playbook for a new release with each batch plan: serial 1 (one host at a
time), the default [1, "50%"] (a canary, then half the fleet), and N (all at once). For each run it
prints the playbook's wall time, the number of batches, and from each agent's history the time its
switch took (started to finished, probation included). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration"), str(REPO / "examples" / "sampleapp")]

from common import check_host, newest_deb, say  # noqa: E402
from test_fleet import Fleet, _up  # noqa: E402

PLANS = {"serial 1": "1", 'default [1, "50%"]': None, "all at once": "{n}"}


def batches(plan: str | None, n: int) -> int:
    if plan is None:  # a canary, then 50 % of the hosts at a time: Ansible rounds a percentage down, to 1 at least
        rest, size, count = n - 1, max(1, n * 50 // 100), 1
        while rest > 0:
            rest, count = rest - size, count + 1
        return count
    size = int(plan.format(n=n))
    return -(-n // size)


def switch_seconds(m) -> float:
    history = json.loads(m.run("bloomctl history web --json --limit 5").stdout)
    row = next(r for r in history if r["action"] == "switch")
    return (datetime.fromisoformat(row["finished_at"]) - datetime.fromisoformat(row["started_at"])).total_seconds()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    check_host()
    deb = newest_deb()
    work = Path(f"/tmp/bloom-fleet-bench-{int(time.time())}")
    work.mkdir()
    names = [f"web{i + 1}" for i in range(args.hosts)]
    machines = {}
    results = []
    try:
        with concurrent.futures.ThreadPoolExecutor(args.hosts) as pool:
            for name, future in zip(names, [pool.submit(_up, deb, say) for _ in names]):
                machines[name] = future.result()
        fleet = Fleet(machines, work)
        assert fleet.play("1.0.0").returncode == 0
        version = 1
        for rep in range(args.reps):
            for label, plan in PLANS.items():
                version += 1
                extra = ["-e", f"bloom_serial={plan.format(n=args.hosts)}"] if plan else []
                began = time.monotonic()
                out = fleet.play(f"{version}.0.0", *extra)
                wall = time.monotonic() - began
                assert out.returncode == 0, out.stdout[-3000:]
                per_host = [switch_seconds(m) for m in machines.values()]
                results.append({"plan": label, "batches": batches(plan, args.hosts), "wall_sec": round(wall, 2),
                                "switch_sec": [round(s, 2) for s in per_host], "sum_switch_sec": round(sum(per_host), 2)})
                say(f"{label}: {wall:.1f} s")
    finally:
        for m in machines.values():
            m.destroy()
    print(f"{args.hosts} hosts, {args.reps} runs each")
    print(f"{'plan':<20} {'batches':>7} {'wall s':>8} {'per host switch s':>18} {'sum of switches s':>18}")
    for label in PLANS:
        rows = [r for r in results if r["plan"] == label]
        print(f"{label:<20} {rows[0]['batches']:>7} {statistics.median(r['wall_sec'] for r in rows):>8.1f} "
              f"{statistics.median(s for r in rows for s in r['switch_sec']):>18.1f} "
              f"{statistics.median(r['sum_switch_sec'] for r in rows):>18.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
