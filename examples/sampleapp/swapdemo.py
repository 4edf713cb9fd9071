#!/usr/bin/python3
"""Swap sampleapp instances under wrk load, without systemd, and report what wrk saw.

Plays the part of APP.socket: binds one listening socket and hands it to every
instance as fd 3 (LISTEN_FDS=1, LISTEN_PID set by a tiny exec wrapper), with a
datagram NOTIFY_SOCKET per instance to wait for READY=1.  The scenario:

    start A and B on the socket, run wrk against it, then
    SIGTERM A, start C (wait for READY), SIGTERM B,
    then --swaps more "start NEW, wait READY, SIGTERM OLD" swaps.

Usage: swapdemo.py --release-dir DIR [--duration 10] [--connections 50] [--swaps 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Runs in the child: move the socket to fd 3, set LISTEN_PID to our pid, exec the app.
WRAPPER = ("import os, sys; fd = int(sys.argv[1]); fd == 3 or os.dup2(fd, 3); "
           "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


class Instance:
    def __init__(self, name: str, listener: socket.socket, release_dir: Path, workdir: Path,
                 app: Path, drain_timeout: float):
        self.name = name
        self.notify_path = workdir / f"notify-{name}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        env = dict(os.environ, LISTEN_FDS="1", NOTIFY_SOCKET=str(self.notify_path))
        self.log = open(workdir / f"{name}.log", "w")
        fd = listener.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(fd), sys.executable, str(app),
             "--release-dir", str(release_dir), "--drain-timeout", str(drain_timeout)],
            env=env, pass_fds=(fd,), stderr=self.log, cwd=release_dir)

    def wait_ready(self, timeout: float = 10.0) -> float:
        start = time.monotonic()
        self.notify.settimeout(timeout)
        while True:
            data = self.notify.recv(4096).decode()
            if "READY=1" in data.splitlines():
                return time.monotonic() - start

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release-dir", type=Path, required=True)
    parser.add_argument("--app", type=Path, default=HERE / "sampleapp.py")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--swaps", type=int, default=0, help="extra swaps after the scenario")
    parser.add_argument("--drain-timeout", type=float, default=20.0)
    parser.add_argument("--path", default="/")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed", file=sys.stderr)
        return 2

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    port = listener.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="swapdemo-"))
    names = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

    def start() -> Instance:
        inst = Instance(next(names), listener, args.release_dir.resolve(), workdir,
                        args.app, args.drain_timeout)
        took = inst.wait_ready()
        print(f"[{time.monotonic() - t0:5.2f}s] {inst.name} ready in {took:.2f}s", flush=True)
        return inst

    def stop(inst: Instance) -> None:
        print(f"[{time.monotonic() - t0:5.2f}s] SIGTERM {inst.name}", flush=True)
        inst.stop()

    t0 = time.monotonic()
    running = [start(), start()]
    everyone = list(running)
    wrk = subprocess.Popen(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "--latency", f"http://127.0.0.1:{port}{args.path}"],
        stdout=subprocess.PIPE, text=True)
    wrk_out: list[str] = []
    reader = threading.Thread(target=lambda: wrk_out.append(wrk.stdout.read()))
    reader.start()

    steps = 3 + args.swaps
    gap = args.duration * 0.8 / (steps + 1)
    time.sleep(gap)
    stop(running.pop(0))                              # SIGTERM A
    time.sleep(gap)
    running.append(start())                           # start C
    everyone.append(running[-1])
    time.sleep(gap)
    stop(running.pop(0))                              # SIGTERM B
    for _ in range(args.swaps):                       # start NEW, READY, SIGTERM OLD
        time.sleep(gap)
        if wrk.poll() is not None:
            print("wrk has finished: no more swaps", flush=True)
            break
        new = start()
        everyone.append(new)
        stop(running.pop(0))
        running.append(new)

    under_load = wrk.poll() is None
    reader.join()
    wrk.wait()
    if not under_load:
        print("warning: the last SIGTERM came after wrk had finished", flush=True)
    for inst in running:
        inst.stop()
    print(wrk_out[0] if wrk_out else "(no wrk output)")
    for inst in everyone:
        code = inst.proc.wait(timeout=30)
        print(f"instance {inst.name}: exit code {code}")
    out = wrk_out[0] if wrk_out else ""
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print("socket errors:", errors.group(1) if errors else "none")
    print("non-2xx/3xx responses:", non2xx.group(1) if non2xx else 0)
    print(f"instance logs in {workdir}")
    return 0 if not errors and not non2xx else 1


if __name__ == "__main__":
    sys.exit(main())
