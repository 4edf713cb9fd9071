"""The package's rooms and the one-way doors between them (docs/architecture.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "bloom_agent"

# Which rooms each room may import from. The CLI reaches the agent only through the control client;
# control, systemd and store know no policy; config is data; errors imports nothing of ours.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "store": {"errors", "config"},
    "systemd": {"errors", "config"},
    "watch": {"errors", "config", "systemd"},
    "database": {"errors", "config", "store", "watch"},
    "deploy": {"errors", "config", "store", "systemd", "watch", "database", "control.auth"},
    "control": {"errors"},
    "metrics": {"errors", "config", "store", "systemd", "watch", "deploy"},
    "daemon": {"errors", "config", "store", "systemd", "watch", "database", "deploy", "control", "metrics"},
    "cli": {"errors", "control.client", "control.protocol"},
}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bloom_agent"):
            found |= {f"{node.module}.{a.name}" for a in node.names}  # a.name: a module or a name in one
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bloom_agent")}
    return found


def test_every_import_goes_through_an_allowed_door():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = room("bloom_agent." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own in ("", "__init__"):
            continue
        for module in imports_of(path):
            target = room(module)
            if target in (own, "__version__", ""):
                continue
            doors = ALLOWED[own]
            if target not in doors and ".".join(module.split(".")[1:3]) not in doors:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert wrong == []


def test_no_module_is_left_outside_a_room():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "errors.py"]
