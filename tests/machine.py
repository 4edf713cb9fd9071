"""Real systemd machines for the integration tests.

Two kinds of machine share one interface (``hostname``, ``ssh_config``, ``host``,
``run``, ``put``, ``get``, ``reboot``, ``console_log``, ``destroy``):

* ``NspawnMachine``: a throw-away Debian container booted with systemd-nspawn on an
  overlay (its own writable layer) over a root file system that mmdebstrap builds once
  and caches (``rootfs``). Each machine has its own network namespace (``--private-network``: only a loopback), so
  concurrent machines never collide on any port, and is reached over ssh through a
  ``ProxyCommand`` that connects inside that namespace. Needs root.
* ``SshMachine``: an existing host (a Vagrant VM, say) given by an ssh destination and
  an ssh config file.

Plain module: no pytest in here, so it can be used from a shell too, e.g.
``/usr/bin/python3 -c 'import machine; m = machine.NspawnMachine(); m.boot(); ...'``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Bump when anything that goes into the cached root file system changes other than
# the package list (the mmdebstrap command line, the suite, ...).
HARNESS_FORMAT = 1
SUITE = "bookworm"

# Everything the machine needs, installed up front: tests install the agent's .deb
# with apt offline, so every dependency it has must already be here.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-dbus-fast",
    # not the agent's: bench/reload_stall.py compares its blocking calls with the agent's
    "python3-pystemd",
    "python3-sdnotify",
    "python3-systemd",
    "python3-psutil",
    "python3-click",
    "python3-jinja2",
    "python3-zstandard",
    "openssh-server",
    "curl",
    # the HTTPS API tests make a certificate and sign requests with it (docs/api.md)
    "openssl",
    "procps",
    "iproute2",
    "sudo",
    "wrk",
    "python3-prometheus-client",
    # node_exporter reads the agent's metrics from its textfile collector directory
    "prometheus-node-exporter",
    # Installed but not started at boot (it adds ~2 s to every boot): tests that need
    # it run `systemctl start postgresql`.
    "postgresql",
)

# Units enabled by the packages that only slow a test machine down or reach out to
# the network; they are disabled in every machine (not in the cached root file system).
DISABLED_UNITS = (
    "multi-user.target.wants/postgresql.service",
    "multi-user.target.wants/prometheus-node-exporter.service",
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    "timers.target.wants/fstrim.timer",
)
MASKED_UNITS = ("console-getty.service",)

DEFAULT_CACHE_DIR = "/var/cache/bloom-agent-tests"
DEFAULT_RUNS_DIR = "/var/tmp/bloom-test-machines"

# What runs inside the machine gets this environment, never the caller's.
MACHINE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# systemd-nspawn exits with this code when the machine reboots.
NSPAWN_REBOOT_EXIT = 133

REQUIRED_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "ssh-keygen": "openssh-client",
}


class MachineError(RuntimeError):
    """A machine could not be built, booted, reached or removed."""


def cache_dir() -> Path:
    return Path(os.environ.get("BLOOM_TEST_CACHE") or DEFAULT_CACHE_DIR)


def runs_dir() -> Path:
    return Path(os.environ.get("BLOOM_TEST_RUNS") or DEFAULT_RUNS_DIR)


def missing_prerequisites() -> list[str]:
    """What stops NspawnMachine from working here, as sentences; empty when all is well."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the nspawn machine needs root (run the tests with sudo or as root)")
    if "\toverlay\n" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlay file system (modprobe overlay)")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        problems.append("missing tools; install them with: apt-get install " + " ".join(missing))
    return problems


# --------------------------------------------------------------------------- rootfs


def rootfs_key(packages=PACKAGES) -> str:
    spec = {"format": HARNESS_FORMAT, "suite": SUITE, "variant": "apt",
            "packages": sorted(set(packages))}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def rootfs(packages=PACKAGES, cache: Path | None = None, progress=None) -> Path:
    """The cached root file system (a directory, never written to: machines boot on an
    overlay over it), built first if missing.

    Concurrent callers wait for one build. It is built under a temporary name and
    renamed, so a killed build never leaves a tree that looks finished. ``progress``
    (a callable taking a str) hears about a build before it starts.
    """
    cache = Path(cache or cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    key = rootfs_key(packages)
    tree = cache / f"rootfs-{key}"
    if not tree.is_dir():
        with _locked(cache / f"rootfs-{key}.lock"):
            if not tree.is_dir():
                _build_rootfs(packages, cache, tree, progress)
    os.utime(tree)  # "last used", for _prune_rootfs
    return tree


def _build_rootfs(packages, cache: Path, tree: Path, progress) -> None:
    for stale in cache.glob(tree.name + ".part-*"):  # killed builds (we hold the lock)
        _remove_tree(stale, cache)
    part = tree.with_name(f"{tree.name}.part-{os.getpid()}")
    log = tree.with_name(tree.name + ".log")
    cmd = ["mmdebstrap", "--variant=apt", "--format=directory",
           "--include=" + ",".join(sorted(set(packages))), SUITE, str(part)]
    if progress:
        progress(f"building the test root file system (about a minute): {tree}")
    started = time.monotonic()
    with open(log, "w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        _remove_tree(part, cache)
        raise MachineError(f"mmdebstrap failed (exit {rc}); log {log}:\n{_tail(log, 30)}")
    os.rename(part, tree)
    if progress:
        progress(f"built {tree} in {time.monotonic() - started:.0f} s")
    _prune_rootfs(cache, keep=tree)


def _prune_rootfs(cache: Path, keep: Path, unused_days: float = 7) -> None:
    """Remove root file systems of other package lists that nobody used for a while."""
    limit = time.time() - unused_days * 86400
    for old in cache.glob("rootfs-*"):
        if old != keep and old.is_dir() and ".part-" not in old.name \
                and old.stat().st_mtime < limit:
            _remove_tree(old, cache)
            Path(f"{old}.log").unlink(missing_ok=True)


# --------------------------------------------------------------------------- processes


def _proc_start(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _same_process(pid, start) -> bool:
    return bool(pid) and start is not None and _proc_start(pid) == start


def _wait_gone(pid: int, start: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _same_process(pid, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid, start, sig) -> None:
    if _same_process(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(p) for p in text.split()]


def _container_init(nspawn_pid: int) -> int | None:
    """PID (as seen here) of the descendant of nspawn that is PID 1 of a new namespace."""
    todo = _children(nspawn_pid)
    while todo:
        pid = todo.pop(0)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        ids = nspid.group(1).split() if nspid else []
        if len(ids) > 1 and ids[-1] == "1":
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                exe = ""
            # before the exec it is still a copy of nspawn: wait for it
            return pid if exe.endswith("/systemd") else None
        todo.extend(_children(pid))
    return None


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    data = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", data)  # colours of the boot messages
    return "\n".join(data.splitlines()[-lines:])


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- run dirs


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            if point == prefix[:-1] or point.startswith(prefix):
                found.append(point)
    return found


def remove_run_dir(path: Path, runs: Path | None = None) -> None:
    """Delete one machine directory (only one directly inside the runs directory)."""
    _remove_tree(Path(path), Path(runs or runs_dir()))


def _remove_tree(path: Path, parent: Path) -> None:
    """Delete ``path``, which must be a real directory directly inside ``parent``: first
    unmount anything below it, then remove it without crossing into other file systems
    or following symbolic links (``rm --one-file-system`` does not follow them)."""
    parent = parent.resolve()
    if path.is_symlink() or path.parent.resolve() != parent or path.name in ("", ".", ".."):
        raise MachineError(f"refusing to remove {path}: not a directory directly in {parent}")
    if not path.exists():
        return
    path = parent / path.name
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        if subprocess.run(["umount", point], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "--lazy", point], stderr=subprocess.DEVNULL)
    left = _mounts_below(path)
    if left:
        raise MachineError(f"refusing to remove {path}: still mounted below it: {left}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def cleanup_leftovers(runs: Path | None = None, log=None) -> list[Path]:
    """Stop and remove machines whose owner process is gone (an earlier run that was
    killed). Machines of live owners (concurrent runs) are never touched. Returns the
    directories removed."""
    runs = Path(runs or runs_dir())
    if not runs.is_dir():
        return []
    removed = []
    with _locked(runs / ".cleanup.lock"):
        for entry in sorted(runs.iterdir()):
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            try:
                owner = json.loads((entry / "owner.json").read_text())
            except (FileNotFoundError, ValueError):
                # mkdir and the owner file are written back to back: only a directory
                # that has stayed without one for a while is abandoned
                if time.time() - entry.stat().st_mtime < 120:
                    continue
                owner = {}
            if _same_process(owner.get("owner_pid"), owner.get("owner_start")):
                continue
            if not _kill_machine(owner):
                if log:
                    log(f"left {entry} alone: its machine would not die")
                continue
            remove_run_dir(entry, runs)
            removed.append(entry)
            if log:
                log(f"removed leftover machine {entry} (owner pid {owner.get('owner_pid')} is gone)")
    return removed


def _kill_machine(record: dict, grace: float = 10) -> bool:
    """Stop the nspawn (and the container) described by an owner record, not our child.
    True when neither runs any more."""
    nspawn = (record.get("nspawn_pid"), record.get("nspawn_start"))
    leader = (record.get("leader_pid"), record.get("leader_start"))
    _signal(*nspawn, signal.SIGTERM)  # nspawn asks the container's systemd to power off
    if _wait_gone(*nspawn, grace) and _wait_gone(*leader, 2):
        return True
    _signal(*leader, signal.SIGKILL)  # from outside, this kills the whole PID namespace
    _signal(*nspawn, signal.SIGKILL)
    return _wait_gone(*leader, 5) and _wait_gone(*nspawn, 5)


# --------------------------------------------------------------------------- machines


def _completed(args, proc) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(args, proc.returncode, proc.stdout, proc.stderr)


class Machine:
    """What the tests get; subclasses fill in how to reach the machine."""

    hostname: str
    ssh_config: Path

    @property
    def host(self):
        """A testinfra host over ssh (root, or sudo when the ssh user is not root)."""
        import testinfra

        return testinfra.get_host(self._hostspec(), ssh_config=str(self.ssh_config),
                                  sudo=not self._is_root())

    def _hostspec(self) -> str:
        raise NotImplementedError

    def _is_root(self) -> bool:
        return True

    def _ssh_args(self) -> list[str]:
        return ["-F", str(self.ssh_config)]

    def _ssh_dest(self) -> str:
        return self.hostname

    def ssh(self, command: str, check: bool = False, timeout: float | None = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell command in the machine over ssh, as the ssh user."""
        args = ["ssh", *self._ssh_args(), self._ssh_dest(), command]
        stdin = None if input is not None else subprocess.DEVNULL
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=stdin)
        if proc.returncode == 255:
            # ssh's own failure (the connection, not the command): one more try on a
            # connection of its own, verbose, so that a failure says why
            print(f"{self._ssh_dest()}: ssh failed (255), trying once more without "
                  f"multiplexing: {proc.stderr.strip()!r}", file=sys.stderr)
            args = ["ssh", *self._ssh_args(), "-o", "ControlMaster=no", "-o", "ControlPath=none",
                    "-o", "LogLevel=VERBOSE", self._ssh_dest(), command]
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                  input=input, stdin=stdin)
        if check and proc.returncode != 0:
            raise MachineError(f"{self._ssh_dest()}: {command!r} exited with {proc.returncode}:\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def put(self, local, remote: str) -> None:
        """Copy a local file or directory into the machine (scp over the ssh config)."""
        local = Path(local)
        cmd = ["scp", "-q", *self._ssh_args(), *(["-r"] if local.is_dir() else []), "--",
               str(local), f"{self._ssh_dest()}:{remote}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise MachineError(f"scp {local} -> {remote} failed: {proc.stderr.strip()}")

    def get(self, remote: str, local) -> None:
        """Copy a file out of the machine."""
        cmd = ["scp", "-q", *self._ssh_args(), "--", f"{self._ssh_dest()}:{remote}", str(local)]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise MachineError(f"scp {remote} -> {local} failed: {proc.stderr.strip()}")

    def _wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                proc = self.ssh("true", timeout=15)
                if proc.returncode == 0:
                    return
                err = proc.stderr.strip()
            except subprocess.TimeoutExpired:
                err = "ssh timed out"
            if time.monotonic() > deadline:
                raise MachineError(f"{self.hostname}: ssh not answering after {timeout:.0f} s: {err}\n"
                                   f"console:\n{self.console_log()}")
            time.sleep(0.2)

    def wait_until_running(self, timeout: float = 60) -> str:
        """Wait for the end of start-up; returns 'running' or 'degraded' (and says which
        units failed on stderr), raises otherwise."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            left = max(1, int(deadline - time.monotonic()))
            try:
                proc = self.run(["timeout", str(left), "systemctl", "is-system-running", "--wait"],
                                timeout=left + 10)
                state = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
                state = state[0]
            except subprocess.TimeoutExpired:
                state = "timeout"
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                raise MachineError(f"{self.hostname}: system is {state}\n"
                                   f"console:\n{self.console_log()}")
            time.sleep(0.1)  # "offline" or an error: systemd is not reachable yet
        else:
            raise MachineError(f"{self.hostname}: not running after {timeout:.0f} s "
                               f"(last state: {state!r})\nconsole:\n{self.console_log()}")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout
            print(f"{self.hostname} is degraded; failed units:\n{failed}", file=sys.stderr)
        return state

    def run(self, cmd, check=False, timeout=None, input=None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def reboot(self, timeout: float = 120) -> None:
        raise NotImplementedError

    def console_log(self, lines: int = 60) -> str:
        raise NotImplementedError

    def destroy(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


class NspawnMachine(Machine):
    """A Debian bookworm container booted with systemd-nspawn, one directory per run.

    ``m = NspawnMachine(); m.boot()`` ... ``m.destroy()`` (or use it as a context
    manager after boot). The directory ``run_dir`` holds ``root/`` (the machine's file
    system: an overlay mounted here, with the machine's changes in ``upper/``, over the
    read-only ``lower`` tree, by default ``rootfs()``), ``console.log``, ``ssh_config``,
    the ssh key and ``owner.json``.
    """

    def __init__(self, lower: Path | None = None, runs: Path | None = None, progress=None):
        self.lower = Path(lower) if lower else None
        self.runs = Path(runs or runs_dir())
        self.progress = progress
        self.id = secrets.token_hex(4)
        self.hostname = f"bloom-test-{self.id}"
        self.run_dir = self.runs / self.id
        self.root = self.run_dir / "root"
        self.ssh_config = self.run_dir / "ssh_config"
        self.key = self.run_dir / "id_ed25519"
        self.log_path = self.run_dir / "console.log"
        self._nspawn: subprocess.Popen | None = None
        self.leader: int | None = None
        self.boot_seconds: float | None = None

    # -- life cycle

    def boot(self, timeout: float = 120) -> "NspawnMachine":
        """Create, configure and boot the machine; on any failure (or interrupt) it is
        destroyed again and MachineError carries the end of the console log."""
        problems = missing_prerequisites()
        if problems:
            raise MachineError("; ".join(problems))
        lower = self.lower or rootfs(progress=self.progress)
        started = time.monotonic()
        try:
            try:
                self._create(lower)
                self._configure()
                self._start(timeout)
            except (OSError, subprocess.SubprocessError) as e:
                raise MachineError(f"{self.hostname}: {e}\nconsole:\n{self.console_log()}") from e
        except BaseException:
            self.destroy()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _create(self, lower: Path) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700)
        self._record()
        for d in ("root", "upper", "work"):
            (self.run_dir / d).mkdir()
        options = f"lowerdir={lower},upperdir={self.run_dir}/upper,workdir={self.run_dir}/work"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
                       check=True)

    def _record(self) -> None:
        record = {"owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
                  "name": self.hostname, "created": time.time()}
        if self._nspawn:
            record.update(nspawn_pid=self._nspawn.pid, nspawn_start=_proc_start(self._nspawn.pid))
        if self.leader:
            record.update(leader_pid=self.leader, leader_start=_proc_start(self.leader))
        _write_atomic(self.run_dir / "owner.json", json.dumps(record, indent=1) + "\n")

    def _configure(self) -> None:
        root = self.root
        etc = root / "etc"
        (etc / "hostname").write_text(self.hostname + "\n")
        (etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        units = etc / "systemd" / "system"
        for link in DISABLED_UNITS:
            (units / link).unlink(missing_ok=True)
        for unit in MASKED_UNITS:
            (units / unit).unlink(missing_ok=True)
            (units / unit).symlink_to("/dev/null")
        # ssh: a key pair per run, root logs in with it, sshd on the machine's own loopback
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.hostname,
                        "-f", str(self.key)], check=True)
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        _write_atomic(ssh_dir / "authorized_keys", Path(f"{self.key}.pub").read_text(), 0o600)
        (etc / "ssh" / "sshd_config.d" / "bloom-test.conf").write_text(
            "ListenAddress 127.0.0.1\nPort 22\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nUseDNS no\n")

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        cmd = ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network",
               "--console=read-only", "--link-journal=no", f"--machine={self.hostname}",
               "-D", str(self.root), "-b"]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(cmd)}\n".encode())
            log.flush()
            # own session: a Ctrl-C in the terminal reaches pytest (which destroys the
            # machine in order), not nspawn directly
            self._nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self._record()
        self.leader = None
        while self.leader is None:
            if self._nspawn.poll() is not None:
                raise MachineError(f"{self.hostname}: systemd-nspawn exited with "
                                   f"{self._nspawn.returncode}\nconsole:\n{self.console_log()}")
            if time.monotonic() > deadline:
                raise MachineError(f"{self.hostname}: no systemd in the container\n"
                                   f"console:\n{self.console_log()}")
            time.sleep(0.02)
            self.leader = _container_init(self._nspawn.pid)
        self._record()
        self._write_ssh_config()
        self.wait_until_running(deadline - time.monotonic())
        self._wait_ssh(max(5.0, deadline - time.monotonic()))

    def _write_ssh_config(self) -> None:
        # sshd listens on the machine's own loopback; the proxy command makes the TCP
        # connection inside the machine's network namespace and hands the socket to ssh
        connect = ("import socket; s = socket.create_connection(('127.0.0.1', 22), 10); "
                   "socket.send_fds(socket.socket(fileno=1), [b'x'], [s.fileno()])")
        control = f"{self.run_dir}/cm-%C"
        if len(control) + 40 > 100:  # unix socket paths are short
            control = f"/tmp/bloom-cm-{self.id}-%C"
        _write_atomic(self.ssh_config, "\n".join([
            f"Host {self.hostname}",
            "  HostName 127.0.0.1",
            "  Port 22",
            "  User root",
            f"  IdentityFile {self.key}",
            "  IdentitiesOnly yes",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  LogLevel ERROR",
            "  ConnectTimeout 10",
            "  ControlMaster auto",
            f"  ControlPath {control}",
            "  ControlPersist 60s",
            "  ProxyUseFdpass yes",
            f'  ProxyCommand /usr/bin/nsenter -t {self.leader} -n -- {sys.executable} -c "{connect}"',
            "",
        ]))

    def reboot(self, timeout: float = 120) -> None:
        """Reboot the machine (same directory, fresh /run) and wait until it runs again."""
        if not self.running:
            raise MachineError(f"{self.hostname} is not running")
        self._close_ssh()
        self.run(["systemctl", "reboot"], timeout=30)
        try:
            rc = self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MachineError(f"{self.hostname}: did not go down for reboot\n"
                               f"console:\n{self.console_log()}") from None
        if rc != NSPAWN_REBOOT_EXIT:
            raise MachineError(f"{self.hostname}: nspawn exited with {rc}, not "
                               f"{NSPAWN_REBOOT_EXIT} (reboot)\nconsole:\n{self.console_log()}")
        for stale in self.run_dir.glob("cm-*"):
            stale.unlink()
        self.leader = None
        try:
            self._start(timeout)
        except BaseException:
            self.destroy()
            raise

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    def destroy(self, timeout: float = 30) -> None:
        """Power the machine off (forcibly after ``timeout``) and delete its directory.
        Safe to call twice, or on a machine that never booted."""
        if self._nspawn is not None:
            if self._nspawn.poll() is None:
                self._close_ssh()
                # SIGTERM makes nspawn ask the container's systemd for an orderly poweroff
                self._nspawn.terminate()
                try:
                    self._nspawn.wait(timeout)
                except subprocess.TimeoutExpired:
                    if self.leader:
                        _signal(self.leader, _proc_start(self.leader), signal.SIGKILL)
                    self._nspawn.kill()
                    self._nspawn.wait(10)
            self._nspawn = None
        if self.run_dir.exists():
            remove_run_dir(self.run_dir, self.runs)

    def _close_ssh(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(["ssh", *self._ssh_args(), "-O", "exit", self.hostname],
                           capture_output=True, timeout=10, stdin=subprocess.DEVNULL)

    # -- access

    def _hostspec(self) -> str:
        return f"ssh://{self.hostname}"

    def run(self, cmd, check=False, timeout=None, input=None) -> subprocess.CompletedProcess:
        """Run a command inside the machine as root through nsenter (no ssh): ``cmd`` is
        an argument list, or a string for ``sh -c``. Returns text output."""
        if not self.leader:
            raise MachineError(f"{self.hostname} is not running")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p",
                "--wdns=/root", "--", *argv]
        proc = subprocess.run(full, capture_output=True, text=True, env=MACHINE_ENV,
                              timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        result = _completed(argv, proc)
        if check and result.returncode != 0:
            raise MachineError(f"{self.hostname}: {cmd!r} exited with {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def console_log(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def __repr__(self):
        return f"<NspawnMachine {self.hostname} {self.run_dir}>"


class SshMachine(Machine):
    """An existing host reached with ssh, e.g. a Vagrant VM:
    ``SshMachine("ssh://default", "ssh-config")`` after ``vagrant ssh-config > ssh-config``.
    ``destroy`` leaves it alone. Commands run as root (through ``sudo -n`` when the ssh
    user is not root)."""

    def __init__(self, hostspec: str, ssh_config=None):
        from testinfra.backend import parse_hostspec
        from testinfra.backend.base import BaseBackend

        self.hostspec = hostspec if "://" in hostspec else f"ssh://{hostspec}"
        netloc, options = parse_hostspec(self.hostspec)
        if options.get("connection") not in ("ssh", "safe-ssh", "paramiko"):
            raise MachineError(f"{hostspec}: only ssh hosts are supported")
        self.spec = BaseBackend.parse_hostspec(netloc)  # name, port, user
        ssh_config = ssh_config or options.get("ssh_config")
        self.ssh_config = Path(ssh_config) if ssh_config else None
        self._root = None
        self._hostname = None

    @property
    def hostname(self) -> str:
        if self._hostname is None:
            self._hostname = self.ssh("hostname", check=True).stdout.strip()
        return self._hostname

    def _hostspec(self) -> str:
        return self.hostspec

    def _ssh_args(self) -> list[str]:
        args = ["-F", str(self.ssh_config)] if self.ssh_config else []
        if self.spec.user:
            args += ["-o", f"User={self.spec.user}"]
        if self.spec.port:
            args += ["-o", f"Port={self.spec.port}"]
        return args + ["-o", "BatchMode=yes"]

    def _ssh_dest(self) -> str:
        return self.spec.name

    @property
    def host(self):
        import testinfra

        kwargs = {"sudo": not self._is_root()}
        if self.ssh_config:
            kwargs["ssh_config"] = str(self.ssh_config)
        return testinfra.get_host(self._hostspec(), **kwargs)

    def _is_root(self) -> bool:
        if self._root is None:
            self._root = self.ssh("id -u", check=True).stdout.strip() == "0"
        return self._root

    def run(self, cmd, check=False, timeout=None, input=None) -> subprocess.CompletedProcess:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        remote = shlex.join(argv if self._is_root() else ["sudo", "-n", "--", *argv])
        result = _completed(argv, self.ssh(remote, timeout=timeout, input=input))
        if result.returncode == 255:
            raise MachineError(f"ssh to {self.spec.name} failed: {result.stderr.strip()}")
        if check and result.returncode != 0:
            raise MachineError(f"{self.spec.name}: {cmd!r} exited with {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def put(self, local, remote: str) -> None:
        if self._is_root():
            return super().put(local, remote)
        staging = f"/tmp/bloom-put-{secrets.token_hex(4)}"
        super().put(local, staging)
        name = Path(local).name
        dest = remote.rstrip("/") + "/" + name if remote.endswith("/") else remote
        script = ('if [ -d "$2" ]; then set -- "$1" "$2/$3"; fi; '
                  'cp -R --preserve=mode,timestamps -T -- "$1" "$2"; rc=$?; rm -rf -- "$1"; exit $rc')
        self.run(["sh", "-c", script, "put", staging, dest, name], check=True)

    def reboot(self, timeout: float = 300) -> None:
        """``systemctl reboot``, then wait until ssh answers from the new boot (a marker
        left in /run is gone) and systemd has finished starting."""
        marker = "/run/bloom-test-before-reboot"
        self.run(["touch", marker], check=True)
        with contextlib.suppress(MachineError, subprocess.TimeoutExpired):
            self.run(["systemctl", "reboot"], timeout=30)
        subprocess.run(["ssh", *self._ssh_args(), "-O", "exit", self.spec.name],
                       capture_output=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(1)
            with contextlib.suppress(MachineError, subprocess.TimeoutExpired):
                if self.run(["test", "-e", marker], timeout=20).returncode == 1:
                    break
            if time.monotonic() > deadline:
                raise MachineError(f"{self.spec.name} did not come back within {timeout:.0f} s")
        self.wait_until_running(max(10.0, deadline - time.monotonic()))

    def console_log(self, lines: int = 60) -> str:
        try:
            return self.run(["journalctl", "-b", "--no-pager", "-n", str(lines)], timeout=30).stdout
        except Exception as e:  # a diagnostic: never hide the original failure
            return f"(no journal: {e})"

    def __repr__(self):
        return f"<SshMachine {self._hostspec()}>"


# --------------------------------------------------------------------------- packages


def make_upgrade_deb(deb, new_version: str, out_dir) -> Path:
    """Rebuild ``deb`` with Version ``new_version`` (same contents) into ``out_dir``,
    to test upgrades; returns the new file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bloom-deb-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = tree / "DEBIAN" / "control"
        text, count = re.subn(r"^Version:.*$", f"Version: {new_version}",
                              control.read_text(), count=1, flags=re.M)
        if count != 1:
            raise MachineError(f"{deb}: no Version field in DEBIAN/control")
        control.write_text(text)
        fields = dict(re.findall(r"^(Package|Architecture):\s*(\S+)", text, re.M))
        version = new_version.split(":", 1)[-1]  # file names carry no epoch
        out = out_dir / f"{fields['Package']}_{version}_{fields['Architecture']}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)],
                       check=True, stdout=subprocess.DEVNULL)
    return out
