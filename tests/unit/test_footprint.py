"""The agent's start-up memory: what a path needs is imported by that path (bench/import_footprint.py
measures each one's share). A top-level import added to a module the daemon loads shows up here."""

import json
import subprocess
import sys
from pathlib import Path

AGENT_SRC = Path(__file__).resolve().parents[2] / "agent"
# module: the path that imports it
ON_DEMAND = {
    "jinja2": "rendering a unit whose stamp is not current (systemd/unitfiles.py)",
    "psutil": "a memory or tasks check on a host without systemd's accounting (systemd/cgroupstats.py)",
    "importlib.metadata": "a python health check (watch/checks.py)",
    "systemd.journal": "probation's journal monitor, a failed unit's last lines (watch, systemd/unitfailure.py)",
    "prometheus_client": "the textfile, when its directory exists (metrics/textfile.py)",
    "zstandard": "unpacking a .tar.zst (store/releases.py)",
    "click": "bloomctl only",
}


def test_the_daemon_module_leaves_optional_imports_to_their_paths():
    code = ("import json, sys, bloom_agent.daemon.agent\n"
            f"print(json.dumps([m for m in {sorted(ON_DEMAND)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(AGENT_SRC)}).stdout
    loaded = json.loads(out)
    assert loaded == [], {m: ON_DEMAND[m] for m in loaded}
