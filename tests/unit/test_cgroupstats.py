import os

from bloom_agent import cgroupstats


def test_usage_of_our_own_cgroup():
    line = open("/proc/self/cgroup").read().splitlines()
    # Any hierarchy we are in will do: the function tries the layouts in turn.
    path = next(entry.split(":", 2)[2] for entry in line if entry.split(":", 2)[2])
    pids = cgroupstats.pids_of(path)
    if pids is None:  # no cgroup file system to read here: nothing measured, and it says so
        assert cgroupstats.usage(path) == {"memory": None, "tasks": None}
        return
    assert os.getpid() in pids
    stats = cgroupstats.usage(path)
    assert stats["memory"] > 0 and stats["tasks"] >= 1


def test_unknown_cgroup_is_unmeasured():
    assert cgroupstats.usage("/no/such/group.slice") == {"memory": None, "tasks": None}
    assert cgroupstats.usage("") == {"memory": None, "tasks": None}
