"""Who is calling: SO_PEERCRED on the control connection, and whether they may act."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    remote: str = ""  # the address an ssh session came from (bloomctl -H), as sshd told that session
    api: bool = False  # a signed request over the HTTPS API: no local user, ``remote`` is the peer's address

    @classmethod
    def api_client(cls, address: str) -> "Caller":
        """A caller of the HTTPS API: known by the secret it signed with and the address it came from. It is
        nobody on the host (uid -1), so nothing that trusts a uid can mistake it for root."""
        return cls(pid=0, uid=-1, gid=-1, remote=address, api=True)

    @property
    def label(self) -> str:
        """Who, as the history and the journal record it: the user, and where from when remote."""
        if self.api:
            return f"api from {self.remote}"
        return f"{self.user} via ssh from {self.remote}" if self.remote else self.user

    @property
    def user(self) -> str:
        if self.api:
            return "api"
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def describe(self) -> str:
        if self.api:
            return self.label
        where = f", ssh from {self.remote}" if self.remote else ""
        return f"{self.user} (uid {self.uid}, pid {self.pid}{where})"


# Not exported by Python 3.11's socket module; the value is Linux's.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
# Python's getsockopt takes at most 1024 bytes: 256 groups. A caller in more gets the fallback.
PEERGROUPS_BYTES = 1024


def peer_caller(sock: socket.socket, proc: Path = Path("/proc")) -> Caller:
    """The kernel's word on who connected; unlike anything the client sends, it cannot be forged. The
    groups too are the kernel's, as they were when the caller connected (SO_PEERGROUPS): a process
    that has exited meanwhile cannot lend its PID, and so its groups, to another."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    groups = _peer_groups(sock)
    if groups is None:
        groups = _process_groups(pid, uid, gid, proc)
    return Caller(pid=pid, uid=uid, gid=gid, groups=frozenset(groups | {gid}), remote=_ssh_client(pid, proc))


def _ssh_client(pid: int, proc: Path) -> str:
    """The client address of the ssh session the caller runs in (bloomctl stdio-bridge under
    bloomctl -H), from SSH_CONNECTION in its environment. Informational: the uid is what is trusted,
    and a local user could set the variable; it tells an operator where a remote request came from."""
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return ""
    for entry in environ.split(b"\0"):
        if entry.startswith(b"SSH_CONNECTION="):
            address = entry.split(b"=", 1)[1].split(b" ", 1)[0].decode(errors="replace")
            return address if address and len(address) <= 64 and address.isprintable() else ""
    return ""


def _peer_groups(sock: socket.socket) -> set[int] | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEERGROUPS_BYTES)
    except OSError:  # a kernel without it, or more groups than fit
        return None
    return set(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def _process_groups(pid: int, uid: int, gid: int, proc: Path) -> set[int]:
    # Where SO_PEERGROUPS is missing: the process's own groups, then the group database for a caller
    # that has already exited.
    try:
        with open(proc / str(pid) / "status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {gid, *map(int, line.split()[1:])}
    except OSError:
        pass
    try:
        return {gid, *os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)}
    except KeyError:
        return {gid}


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def is_authorized(caller: Caller, control_gid: int | None) -> bool:
    return caller.uid == 0 or (control_gid is not None and control_gid in caller.groups)
