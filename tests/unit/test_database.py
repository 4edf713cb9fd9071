"""Database safety with a real SQLite database and real migration commands, systemd faked: backups
before migrations, each way back (restore, migrate_down, skip), and the config that refuses nonsense."""

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from bloom_agent.config.apps import load_app
from bloom_agent.database.guard import DatabaseGuard
from bloom_agent.deploy.switcher import Journal, Switcher
from bloom_agent.errors import ConfigError
from bloom_agent.store.state import StateStore
from bloom_agent.systemd.unitfailure import no_journal
from bloom_agent.systemd.unitfiles import UnitPaths, UnitWriter
from fake_systemd import FakeJournal, FakeSystemd

USER = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")

# Version 2.0.0 adds a column; its migrate_down drops it again. A release with a file 'broken' fails.
MIGRATE = ('test ! -e broken || { echo "migration 7 of 9: syntax error near SELEC" >&2; exit 1; }; '
           'python3 -c "import sqlite3,os; c=sqlite3.connect(os.environ[\'BLOOM_DATABASE_URL\']); '
           'c.execute(\'ALTER TABLE items ADD COLUMN price INTEGER\'); c.commit()"')
MIGRATE_DOWN = ('test ! -e broken-down || exit 5; echo "down to $BLOOM_MIGRATE_TO" > "$BLOOM_RELEASE_DIR/../down.log"; '
                'python3 -c "import sqlite3,os; c=sqlite3.connect(os.environ[\'BLOOM_DATABASE_URL\']); '
                'c.execute(\'ALTER TABLE items DROP COLUMN price\'); c.commit()"')


def app_file(tmp_path, strategy="backup_only", extra=""):
    down = f"migrate_down = '''{MIGRATE_DOWN}'''\n" if strategy == "down_first" else ""
    text = (f'listen = ["127.0.0.1:8080"]\nexec = "bin/app"\nprobation_sec = 0.3\nuser = "{USER}"\n'
            f'releases_dir = "{tmp_path}/rel"\n{extra}\n[database]\nbackend = "sqlite"\nurl = "{tmp_path}/app.db"\n'
            f"migrate = '''{MIGRATE}'''\n{down}rollback_strategy = \"{strategy}\"\nmin_free_bytes = 0\n")
    (tmp_path / "web.toml").write_text(text)
    return load_app(tmp_path / "web.toml")


@pytest.fixture
def env(tmp_path):
    store = StateStore(tmp_path / "state.db")
    for v in ("1.0.0", "2.0.0"):
        store.add_release("web", v, v, "0" * 64, 1)
        (tmp_path / "rel" / v).mkdir(parents=True)
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO items (name) VALUES ('kept')")
    db.commit()
    db.close()
    units = UnitWriter(UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run"))
    systemd = FakeSystemd()
    FakeJournal.entries = []
    guard = DatabaseGuard(store, tmp_path / "state")
    switcher = Switcher(systemd, store, units, Journal(monitor=FakeJournal, tail=no_journal), guard)
    return tmp_path, store, systemd, switcher


def run(switcher, app, version, action="switch", during=None):
    dep = switcher.begin(app, action, version, "root")

    async def go():
        side = asyncio.ensure_future(during()) if during else None
        out = await switcher.run(dep)
        if side:
            await side
        return out

    return dep, asyncio.run(go())


def schema(tmp_path):
    db = sqlite3.connect(tmp_path / "app.db")
    try:
        return [r[1] for r in db.execute("PRAGMA table_info(items)")], db.execute("SELECT name FROM items").fetchall()
    finally:
        db.close()


def with_database(app, **changes):
    """The app with some [database] keys changed."""
    import dataclasses

    return dataclasses.replace(app, database=dataclasses.replace(app.database, **changes))


def first(tmp_path, store, switcher, app):
    # 1.0.0 serves already: as if deployed before the app had a [database] table.
    store.set_app_state("web", current="1.0.0", last_good="1.0.0")
    store.set_release_status("web", "1.0.0", "good")


def crash_new(systemd, unit="web@2.0.0.service"):
    async def later():
        while not systemd.started(unit):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        systemd.crash(unit)
    return later


def test_a_switch_backs_up_then_migrates_and_records_both(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0")
    assert out.outcome == "done", out.reason
    assert [s["step"] for s in store.steps(dep.id)][:3] == ["backing-up", "migrating", "starting"]
    assert schema(tmp_path)[0] == ["id", "name", "price"]
    (backup,) = store.backups("web")
    assert backup["deployment"] == dep.id and backup["version"] == "1.0.0" and backup["size"] > 0
    path = Path(backup["path"])
    assert path.parent == tmp_path / "state" / "backups" / "web" and path.name.endswith(".sqlite3")
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert store.migration_of(dep.id)["state"] == "applied"


def test_a_crash_in_probation_restores_the_backup_and_the_old_release_serves(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    before = schema(tmp_path)
    systemd.calls.clear()
    dep, out = run(switcher, app, "2.0.0", during=crash_new(systemd))
    assert (out.outcome, out.exit_code, out.serving) == ("rolled-back", 3, "1.0.0")
    assert schema(tmp_path) == before
    assert "restored backup 1 taken at" in out.reason and "writes since then are gone" in out.reason
    # NEW stops before the restore; OLD starts after it.
    calls = [c for c in systemd.calls if c[0] in ("start", "stop")]
    assert calls.index(("stop", "web@2.0.0.service")) < calls.index(("start", "web@1.0.0.service"))
    assert [s["step"] for s in store.steps(dep.id)][-3:] == ["rolling-back-database", "rolling-back", "rolled-back"]
    assert store.migration_of(dep.id)["state"] == "undone"


def test_a_failed_migration_restores_and_old_keeps_serving(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    (tmp_path / "rel" / "2.0.0" / "broken").touch()
    before = schema(tmp_path)
    systemd.unit("web@1.0.0.service").active_state = "active"
    dep, out = run(switcher, app, "2.0.0")
    assert (out.outcome, out.exit_code, out.serving) == ("failed", 3, "1.0.0")
    assert "migration failed" in out.reason and "syntax error near SELEC" in out.reason
    assert schema(tmp_path) == before
    assert not systemd.started("web@2.0.0.service")
    assert systemd.unit("web@1.0.0.service").active_state == "active"


def test_down_first_runs_migrate_down_in_the_newer_release_towards_the_older(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, "down_first")
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0", during=crash_new(systemd))
    assert out.outcome == "rolled-back"
    assert "migrations reverted by migrate_down to 1.0.0" in out.reason
    assert (tmp_path / "rel" / "down.log").read_text() == "down to 1.0.0\n"
    assert schema(tmp_path)[0] == ["id", "name"]


def test_down_first_falls_back_to_the_backup_when_migrate_down_fails(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, "down_first")
    first(tmp_path, store, switcher, app)
    (tmp_path / "rel" / "2.0.0" / "broken-down").touch()
    dep, out = run(switcher, app, "2.0.0", during=crash_new(systemd))
    assert out.outcome == "rolled-back"
    assert "migrate_down failed" in out.reason and "exited with status 5" in out.reason
    assert "restored backup" in out.reason
    assert schema(tmp_path)[0] == ["id", "name"]


def test_skip_leaves_the_database_alone(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, "skip")
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0", during=crash_new(systemd))
    assert out.outcome == "rolled-back" and "rollback_strategy = skip" in out.reason
    assert schema(tmp_path)[0] == ["id", "name", "price"]


def test_a_backup_that_cannot_be_taken_refuses_the_switch_and_changes_nothing(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, extra="")
    first(tmp_path, store, switcher, app)
    (tmp_path / "app.db").rename(tmp_path / "elsewhere.db")  # the database is not where the file says
    dep, out = run(switcher, app, "2.0.0")
    assert (out.outcome, out.exit_code, out.serving) == ("failed", 3, "1.0.0")
    assert "does not exist" in out.reason and "the switch is refused, nothing changed" in out.reason
    assert store.migration_of(dep.id) is None and store.backups("web") == []
    assert not systemd.started("web@2.0.0.service")


def test_a_backup_directory_short_of_space_says_so(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    app = with_database(app, min_free_bytes=1 << 60)
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0")
    assert out.outcome == "failed"
    assert "less than database.min_free_bytes" in out.reason and "no backup was taken" in out.reason
    assert list((tmp_path / "state" / "backups" / "web").iterdir()) == []


def test_a_manual_rollback_undoes_the_migrations_of_the_release_it_leaves(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    _, out = run(switcher, app, "2.0.0")
    assert out.outcome == "done" and schema(tmp_path)[0] == ["id", "name", "price"]
    dep, out = run(switcher, app, "1.0.0", action="rollback")
    assert out.outcome == "done", out.reason
    assert schema(tmp_path)[0] == ["id", "name"]
    assert "restored backup 1" in out.reason
    assert [s["step"] for s in store.steps(dep.id)][0] == "undoing-migrations"


def test_retention_keeps_the_backup_a_rollback_needs(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, extra="")
    app = with_database(app, keep_backups=1, pending="exit 0")
    first(tmp_path, store, switcher, app)
    guard = switcher.database
    olds = [guard_backup(guard, app, i) for i in range(3)]
    _, out = run(switcher, app, "2.0.0")
    assert out.outcome == "done"
    kept = store.backups("web")
    assert len(kept) == 1 and kept[0]["deployment"] is not None  # the newest: the one rolling 2.0.0 back needs
    assert not any(Path(b["path"]).exists() for b in olds)


def guard_backup(guard, app, i):
    return asyncio.run(guard.take_backup(app, None, "1.0.0", f"manual{i}"))


def test_pending_that_says_no_skips_backup_and_migration(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    app = with_database(app, pending="exit 1")
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0")
    assert out.outcome == "done" and store.backups("web") == [] and store.migration_of(dep.id) is None
    assert schema(tmp_path)[0] == ["id", "name"]


def test_a_failing_pre_switch_command_refuses_the_switch(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path, extra="pre_switch = ['echo preparing; echo cannot reach the cache >&2; exit 3']")
    first(tmp_path, store, switcher, app)
    dep, out = run(switcher, app, "2.0.0")
    assert out.outcome == "failed"
    assert "exited with status 3" in out.reason and "cannot reach the cache" in out.reason
    assert store.backups("web") == [] and not systemd.started("web@2.0.0.service")


@pytest.mark.parametrize("database, message", [
    ('backend = "mysql"\nurl = "x"', "must be one of postgresql, sqlite"),
    ('backend = "sqlite"\nurl = "app.db"', "absolute path"),
    ('backend = "postgresql"\nurl = "postgresql://shop:secret@localhost/shop"', "contains a password"),
    ('backend = "postgresql"\nurl = "postgresql:///shop"\nmigrate = "x"\nrollback_strategy = "down_first"',
     "runs database.migrate_down, which is not set"),
    ('backend = "sqlite"\nurl = "/x.db"\nmigrate = "x"\nkeep_backup = 3', "unknown key 'database.keep_backup'"),
    ('backend = "sqlite"\nurl = "/x.db"\nrollback_strategy = "yolo"', "must be one of down_first, backup_only, skip"),
])
def test_a_database_table_that_makes_no_sense_is_refused_at_load(tmp_path, database, message):
    (tmp_path / "web.toml").write_text(f'listen = ["127.0.0.1:8080"]\nexec = "bin/app"\nuser = "{USER}"\n'
                                       f"[database]\n{database}\n")
    with pytest.raises(ConfigError, match=message):
        load_app(tmp_path / "web.toml")


def test_migrations_need_the_apps_user(tmp_path):
    (tmp_path / "web.toml").write_text('listen = ["127.0.0.1:8080"]\nexec = "bin/app"\n'
                                       '[database]\nbackend = "sqlite"\nurl = "/x.db"\nmigrate = "true"\n')
    with pytest.raises(ConfigError, match="run as the app's user, and 'user' is not set"):
        load_app(tmp_path / "web.toml")


def resume(switcher, store, app, dep_id):
    row = store.deployment(dep_id)
    dep = switcher.resumed(app, row)
    return dep, asyncio.run(switcher.run(dep))


def test_an_agent_killed_during_the_migration_undoes_it_on_its_next_start(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    before = schema(tmp_path)
    # What a killed agent leaves: the step and the backup recorded, the migration half done.
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    backup = asyncio.run(switcher.database.take_backup(app, dep.id, "1.0.0", "before-2.0.0"))
    store.begin_migration("web", dep.id, "2.0.0", "1.0.0", backup["id"])
    store.record_step(dep.id, "migrating")
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("ALTER TABLE items ADD COLUMN price INTEGER")
    db.commit()
    db.close()
    dep, out = resume(switcher, store, app, dep.id)
    assert (out.outcome, out.serving) == ("failed", "1.0.0")
    assert out.reason.startswith("the agent restarted during step migrating; restored backup")
    assert schema(tmp_path) == before


def test_an_agent_killed_during_a_backup_refuses_the_switch_and_sweeps_the_partial_file(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    store.record_step(dep.id, "backing-up")
    shelf = switcher.database.shelf(app)
    shelf.directory.mkdir(parents=True)
    partial = shelf.partial("web", "before-2.0.0", ".sqlite3")
    partial.write_bytes(b"half a backup")
    dep, out = resume(switcher, store, app, dep.id)
    assert (out.outcome, out.serving) == ("failed", "1.0.0")
    assert "the agent restarted during step backing-up" in out.reason
    assert store.migration_of(dep.id) is None and schema(tmp_path)[0] == ["id", "name"]
    asyncio.run(switcher.database.take_backup(app, None, "1.0.0", "manual"))  # the next backup sweeps it
    assert not partial.exists()


def test_an_agent_killed_during_the_restore_restores_again(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    first(tmp_path, store, switcher, app)
    before = schema(tmp_path)
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    backup = asyncio.run(switcher.database.take_backup(app, dep.id, "1.0.0", "before-2.0.0"))
    store.begin_migration("web", dep.id, "2.0.0", "1.0.0", backup["id"])
    asyncio.run(switcher.database.migrate(app, store.migration_of(dep.id)["id"], "2.0.0", tmp_path / "rel" / "2.0.0"))
    store.set_app_state("web", current="2.0.0")
    store.record_step(dep.id, "rolling-back-database")
    dep, out = resume(switcher, store, app, dep.id)
    assert (out.outcome, out.serving) == ("rolled-back", "1.0.0")
    assert schema(tmp_path) == before
    assert store.migration_of(dep.id)["state"] == "undone"


def test_a_migration_out_of_time_is_killed_and_undone(env):
    tmp_path, store, systemd, switcher = env
    app = app_file(tmp_path)
    app = with_database(app, migrate=MIGRATE + "; echo still going; sleep 30", migrate_timeout_sec=0.5)
    first(tmp_path, store, switcher, app)
    before = schema(tmp_path)
    dep, out = run(switcher, app, "2.0.0")
    assert (out.outcome, out.serving) == ("failed", "1.0.0")
    assert "did not finish within 0.5 s: still going" in out.reason and "restored backup" in out.reason
    assert schema(tmp_path) == before
    assert store.migration_of(dep.id)["state"] == "undone"


def test_a_sqlite_file_name_with_uri_characters_is_backed_up_and_restored(tmp_path):
    from bloom_agent.database.backends import SqliteBackend

    odd = tmp_path / "app?mode=rw#1.db"
    db = sqlite3.connect(odd)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    backend = SqliteBackend(type("Db", (), {"url": str(odd)})())
    asyncio.run(backend.dump(tmp_path / "copy.sqlite3", 10))
    digest = asyncio.run(backend.schema_digest(10))
    db.execute("DROP TABLE t")
    db.commit()
    db.close()
    asyncio.run(backend.restore(tmp_path / "copy.sqlite3", 10))
    assert asyncio.run(backend.schema_digest(10)) == digest
