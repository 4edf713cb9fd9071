"""Memory and task count of a unit's processes, read from its cgroup with psutil.

systemd's own MemoryCurrent/TasksCurrent are the first choice; this is for hosts where that
accounting is unavailable (a container on a hybrid cgroup hierarchy, accounting turned off), so the
memory and task checks still measure something real instead of silently passing.
"""

from __future__ import annotations

from pathlib import Path

Roots = tuple[Path, ...]  # Paths.cgroup_roots: the unified hierarchy first, then the hybrid layout's


def pids_of(control_group: str, roots: Roots) -> list[int] | None:
    if not control_group:
        return None
    for root in roots:
        procs = root / control_group.lstrip("/") / "cgroup.procs"
        try:
            return [int(line) for line in procs.read_text().split()]
        except (OSError, ValueError):
            continue
    return None


def usage(control_group: str, roots: Roots) -> dict[str, int | None]:
    pids = pids_of(control_group, roots)
    if pids is None:
        return {"memory": None, "tasks": None}
    # Only hosts without systemd's accounting come here: psutil (1 MB) is not loaded at start-up.
    import psutil

    memory = tasks = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            memory += proc.memory_info().rss
            tasks += proc.num_threads()
        except psutil.Error:  # exited meanwhile
            continue
    return {"memory": memory, "tasks": tasks}
