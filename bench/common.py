"""What the benchmarks in bench/ share: the throw-away machine, the package, releases of the
sample app, timing commands inside the machine, the journal, and reading reqlog.lua's
per-request logs.

Runs on the host (Debian's /usr/bin/python3, as root). Nothing here runs in the machine:
drive.py and cost_drive.py do.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "examples" / "sampleapp"))

import machine as harness  # noqa: E402
from make_release import make_release  # noqa: E402

REMOTE = "/root/bench"          # where the in-machine scripts go
STATE_DB = "/var/lib/bloom/state.db"


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- machine


def newest_deb() -> Path:
    debs = sorted(REPO.glob("dist/bloom-agent_*_all.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise SystemExit(f"no bloom-agent_*_all.deb in {REPO / 'dist'}; build it with: make deb")
    return debs[-1]


def check_host() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (it boots a systemd-nspawn machine)")
    problems = harness.missing_prerequisites()
    if problems:
        raise SystemExit("; ".join(problems))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def machine():
    """A booted throw-away machine, destroyed at the end even on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _interrupt)
    harness.cleanup_leftovers(log=say)
    m = harness.NspawnMachine(progress=say)
    say("booting the machine")
    m.boot()
    try:
        yield m
    finally:
        say("destroying the machine")
        m.destroy()


def run(m, cmd, timeout=600, input=None) -> str:
    proc = m.run(cmd, timeout=timeout, input=input)
    if proc.returncode != 0:
        raise harness.MachineError(f"{cmd!r} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def write(m, path: str, text: str) -> None:
    run(m, ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "write", path], input=text)


def app_toml(port: int, **keys) -> str:
    """An app file for the sample app on 127.0.0.1:port, with more keys (numbers) as given."""
    lines = [f'listen = ["127.0.0.1:{port}"]', 'exec = "bin/sampleapp"']
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def install_agent(m, deb: Path, scripts=("drive.py", "reqlog.lua")) -> None:
    say(f"installing {deb.name}")
    m.put(deb, "/root/")
    run(m, ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", f"/root/{deb.name}"])
    run(m, ["mkdir", "-p", "/etc/bloom/apps", "/root/releases", REMOTE])
    for name in scripts:
        m.put(BENCH / name, f"{REMOTE}/{name}")


def finish(work: Path, res: dict, json_path: Path | None, keep_logs: bool, started: float) -> None:
    """The end of a benchmark that keeps logs: the figures to --json, the logs kept (--keep-logs, for
    --analyse) or removed."""
    if json_path:
        json_path.write_text(json.dumps(res, indent=1) + "\n")
        say(f"figures written to {json_path}")
    if keep_logs:
        say(f"logs kept in {work}; analyse them again with --analyse {work}")
    else:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.time() - started:.0f} s")


def run_itself_inside(m, script: str, args: list[str] = (), timeout: float = 600) -> int:
    """For the scripts that measure inside the machine: copy ``script`` there, run it with
    ``--inside``, print what it printed; its exit code."""
    remote = f"/root/{Path(script).name}"
    m.put(script, remote)
    proc = m.run(["/usr/bin/python3", remote, "--inside", *args], timeout=timeout)
    print(proc.stdout, end="")
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
    return proc.returncode


def put_release(m, work: Path, version: str, faults: dict | None = None, app: str = "web") -> str:
    """Build a release of the sample app on the host and copy it (and its .sha256) in."""
    built = make_release(version, work / "releases", faults=faults)
    remote = f"/root/releases/{app}-{version}.tar.gz"
    m.put(built, remote)
    m.put(Path(f"{built}.sha256"), f"{remote}.sha256")
    return remote


def machine_facts(m) -> dict:
    facts = run(m, "nproc; uname -r; systemctl --version | head -1; cat /etc/debian_version; "
                   "wrk -v 2>&1 | head -1; /usr/bin/python3 --version; "
                   "sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1; "
                   "dpkg-query -W -f '${Version}' bloom-agent").splitlines()
    keys = ("cpus", "kernel", "systemd", "debian", "wrk", "python", "cpu_model", "bloom_agent")
    return dict(zip(keys, facts))


def time_command(m, cmd, n: int) -> dict:
    """Wall times of cmd run n times inside the machine, measured there (median, min, max)."""
    code = ("import subprocess, time, json, sys\n"
            "ts = []\n"
            f"for _ in range({n}):\n"
            "    t = time.time(); subprocess.run(sys.argv[1:], capture_output=True); ts.append(time.time() - t)\n"
            "print(json.dumps(ts))\n")
    samples = json.loads(run(m, ["/usr/bin/python3", "-c", code, *cmd]))
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": n}


def neighbours() -> dict:
    """Other systemd machines and VMs on this host (they share its CPUs with the benchmark)."""
    found = {"nspawn": -1, "qemu": 0}  # -1: ours
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "systemd-nspawn":
            found["nspawn"] += 1
        elif comm.startswith("qemu-system"):
            found["qemu"] += 1
    return found


def fetch_dir(m, remote_dir: str, local: Path, name: str) -> None:
    """Copy a directory of the machine to local (through a tarball)."""
    run(m, f"tar -czf /root/{name}.tar.gz -C {remote_dir} .")
    local.mkdir(parents=True, exist_ok=True)
    archive = local.parent / f"{name}.tar.gz"
    m.get(f"/root/{name}.tar.gz", archive)
    with tarfile.open(archive) as tar:
        # our own machine's files; the "data" filter where this Python has it (3.11.4+)
        tar.extractall(local, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    archive.unlink()


JOURNAL_FIELDS = ("__REALTIME_TIMESTAMP", "MESSAGE", "MESSAGE_ID", "UNIT", "_SYSTEMD_UNIT", "PRIORITY",
                  "JOB_TYPE", "JOB_RESULT", "SYSLOG_IDENTIFIER")


def journal(m, since: float, until: float | None = None, matches: tuple[str, ...] = ()) -> list[dict]:
    """Journal entries of the machine since a time.time() value, oldest first, each with a float 't'."""
    cmd = ["journalctl", "--no-pager", "-o", "json", f"--output-fields={','.join(JOURNAL_FIELDS)}",
           f"--since=@{since:.6f}"]
    if until is not None:
        cmd.append(f"--until=@{until:.6f}")
    out = run(m, [*cmd, *matches], timeout=300)
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e.get("MESSAGE"), list):  # journalctl gives non-UTF-8 messages as byte lists
            e["MESSAGE"] = bytes(e["MESSAGE"]).decode(errors="replace")
        e["t"] = int(e["__REALTIME_TIMESTAMP"]) / 1e6
        entries.append(e)
    return entries


def iso_ts(value: str | None) -> float | None:
    """The agent's ISO timestamps (UTC, milliseconds) as time.time() values."""
    return datetime.fromisoformat(value).timestamp() if value else None


# ---------------------------------------------------------------------- per-request logs


def read_connections(log_dir: Path) -> list[list[tuple[int, int, int, int]]]:
    """Per wrk connection, its attempts in order: (start_us, status, latency_us, wait_us)."""
    conns, bad = [], 0
    for path in sorted(Path(log_dir).glob("req-*.tsv")):
        rows = []
        with open(path) as f:
            for line in f:
                try:
                    start, status, latency, wait = (int(x) for x in line.split("\t"))
                except ValueError:  # a line cut short (wrk killed before it flushed): left out, and said
                    bad += 1
                    continue
                rows.append((start, status, latency, wait))
        conns.append(rows)
    if bad:
        say(f"{log_dir}: {bad} malformed line(s) in the request logs left out")
    return conns


def logical_requests(conn):
    """Fold a connection's attempts into requests as a client that retries would see them:
    failed attempts (no response) are retried at once by wrk, so a request spans from the end
    of the previous one (reconnection included) to its first response. Yields
    (begin_us, end_us, status, failed_attempts); status -1 for attempts still failing at the end."""
    begin, fails, end = None, 0, None
    for start, status, latency, wait in conn:
        if begin is None:
            begin, fails = start - wait, 0
        end = start + latency
        if status == -1:
            fails += 1
            continue
        yield begin, end, status, fails
        begin = None
    if begin is not None:
        yield begin, end, -1, fails


class Windows:
    def __init__(self, spans: list[tuple[float, float]]) -> None:
        self.spans = sorted((int(a * 1e6), int(b * 1e6)) for a, b in spans)
        self.starts = [a for a, _ in self.spans]

    def find(self, begin: int, end: int) -> int | None:
        """Index (in time order) of the last window that overlaps [begin, end], or None."""
        i = bisect.bisect_right(self.starts, end) - 1  # last window starting before the end
        return i if i >= 0 and self.spans[i][1] >= begin else None

    def overlaps(self, begin: int, end: int) -> bool:
        return self.find(begin, end) is not None


def percentile(sorted_values: list, q: float):
    if not sorted_values:
        return None
    rank = math.ceil(q / 100 * len(sorted_values))  # nearest rank
    return sorted_values[max(0, min(len(sorted_values), rank) - 1)]


def stats(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "max": None, "min": None, "n": 0}
    return {"median": statistics.median(values), "max": max(values), "min": min(values), "n": len(values)}


def fmt(v, unit="", digits=1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def ms(v) -> str:
    return fmt(v * 1000 if v is not None else None, digits=1)


def git_describe() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return proc.stdout.strip() or None
