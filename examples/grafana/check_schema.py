#!/usr/bin/python3
"""Check bloom-agent.json against Grafana's own dashboard schema: the TypeScript types of the
@grafana/schema package (the Dashboard model, and each panel plugin's options and field config),
compiled with tsc in strict mode, so that a misspelt or misplaced key is an excess-property error.

Needs npm and the npm registry (not part of the test suite, which has neither): run it by hand after
changing the dashboard.  Usage: examples/grafana/check_schema.py [GRAFANA_SCHEMA_VERSION]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = sys.argv[1] if len(sys.argv) > 1 else "11.6"
# The panel types the dashboard uses, and where their types live in the package; a stat panel has no
# field config of its own (its "custom" must stay empty).
PANELS = {"timeseries": "TimeSeries", "stat": "Stat", "table": "Table"}
NO_FIELD_CONFIG = {"stat"}
RAW = "@grafana/schema/dist/esm/raw/composable"


# The schema leaves a data source's own fields (a query's, an annotation's) to its plugin, and its
# enums are TypeScript enums that JSON strings cannot name: their string values stand in for them
# (Loose), and the Prometheus fields the dashboard uses are declared here, after Grafana's PromQuery.
PRELUDE = """
import type { AnnotationQuery, Dashboard, DataSourceRef, Panel } from '@grafana/schema';
type Loose<T> = T extends string ? `${T}` : T extends Array<infer U> ? Array<Loose<U>>
  : T extends object ? { [K in keyof T]: Loose<T[K]> } : T;
type PromQuery = { datasource?: DataSourceRef; refId: string; expr: string; legendFormat?: string; range?: boolean;
  instant?: boolean; format?: 'time_series' | 'table' | 'heatmap'; interval?: string; hide?: boolean };
type PromAnnotation = Omit<Loose<AnnotationQuery>, 'target'> & { target?: PromQuery; titleFormat?: string;
  textFormat?: string };
type Checked = Omit<Loose<Dashboard>, 'annotations' | 'panels'> & { annotations: { list: PromAnnotation[] };
  panels: Array<Omit<Loose<Panel>, 'targets'> & { targets: PromQuery[] }> };
"""


def typescript(dashboard: dict) -> str:
    lines = [PRELUDE]
    for kind, name in PANELS.items():
        field = "Record<string, never>" if kind in NO_FIELD_CONFIG else f"{name}FieldConfigOf"
        imported = f"Options as {name}Options" + ("" if kind in NO_FIELD_CONFIG else f", FieldConfig as {field}")
        lines.append(f"import type {{ {imported} }} from '{RAW}/{kind}/panelcfg/x/{name}PanelCfg_types.gen';")
        lines.append(f"type {name}FieldConfig = {field};")
    for panel in dashboard["panels"]:
        name = PANELS[panel["type"]]  # a panel type without its types here is an error too
        lines.append(f"const options{panel['id']} = {json.dumps(panel['options'])} satisfies Partial<Loose<{name}Options>>;")
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        lines.append(f"const custom{panel['id']} = {json.dumps(custom)} satisfies Partial<Loose<{name}FieldConfig>>;")
        lines.append(f"void options{panel['id']}; void custom{panel['id']};")
    lines.append(f"export const dashboard: Checked = {json.dumps(dashboard, indent=1)};")
    return "\n".join(lines) + "\n"


def main() -> int:
    dashboard = json.loads((HERE / "bloom-agent.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", f"@grafana/schema@{SCHEMA}",
                        "typescript@5"], cwd=work, check=True)
        (work / "dashboard.ts").write_text(typescript(dashboard))
        checked = subprocess.run(["npx", "tsc", "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
                                  "--moduleResolution", "node", "dashboard.ts"], cwd=work, capture_output=True,
                                 text=True)
        installed = json.loads((work / "node_modules/@grafana/schema/package.json").read_text())["version"]
    if checked.returncode != 0:
        print(checked.stdout + checked.stderr, file=sys.stderr)
        print(f"bloom-agent.json does not match @grafana/schema {installed}", file=sys.stderr)
        return 1
    print(f"bloom-agent.json matches @grafana/schema {installed} (Dashboard, and the options of "
          f"{len(dashboard['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
