"""Every place on the host the agent reads or writes, in one object that main() builds.

Everything below hangs off ``root``, ``/`` on a host: a test builds the same object under a temporary
directory, and the whole agent then runs there, never touching the host's ``/etc``, ``/run`` or
systemd. Nothing else in the agent names a host path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bloom_agent.config.agent import AgentConfig

# Installed by the package; the source tree's copy serves tests and development.
PACKAGE_TEMPLATES = Path("/usr/share/bloom-agent/templates")
SOURCE_TEMPLATES = Path(__file__).resolve().parents[3] / "units" / "templates"


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    control_socket: Path
    apps_dir: Path
    releases_dir: Path
    metrics_dir: Path
    unit_dir: Path          # where the agent writes app units and their blessed socket pointer
    runtime_unit_dir: Path  # the trial pointer: gone after a reboot
    vendor_unit_dirs: tuple[Path, ...]  # where packages put units: a name taken there is not an app's
    templates: tuple[Path, ...]
    proc: Path
    cgroup: Path

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def boot_id_file(self) -> Path:
        return self.proc / "sys" / "kernel" / "random" / "boot_id"

    @property
    def cgroup_roots(self) -> tuple[Path, ...]:
        """The unified hierarchy, then the hybrid layout's unified and named systemd hierarchies."""
        return (self.cgroup, self.cgroup / "unified", self.cgroup / "systemd")

    @classmethod
    def for_host(cls, config: AgentConfig, root: Path = Path("/")) -> "Paths":
        def under(path: Path | str) -> Path:
            return root / Path(path).relative_to("/")

        return cls(
            state_dir=under(config.state_dir),
            control_socket=under(config.control_socket),
            apps_dir=under(config.apps_dir),
            releases_dir=under(config.releases_dir),
            metrics_dir=under(config.metrics_dir),
            unit_dir=under("/etc/systemd/system"),
            runtime_unit_dir=under("/run/systemd/system"),
            vendor_unit_dirs=tuple(under(d) for d in ("/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
                                                      "/lib/systemd/system")),
            templates=(under(PACKAGE_TEMPLATES), SOURCE_TEMPLATES),
            proc=under("/proc"),
            cgroup=under("/sys/fs/cgroup"),
        )
