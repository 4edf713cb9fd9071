"""The Grafana dashboard in examples/grafana/: it queries only what the agent exports, through the
data source variable, on a grid Grafana can lay out (its schema: examples/grafana/check_schema.py)."""

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from bloom_agent.metrics.textfile import TextfileExporter

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "bloom-agent.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("",)}


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def exported() -> set[str]:
    """The names of the samples bloom.prom can hold, from the exporter's own registry."""
    registry = asyncio.run(TextfileExporter(Path("/nonexistent"), SimpleNamespace(apps={})).registry())
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def queries(dashboard) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    found += [(a["name"], a["target"]["expr"]) for a in dashboard["annotations"]["list"] if "target" in a]
    found += [(v["name"], v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_every_query_names_only_metrics_the_agent_exports(dashboard):
    known = exported()
    used = set()
    for where, expr in queries(dashboard):
        names = set(re.findall(r"\bbloom_[a-z_]+\b", expr))
        assert names, f"{where}: {expr} reads no metric of the agent"
        assert names <= known, f"{where}: {sorted(names - known)} are not exported (known: {sorted(known)})"
        used |= names
    # what the dashboard is for: switches and rollbacks over time, current releases, switch durations
    assert {"bloom_deployments_total", "bloom_rollbacks_total", "bloom_app_release_info",
            "bloom_deployment_duration_seconds_bucket"} <= used


def test_every_panel_reads_the_prometheus_data_source_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == ref, panel["title"]
        assert all(t["datasource"] == ref for t in panel["targets"]), panel["title"]
    for name in ("instance", "app"):
        assert variables[name]["datasource"] == ref
    for variable in ("$instance", "$app", "$window", "${datasource}"):
        assert variable in json.dumps(dashboard["panels"]), f"{variable} is declared but never used"


def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping(dashboard):
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
    assert dashboard["uid"] == "bloom-agent" and isinstance(dashboard["schemaVersion"], int)


# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$instance": ".*", "$app": ".*", "$__interval": "1m", "$__range": "1d", "$window": "1d"}


def test_every_query_is_promql_that_prometheus_accepts(dashboard, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    rules = []
    for n, (where, expr) in enumerate(queries(dashboard)):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: a variable this test does not know: {expr}"
        # label_values(SELECTOR, LABEL) is Grafana's, for variables: the selector is Prometheus's
        expr = re.sub(r"^label_values\((.+), *[a-z_]+\)$", r"\1", expr)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "queries.rules.json"  # promtool reads YAML, of which JSON is a part
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
