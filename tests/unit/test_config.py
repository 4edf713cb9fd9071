from pathlib import Path

import pytest

from bloom_agent.config import agent as config
from bloom_agent.config.paths import Paths
from bloom_agent.errors import EXIT_CONFIG, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_missing_file_means_defaults(tmp_path):
    cfg = config.load(tmp_path / "absent.toml")
    assert cfg.from_file is False
    assert cfg.state_dir == Path("/var/lib/bloom")
    assert cfg.control_socket == Path("/run/bloom/control.sock")
    assert cfg.control_group == "bloom"
    assert Paths.for_host(cfg).state_db == Path("/var/lib/bloom/state.db")
    under = Paths.for_host(cfg, root=tmp_path)
    assert (under.state_db, under.apps_dir, under.unit_dir, under.boot_id_file) == (
        tmp_path / "var/lib/bloom/state.db", tmp_path / "etc/bloom/apps", tmp_path / "etc/systemd/system",
        tmp_path / "proc/sys/kernel/random/boot_id")


def test_shipped_config_is_valid_and_all_defaults():
    shipped = Path(__file__).resolve().parents[2] / "conf" / "agent.toml"
    cfg = config.load(shipped)
    assert cfg.from_file is True
    assert (cfg.state_dir, cfg.control_group, cfg.log_level) == (Path("/var/lib/bloom"), "bloom", "info")


def test_values_are_read(tmp_path):
    cfg = config.load(write(tmp_path, '[agent]\nstate_dir = "/srv/bloom"\nmax_request_bytes = 4096\nlog_level = "debug"\n'))
    assert cfg.state_dir == Path("/srv/bloom")
    assert cfg.max_request_bytes == 4096
    assert cfg.log_level == "debug"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[agent]\nmax_request_bytes = \"big\"\n", "key 'agent.max_request_bytes': must be an integer, got string 'big'"),
        ("[agent]\nmax_request_bytes = 0\n", "key 'agent.max_request_bytes': must be greater than 0, got 0"),
        ("[agent]\nmax_request_bytes = true\n", "key 'agent.max_request_bytes': must be an integer, got boolean True"),
        ("[agent]\nstate_dir = \"relative/path\"\n", "key 'agent.state_dir': must be an absolute path"),
        ("[agent]\nlog_level = \"loud\"\n", "key 'agent.log_level': must be one of debug, info, warning, error; got 'loud'"),
        ("[agent]\nsate_dir = \"/x\"\n", "unknown key 'agent.sate_dir'"),
        ("[agnet]\n", "unknown table or key 'agnet'"),
        ("agent = 3\n", "[agent]: must be a table"),
        ("[agent\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert info.value.exit_code == EXIT_CONFIG == 78


def test_unknown_key_hint_lists_known_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, "[agent]\nstatedir = 1\n"))
    assert "state_dir" in info.value.hint


def test_each_setting_is_declared_once_and_the_reference_is_made_from_it():
    import dataclasses

    from bloom_agent.config.agent import AGENT_FIELDS, API_FIELDS, AgentConfig, ApiConfig
    from bloom_agent.config.apps import APP_FIELDS, AppConfig
    from bloom_agent.config.reference import update

    assert {f.name for f in dataclasses.fields(AgentConfig)} == {f.name for f in AGENT_FIELDS} | {"path", "from_file",
                                                                                                  "api"}
    assert [f.name for f in dataclasses.fields(ApiConfig)] == [f.name for f in API_FIELDS]
    assert {f.name for f in dataclasses.fields(AppConfig)} == (
        {f.name for f in APP_FIELDS} - {"health_check"} | {"name", "path", "health_checks"})
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert update(doc.read_text()) == doc.read_text(), "out of date: run scripts/config_reference.py"


def test_the_manual_page_of_the_files_is_made_from_the_same_declarations():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    checked = subprocess.run([sys.executable, str(repo / "scripts/config_reference.py"), "--check"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    page = (repo / "packaging/debian/bloom-agent.toml.5" if (repo / "packaging").is_dir()
            else repo / "debian/bloom-agent.toml.5").read_text()  # the package's build tree
    for name in ("state_dir", "probation_sec", "rollback_strategy", "environment_files", "allowed_ips"):
        assert f"\n.B {name}\n" in page


def test_the_shipped_bash_completion_is_what_click_makes_now():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    made = subprocess.run([sys.executable, "-m", "bloom_agent.cli"], capture_output=True, text=True,
                          env={**os.environ, "_BLOOMCTL_COMPLETE": "bash_source",
                               "PYTHONPATH": str(repo / "agent")}).stdout
    shipped = (repo / "conf/completion/bloomctl").read_text()
    assert shipped.split("\n", 1)[1] == made, "regenerate conf/completion/bloomctl (see its first line)"
