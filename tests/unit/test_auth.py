import os
import socket

from bloom_agent.control.auth import Caller, is_authorized, peer_caller


def test_root_is_always_authorized():
    assert is_authorized(Caller(pid=1, uid=0, gid=0), control_gid=None)


def test_member_of_control_group_is_authorized():
    assert is_authorized(Caller(pid=1, uid=1000, gid=1000, groups=frozenset({1000, 990})), control_gid=990)


def test_others_are_refused():
    assert not is_authorized(Caller(pid=1, uid=1000, gid=1000, groups=frozenset({1000})), control_gid=990)
    assert not is_authorized(Caller(pid=1, uid=1000, gid=1000, groups=frozenset({1000})), control_gid=None)


def test_peer_caller_reads_the_kernel_credentials():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        caller = peer_caller(a)
    assert (caller.pid, caller.uid, caller.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert set(os.getgroups()) <= caller.groups


def test_groups_come_from_the_socket_not_from_proc(tmp_path):
    """A /proc that says otherwise (a PID reused by another process) changes nothing."""
    from pathlib import Path

    fake = tmp_path / str(os.getpid())
    fake.mkdir()
    (fake / "status").write_text("Groups:\t4242\n")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        caller = peer_caller(a, Path(tmp_path))
    assert 4242 not in caller.groups
    assert caller.groups == frozenset(os.getgroups()) | {os.getgid()}


def test_a_caller_in_an_ssh_session_is_recorded_with_its_address(tmp_path):
    from pathlib import Path

    fake = tmp_path / str(os.getpid())
    fake.mkdir()
    (fake / "environ").write_bytes(b"HOME=/root\0SSH_CONNECTION=192.0.2.7 50122 192.0.2.1 22\0TERM=dumb\0")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        remote = peer_caller(a, Path(tmp_path))
        (fake / "environ").write_bytes(b"HOME=/root\0")
        local = peer_caller(a, Path(tmp_path))
    assert remote.remote == "192.0.2.7" and remote.label == f"{remote.user} via ssh from 192.0.2.7"
    assert local.remote == "" and local.label == local.user
