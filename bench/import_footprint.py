#!/usr/bin/python3
"""What each import costs the agent: a table of resident memory and import time, module by module.

    /usr/bin/python3 bench/import_footprint.py [--src agent] [--json OUT]

Every row is a fresh python3. "share" is what importing the row's modules adds on top of BASE, the
standard library the daemon needs on every path anyway (the loop, logging, the state database, the
config parser), so the rows can be added up; "alone" is the same import in a bare interpreter. The
last column says whether importing the daemon (``bloom_agent.daemon.agent``, what ``bloom-agent``
runs) loads the row's modules before it does anything: "no" is an import left to the path that needs
it. The figures are the interpreter's own RSS (``/proc/self/status``), so they depend on the
interpreter and the libraries installed; run it with Debian's ``/usr/bin/python3``.
Standard library only; runs anywhere (no machine, no root).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BASE = "asyncio, logging, json, sqlite3, argparse, socket, dataclasses, tomllib, signal"
# (what a path needs, the modules): one row each, heaviest paths of the agent first.
ROWS = (
    ("D-Bus, the systemd adapter (dbus-fast)", "dbus_fast, dbus_fast.aio"),
    ("D-Bus, the adapter before (pystemd), for comparison", "pystemd.systemd1, pystemd.dbuslib"),
    ("unit templates (jinja2)", "jinja2"),
    ("journal reader (python3-systemd)", "systemd.journal"),
    ("sd_listen_fds (python3-systemd)", "systemd.daemon"),
    ("cgroup memory and tasks (psutil)", "psutil"),
    ("unpacking .tar.gz/.tar.xz (tarfile, lzma, bz2)", "tarfile, lzma, bz2, zlib"),
    ("unpacking .tar.zst (zstandard)", "zstandard"),
    ("prometheus textfile (prometheus_client)", "prometheus_client"),
    ("python health check (importlib.metadata)", "importlib.metadata"),
    ("HTTP health checks (urllib.parse)", "urllib.parse"),
    ("sd_notify (sdnotify)", "sdnotify"),
    ("bloomctl (click)", "click"),
    ("the daemon module (bloom_agent.daemon.agent)", "bloom_agent.daemon.agent"),
)
PROBE = """\
import sys, time
def mem():
    st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
    return int(st['VmRSS'].split()[0]), int(st['RssAnon'].split()[0])
{base}
before, modules = mem(), set(sys.modules)
t = time.perf_counter()
{imports}
took = time.perf_counter() - t
after = mem()
new = set(sys.modules) - modules
print({{"rss_kb": after[0] - before[0], "anon_kb": after[1] - before[1], "total_rss_kb": after[0],
       "modules": len(new), "import_ms": took * 1000}})
"""
LOADED = """\
import sys, bloom_agent.daemon.agent
print([m for m in {names!r} if m in sys.modules])
"""


def probe(imports: str, base: str, src: Path) -> dict:
    code = PROBE.format(base=f"import {base}" if base else "", imports=f"import {imports}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return eval(proc.stdout)  # our own probe's dict literal


def loaded_by_daemon(src: Path) -> set[str]:
    names = sorted({m.strip() for _, mods in ROWS for m in mods.split(",")})
    proc = subprocess.run([sys.executable, "-c", LOADED.format(names=names)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(src)}, check=True)
    return set(eval(proc.stdout))


def measure(src: Path) -> dict:
    loaded = loaded_by_daemon(src)
    bare = probe("sys", "", src)
    base = probe(BASE, "", src)
    rows = []
    for what, modules in ROWS:
        names = [m.strip() for m in modules.split(",")]
        rows.append({"path": what, "modules": modules, "share": probe(modules, BASE, src),
                     "alone": probe(modules, "", src),
                     "at_start": "yes" if set(names) <= loaded else ("partly" if set(names) & loaded else "no")})
    return {"python": sys.version.split()[0], "bare_rss_kb": bare.get("total_rss_kb"), "base": BASE,
            "base_share": base, "rows": rows}


def mb(kb) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def table(r: dict) -> str:
    lines = [f"python {r['python']}; a bare interpreter: {mb(r['bare_rss_kb'])} MB RSS; "
             f"BASE ({r['base']}): +{mb(r['base_share']['rss_kb'])} MB, {r['base_share']['modules']} modules",
             "",
             "| path | share: RSS MB | anon MB | modules | import ms | alone: RSS MB | loaded at start |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in r["rows"]:
        s, a = row["share"], row["alone"]
        if "error" in s:
            lines.append(f"| {row['path']} | not importable: {s['error']} | | | | | |")
            continue
        lines.append(f"| {row['path']} | {mb(s['rss_kb'])} | {mb(s['anon_kb'])} | {s['modules']} | "
                     f"{s['import_ms']:.0f} | {mb(a.get('rss_kb'))} | {row['at_start']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "agent",
                    help="where bloom_agent is (default: this checkout's agent/)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    result = measure(args.src.resolve())
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
