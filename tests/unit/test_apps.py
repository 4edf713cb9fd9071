from pathlib import Path

import pytest

from bloom_agent.config import apps
from bloom_agent.errors import ConfigError
from bloom_agent.systemd import unitfiles


def write(tmp_path, text, name="web.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = 'listen = ["127.0.0.1:8080", "[::]:8443", "/run/web/http.sock"]\nexec = "bin/server --flag"\n'


def test_minimal_app_with_defaults(tmp_path):
    app = apps.load_app(write(tmp_path, MINIMAL))
    assert app.name == "web" and app.listen == ("127.0.0.1:8080", "[::]:8443", "/run/web/http.sock")
    assert app.argv == ["bin/server", "--flag"]
    assert (app.notify, app.probation_sec, app.keep_releases, app.sandbox) == (True, 30.0, 5, True)
    assert app.releases_dir == Path("/var/lib/bloom/releases/web")


@pytest.mark.parametrize("text, message", [
    ('exec = "x"\n', "missing required key 'listen'"),
    ('listen = ["127.0.0.1:80"]\n', "missing required key 'exec'"),
    ('listen = []\nexec = "x"\n', "key 'listen': must list at least one address"),
    ('listen = ["localhost:80"]\nexec = "x"\n', "'localhost' is not an IP address"),
    ('listen = ["127.0.0.1:99999"]\nexec = "x"\n', 'expected "HOST:PORT"'),
    ('listen = ["::1:80"]\nexec = "x"\n', "write IPv6 addresses in brackets"),
    ('listen = "127.0.0.1:80"\nexec = "x"\n', "key 'listen': must be a list"),
    ('listen = ["127.0.0.1:80"]\nexec = "x \'unclosed"\n', "cannot be parsed as a command line"),
    ('listen = ["127.0.0.1:80"]\nexec = "../bin/x"\n', "must not contain '..'"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nprobation_sec = -1\n', "key 'probation_sec': must be 0 or more"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nprobation_sec = "30s"\n', "key 'probation_sec': must be a number, got string '30s'"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nuser = "Root Admin"\n', "is not a valid user or group name"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nenvironment = { "1BAD" = "x" }\n', "not a valid environment variable name"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nenvironment = { A = 1 }\n', "value of 'A' must be a string"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nkeep_releases = 0\n', "must be greater than 0"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nprobation = 3\n', "unknown key 'probation'"),
    # what would inject lines or change meaning in a unit file is refused
    ('listen = ["127.0.0.1:80"]\nexec = "x --a\\nExecStartPre=+/bin/sh"\n', "contains a control character ('\\n')"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nenvironment = { A = "1\\nB=2" }\n', "value of 'A': '1\\nB=2' contains a control"),
    ('listen = ["/run/web/a b.sock"]\nexec = "x"\n', "' ' is not allowed in a path"),
    ('listen = ["/run/web/%i.sock"]\nexec = "x"\n', "'%' is not allowed in a path"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nread_write_paths = ["/srv/a /etc"]\n', "' ' is not allowed in a path"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nreleases_dir = "/srv/$HOME"\n', "'$' is not allowed in a path"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nreleases_dir = "srv"\n', "'srv' is not an absolute path"),
    # the Unix socket's owner and mode
    ('listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_mode = "660"\n', None),
    ('listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_mode = "0999"\n', "'0999' is not a file mode: write three octal"),
    ('listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_mode = "04777"\n', "'04777' is not a file mode"),
    ('listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_mode = 0o660\n', "key 'socket_mode': must be a string, got integer 432"),
    ('listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_user = "web\\nSocketMode=0777"\n', "is not a valid user or group"),
    ('listen = ["127.0.0.1:80"]\nexec = "x"\nsocket_group = "www-data"\n',
     "key 'socket_group' applies to Unix socket addresses, and listen has none"),
])
def test_bad_app_files_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    if message is None:  # the accepted neighbour of the refusals around it
        apps.load_app(path)
        return
    with pytest.raises(ConfigError) as info:
        apps.load_app(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["Web.toml", "we b.toml", "a@b.toml", "x.y.toml", "-web.toml"])
def test_bad_app_names(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid app name"):
        apps.load_app(write(tmp_path, MINIMAL, name=name))


def test_one_broken_file_does_not_hide_the_others(tmp_path):
    write(tmp_path, MINIMAL, "good.toml")
    write(tmp_path, "listen = 3\n", "bad.toml")
    loaded, errors = apps.load_apps(tmp_path)
    assert list(loaded) == ["good"]
    assert list(errors) == [str(tmp_path / "bad.toml")]


def test_rendered_units(tmp_path):
    app = apps.load_app(write(tmp_path, MINIMAL + 'watchdog_sec = 2.5\nenvironment = { GREETING = "50% off $today" }\n'
                                        'user = "www-data"\n'))
    socket = unitfiles.render_socket(app)
    assert "ListenStream=127.0.0.1:8080\nListenStream=[::]:8443\nListenStream=/run/web/http.sock\n" in socket
    service = unitfiles.render_service(app)
    assert "Sockets=web.socket\n" in service and "Type=notify\n" in service
    assert 'ExecStart="/var/lib/bloom/releases/web/%i/bin/server" "--flag"\n' in service
    assert "WorkingDirectory=/var/lib/bloom/releases/web/%i\n" in service
    assert "WatchdogSec=2500ms\n" in service
    assert 'Environment="GREETING=50%% off $today"\n' in service
    assert "User=www-data\n" in service and "DynamicUser" not in service
    assert "ProtectSystem=strict\n" in service


def test_the_socket_names_its_descriptors_binds_freely_and_sets_the_unix_sockets_owner_and_mode(tmp_path):
    socket = unitfiles.render_socket(apps.load_app(write(tmp_path, MINIMAL)))
    assert {"FileDescriptorName=web", "FreeBind=yes", "SocketMode=0666"} <= set(socket.splitlines())
    assert "SocketUser" not in socket and "SocketGroup" not in socket
    app = apps.load_app(write(tmp_path, MINIMAL + 'socket_user = "www-data"\nsocket_group = "bloom"\n'
                                                  'socket_mode = "0660"\n'))
    assert "SocketMode=0660\nSocketUser=www-data\nSocketGroup=bloom\n" in unitfiles.render_socket(app)
    # IP_FREEBIND means nothing to a Unix socket, and systemd warns when it is asked for one
    only_unix = apps.load_app(write(tmp_path, 'listen = ["/run/web/a.sock"]\nexec = "x"\n'))
    assert "FreeBind" not in unitfiles.render_socket(only_unix)


def test_a_socket_owner_the_host_does_not_have_is_warned_about(tmp_path):
    app = apps.load_app(write(tmp_path, 'listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_user = "no-such-user-x"\n'
                                        'socket_group = "root"\n'))
    assert apps.socket_owner_warnings(app) == [
        f"{app.path}: socket_user 'no-such-user-x' does not exist on this host; the socket will not start until it does"]
    shared = apps.load_app(write(tmp_path, 'listen = ["/run/web/a.sock"]\nexec = "x"\nsocket_group = "nogroup"\n'))
    assert "socket_group 'nogroup' is shared by unrelated programs" in apps.socket_owner_warnings(shared)[0]


def test_log_rate_limit(tmp_path):
    unset = unitfiles.render_service(apps.load_app(write(tmp_path, MINIMAL)))
    assert "LogRateLimit" not in unset  # journald's own limits
    off = apps.load_app(write(tmp_path, MINIMAL + "log_rate_limit_interval_sec = 0\n"))
    assert (off.log_rate_limit_interval_sec, off.log_rate_limit_burst) == (0, None)
    assert "LogRateLimitIntervalSec=0s\n" in unitfiles.render_service(off)
    both = unitfiles.render_service(apps.load_app(write(
        tmp_path, MINIMAL + "log_rate_limit_interval_sec = 2.5\nlog_rate_limit_burst = 50000\n")))
    assert "LogRateLimitIntervalSec=2500ms\nLogRateLimitBurst=50000\n" in both
    with pytest.raises(ConfigError, match="log_rate_limit_burst"):
        apps.load_app(write(tmp_path, MINIMAL + "log_rate_limit_burst = -1\n"))


def test_sandbox_opt_out_and_no_notify(tmp_path):
    app = apps.load_app(write(tmp_path, MINIMAL + "sandbox = false\nnotify = false\n"))
    service = unitfiles.render_service(app)
    assert "ProtectSystem" not in service and "Type=exec\n" in service and "DynamicUser=yes\n" in service


def test_socket_pointer_layers(tmp_path):
    app = apps.load_app(write(tmp_path, MINIMAL))
    writer = unitfiles.UnitWriter(unitfiles.UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run"))
    assert writer.pointed_instance(app) is None
    assert writer.point_socket(app, "1.0.0", trial=False)
    assert writer.point_socket(app, "2.0.0", trial=True)
    assert writer.pointed_instance(app) == "2.0.0"  # /run wins while on trial
    assert not writer.point_socket(app, "2.0.0", trial=True), "unchanged content is not rewritten"
    writer.dropin(app, "run").unlink()  # what a reboot does to /run
    assert writer.pointed_instance(app) == "1.0.0"
    assert writer.write_app_units(app) == (True, True) and writer.write_app_units(app) == (False, False)


def _not_rendered(*args, **kwargs):
    raise AssertionError("rendered although the unit was current")


def test_units_are_rendered_only_when_their_inputs_or_text_changed(tmp_path, monkeypatch):
    """A start-up with nothing changed reads the stamps and renders nothing (so jinja2 is not loaded);
    a changed setting or template, or a hand edit, is rendered and written again."""
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(unitfiles.SOURCE_TEMPLATES, templates)
    (templates / "old").mkdir()  # an operator's leftovers beside the templates
    writer = unitfiles.UnitWriter(unitfiles.UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run",
                                                      templates=(templates,)))
    app = apps.load_app(write(tmp_path, MINIMAL))
    socket, service = tmp_path / "etc" / "web.socket", tmp_path / "etc" / "web@.service"
    assert writer.write_app_units(app) == (True, True)
    rendered = service.read_text()
    assert rendered.startswith(unitfiles.render_service(app, (templates,)))
    assert rendered.splitlines()[-1].startswith(unitfiles.STAMP)

    with monkeypatch.context() as m:
        m.setattr(unitfiles, "render_socket", _not_rendered)
        m.setattr(unitfiles, "render_service", _not_rendered)
        assert writer.write_app_units(app) == (False, False)

    service.write_text(rendered.replace("Restart=", "Restart=no\n#Restart="))  # a hand edit, stamp kept
    assert writer.write_app_units(app) == (False, True) and service.read_text() == rendered

    changed = apps.load_app(write(tmp_path, MINIMAL + "stop_timeout_sec = 7\n"))
    assert writer.write_app_units(changed) == (False, True)
    assert "TimeoutStopSec=7s" in service.read_text()

    stamp = socket.read_text().splitlines()[-1]
    (templates / "app.socket.j2").write_text((templates / "app.socket.j2").read_text() + "# new line\n")
    assert writer.write_app_units(changed) == (True, False)
    assert socket.read_text().splitlines()[-2:] != ["# new line", stamp]


def test_a_unit_written_before_stamps_gets_one_without_counting_as_changed(tmp_path):
    """After an upgrade the units are the same to systemd: no daemon-reload, no 'addresses changed'."""
    app = apps.load_app(write(tmp_path, MINIMAL))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "web.socket").write_text(unitfiles.render_socket(app))
    (etc / "web@.service").write_text(unitfiles.render_service(app))
    writer = unitfiles.UnitWriter(unitfiles.UnitPaths(etc=etc, run=tmp_path / "run"))
    assert writer.write_app_units(app) == (False, False)
    assert (etc / "web.socket").read_text().splitlines()[-1].startswith(unitfiles.STAMP)


@pytest.mark.parametrize("a, b, clash", [
    ("127.0.0.1:80", "127.0.0.1:80", True),
    ("127.0.0.1:80", "127.0.0.2:80", False),
    ("0.0.0.0:80", "127.0.0.1:80", True),
    ("[::]:80", "127.0.0.1:80", True),
    ("[::1]:80", "127.0.0.1:80", False),
    ("127.0.0.1:80", "127.0.0.1:81", False),
    ("/run/a.sock", "/run/a.sock", True),
    ("/run/a.sock", "127.0.0.1:80", False),
])
def test_addresses_clash(a, b, clash):
    assert apps.addresses_clash(a, b) is clash
    assert apps.addresses_clash(b, a) is clash


def test_environment_files_and_credentials_are_rendered_and_their_files_checked(tmp_path):
    from bloom_agent.config.apps import app_warnings, load_app
    from bloom_agent.systemd.unitfiles import UnitPaths, UnitWriter

    secret = tmp_path / "web.env"
    secret.write_text("TOKEN=hunter2\n")
    secret.chmod(0o644)
    (tmp_path / "web.toml").write_text(
        f'listen = ["127.0.0.1:8080"]\nexec = "bin/app"\nenvironment_files = ["{secret}"]\n'
        f'credentials = {{ db_password = "{tmp_path}/db.secret" }}\n')
    app = load_app(tmp_path / "web.toml")
    writer = UnitWriter(UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run"))
    writer.write_app_units(app)
    unit = (tmp_path / "etc" / "web@.service").read_text()
    assert f"EnvironmentFile={secret}\n" in unit and f"LoadCredential=db_password:{tmp_path}/db.secret\n" in unit
    assert "hunter2" not in unit
    warnings = app_warnings(app)
    assert any("is readable by others (mode 0644)" in w for w in warnings), warnings
    assert any("db.secret: No such file or directory" in w for w in warnings), warnings


def test_a_credential_with_a_bad_name_or_path_is_refused(tmp_path):
    import pytest

    from bloom_agent.config.apps import load_app
    from bloom_agent.errors import ConfigError

    for table, message in (('{ "a b" = "/x" }', "not a valid credential name"),
                           ('{ db = "x" }', "is not an absolute path"), ('{ db = 3 }', "must be a path string")):
        (tmp_path / "web.toml").write_text(f'listen = ["127.0.0.1:8080"]\nexec = "bin/app"\ncredentials = {table}\n')
        with pytest.raises(ConfigError, match=message):
            load_app(tmp_path / "web.toml")
