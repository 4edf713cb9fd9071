#!/usr/bin/python3
"""Does the agent's memory grow while it does nothing? RSS of an idle agent, every 10 s.

    sudo /usr/bin/python3 bench/idle_memory.py [--deb FILE] [--samples 20] [--no-app]

Boots a machine, installs the package, deploys the sample app as ``web``, restarts the agent and
then only reads ``/proc/PID/status`` (through nsenter, never through the agent) every 10 s: RSS,
anonymous memory, threads. Ends with the agent's last log lines. ``--no-app``: no app declared,
to tell what the agent does on its own from what watching an app costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import check_host, install_agent, machine, newest_deb, put_release, run, write
from cost_bench import APP_FILE


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--no-app", action="store_true")
    args = ap.parse_args(argv)
    check_host()
    deb = (args.deb or newest_deb()).resolve()
    work = Path(tempfile.mkdtemp(prefix="bloom-bench-"))
    try:
        with machine() as m:
            install_agent(m, deb, scripts=())
            if not args.no_app:
                write(m, "/etc/bloom/apps/web.toml", APP_FILE)
                run(m, ["bloomctl", "reload"])
                run(m, ["bloomctl", "install", "web", put_release(m, work, "1.0.0")])
                run(m, ["bloomctl", "switch", "web", "1.0.0"])
            run(m, ["systemctl", "restart", "bloom-agent"])
            pid = run(m, ["systemctl", "show", "-p", "MainPID", "--value", "bloom-agent"]).strip()
            began = time.time()
            for _ in range(args.samples):
                status = run(m, ["grep", "-E", "VmRSS|RssAnon|Threads", f"/proc/{pid}/status"]).split()
                print(f"{time.time() - began:6.1f} s  {' '.join(status)}", flush=True)
                time.sleep(10)
            print(run(m, ["journalctl", "-u", "bloom-agent", "-o", "cat", "--no-pager", "-n", "15"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
