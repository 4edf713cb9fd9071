import os

from pathlib import Path

from bloom_agent.config.agent import load
from bloom_agent.config.paths import Paths
from bloom_agent.systemd import cgroupstats

HOST = Paths.for_host(load(Path("/nonexistent/agent.toml"))).cgroup_roots  # read only


def test_usage_of_our_own_cgroup():
    line = open("/proc/self/cgroup").read().splitlines()
    # Any hierarchy we are in will do: the function tries the layouts in turn.
    path = next(entry.split(":", 2)[2] for entry in line if entry.split(":", 2)[2])
    pids = cgroupstats.pids_of(path, HOST)
    if pids is None:  # no cgroup file system to read here: nothing measured, and it says so
        assert cgroupstats.usage(path, HOST) == {"memory": None, "tasks": None}
        return
    assert os.getpid() in pids
    stats = cgroupstats.usage(path, HOST)
    assert stats["memory"] > 0 and stats["tasks"] >= 1


def test_unknown_cgroup_is_unmeasured():
    assert cgroupstats.usage("/no/such/group.slice", HOST) == {"memory": None, "tasks": None}
    assert cgroupstats.usage("", HOST) == {"memory": None, "tasks": None}


def test_a_cgroup_tree_under_another_root(tmp_path):
    roots = Paths.for_host(load(tmp_path / "absent.toml"), root=tmp_path).cgroup_roots
    group = tmp_path / "sys/fs/cgroup/unified/system.slice/web@1.0.0.service"
    group.mkdir(parents=True)
    (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    stats = cgroupstats.usage("/system.slice/web@1.0.0.service", roots)
    assert stats["memory"] > 0 and stats["tasks"] >= 1
