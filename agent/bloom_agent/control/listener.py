"""The control socket: inherited from bloom-agent.socket, or bound by the agent when run by hand."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from systemd import daemon as sd_daemon

from bloom_agent.control.auth import group_id
from bloom_agent.errors import BloomError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inherited:
    control: socket.socket | None = None
    api: socket.socket | None = None  # bloom-agent-api.socket's, when it is enabled


def inherited(api_name: str = "bloom-api") -> Inherited:
    """The sockets systemd passed (LISTEN_FDS), told apart by their names (LISTEN_FDNAMES): the HTTPS
    API's is named ``api_name`` (its unit's FileDescriptorName=), the control socket is the other. The
    environment is cleared for children."""
    fds = sd_daemon.listen_fds_with_names()
    control = api = None
    for fd, name in sorted(fds.items()):
        sock = socket.socket(fileno=fd)
        if name == api_name:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                raise BloomError(f"inherited fd {fd} named {name} is not a TCP socket; check bloom-agent-api.socket")
            api = sock
        elif control is None:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise BloomError(f"inherited fd {fd} ({name}) is not a Unix stream socket; check bloom-agent.socket")
            control = sock
        else:
            log.warning("systemd passed another socket, fd %d (%s); it is not used", fd, name)
            sock.close()
    return Inherited(control, api)


def bind(path: Path, group: str) -> socket.socket:
    """Bind the control socket ourselves (development, or the agent run outside systemd)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created 0600 and only then opened to the group: never a moment when it is too open.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise BloomError(f"cannot bind control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    gid = group_id(group)
    if gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    sock.listen(64)
    return sock


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BloomError(f"{path} exists and is not a socket; remove it or choose another control_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise BloomError(f"cannot probe {path}: {exc.strerror}") from exc
    else:
        raise BloomError(f"another agent is already listening on {path}")
    finally:
        probe.close()
