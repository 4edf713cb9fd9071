"""Database safety on real systemd with PostgreSQL 15 from Debian: a backup before each migration, and
every way back (restore, migrate_down, skip) leaving data and schema as they were, also when the agent
is killed during a backup, a migration or a restore.

The app 'shop' (port 8083) runs as the system user 'shop', which owns the database 'shop' and reaches it
by peer authentication; its releases carry plain SQL migrations applied with psql. Tests run in order.
"""

import json
from pathlib import Path

import pytest

from test_agent_package import show, status_json, wait_until
from test_switch import agent_failpoints, make_release, ready_timeout

pytestmark = pytest.mark.usefixtures("installed")

PSQL = "psql -X -q -v ON_ERROR_STOP=1 -d \"$BLOOM_DATABASE_URL\""
SHOP_FILE = """\
listen = ["127.0.0.1:8083"]
exec = "bin/sampleapp"
user = "shop"
probation_sec = 3
ready_timeout_sec = {ready}
stop_timeout_sec = 10
keep_releases = 30
{top}
[database]
backend = "postgresql"
url = "{url}"
migrate = '{psql} -f migrations/up.sql'
migrate_down = '{psql} -f migrations/down.sql'
rollback_strategy = "{strategy}"
keep_backups = {keep}
min_free_bytes = {free}
{extra}
"""

FIRST_UP = """CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO items (name) VALUES ('apple'), ('pear');"""
# The change each later release makes, and how its migrate_down takes it back.
CHANGE_UP = """ALTER TABLE items ADD COLUMN price integer NOT NULL DEFAULT 0;
CREATE TABLE orders (id serial PRIMARY KEY, item integer REFERENCES items (id));
UPDATE items SET name = upper(name);"""
CHANGE_DOWN = """DROP TABLE orders;
ALTER TABLE items DROP COLUMN price;
UPDATE items SET name = lower(name);"""


class Shop:
    name, port = "shop", 8083

    def __init__(self, machine, workdir: Path) -> None:
        self.machine, self.host, self.workdir = machine, machine.host, workdir
        self.host.check_output(
            "cd / && systemctl start postgresql && (id shop >/dev/null 2>&1 || useradd --system --home-dir "
            "/nonexistent --shell /usr/sbin/nologin shop) && runuser -u postgres -- psql -X -q "
            "-c 'DROP DATABASE IF EXISTS shop' -c 'DROP ROLE IF EXISTS shop' -c 'CREATE ROLE shop LOGIN' "
            "&& runuser -u postgres -- createdb -O shop shop && mkdir -p /etc/bloom/apps /root/releases")
        self.configure()

    def configure(self, strategy: str = "backup_only", keep: int = 10, free: int = 0, url: str = "postgresql:///shop",
                  extra: str = "", top: str = "") -> None:
        text = SHOP_FILE.format(ready=ready_timeout(self.machine, 5), url=url, psql=PSQL, strategy=strategy,
                                keep=keep, free=free, extra=extra, top=top)
        self.host.check_output(f"cat > /etc/bloom/apps/shop.toml <<'EOF'\n{text}EOF")
        out = self.host.run("bloomctl reload")
        assert out.rc == 0 and not out.stderr.strip(), out.stderr

    def deploy(self, version: str, up: str = CHANGE_UP, down: str = CHANGE_DOWN, faults: dict | None = None):
        built = make_release(version, self.workdir, faults=faults,
                             files={"migrations/up.sql": up.encode(), "migrations/down.sql": down.encode()})
        return self.host.run("bloomctl deploy shop " + self.put(built, version))

    def put(self, built: Path, version: str) -> str:
        remote = f"/root/releases/shop-{version}.tar.gz"
        self.machine.put(built, remote)
        return remote

    def sql(self, query: str) -> str:
        return self.host.check_output(f"runuser -u shop -- psql -X -At -d shop -c \"{query}\"")

    def snapshot(self) -> tuple[str, str]:
        """The schema (every column of every table) and the rows: what a rollback must give back."""
        columns = self.sql("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'public' ORDER BY 1, 2")
        return columns, self.sql("SELECT * FROM items ORDER BY id")

    def serving(self) -> str:
        return self.host.check_output(f"curl -sS --max-time 5 http://127.0.0.1:{self.port}/")

    def json(self, command: str):
        return json.loads(self.host.check_output(f"bloomctl {command} --json"))


@pytest.fixture(scope="module")
def shop(machine, tmp_path_factory):
    shop = Shop(machine, tmp_path_factory.mktemp("shop"))
    out = shop.deploy("1.0.0", up=FIRST_UP, down="DROP TABLE items;")
    assert out.rc == 0, out.stderr
    shop.sql("INSERT INTO items (name) VALUES ('written by 1.0.0')")
    return shop


def test_the_first_migration_ran_after_a_backup(shop):
    assert shop.snapshot()[1].splitlines() == ["1|apple", "2|pear", "3|written by 1.0.0"]
    (migration,) = shop.json("migrations shop")
    assert (migration["version"], migration["state"], migration["from"]) == ("1.0.0", "applied", None)
    (backup,) = shop.json("backup list shop")
    assert migration["backup"] == backup["id"] and backup["size"] > 0
    assert shop.host.check_output(f"stat -c %a {Path(backup['path']).parent}").strip() == "700"
    history = shop.json("history shop")
    assert history[0]["backup"] == backup["id"] and history[0]["migration"] == "applied"


def test_a_migration_then_a_crash_in_probation_gives_back_data_and_schema(shop):
    before = shop.snapshot()
    out = shop.deploy("2.0.0", faults={"crash_after_sec": 1})
    assert out.rc == 3, out.stdout + out.stderr
    assert "restored backup" in out.stderr and "writes since then are gone" in out.stderr
    assert shop.snapshot() == before
    assert shop.serving() == "sampleapp 1.0.0"
    assert shop.json("migrations shop")[0]["state"] == "undone"


def test_a_failed_migration_changes_nothing_and_the_old_release_serves(shop):
    before = shop.snapshot()
    out = shop.deploy("2.1.0", up="CREATE TABLE half_done (x int);\nSELEC 1;")
    assert out.rc == 3, out.stdout + out.stderr
    assert "migration failed" in out.stderr and 'syntax error at or near "SELEC"' in out.stderr
    assert shop.snapshot() == before
    assert "half_done" not in shop.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert shop.serving() == "sampleapp 1.0.0"
    log = shop.host.check_output("journalctl -u bloom-agent --no-pager -o cat -n 40")
    assert "shop: migration of 2.1.0 failed after" in log


def test_down_first_reverts_with_migrate_down(shop):
    shop.configure(strategy="down_first")
    before = shop.snapshot()
    out = shop.deploy("2.2.0", faults={"crash_after_sec": 1})
    assert out.rc == 3, out.stdout + out.stderr
    assert "migrations reverted by migrate_down to 1.0.0" in out.stderr
    assert shop.snapshot() == before
    assert shop.serving() == "sampleapp 1.0.0"


def test_down_first_restores_the_backup_when_migrate_down_fails(shop):
    before = shop.snapshot()
    out = shop.deploy("2.3.0", down="DROP TABLE no_such_table;", faults={"crash_after_sec": 1})
    assert out.rc == 3, out.stdout + out.stderr
    assert "migrate_down failed" in out.stderr and "restored backup" in out.stderr
    assert shop.snapshot() == before
    shop.configure()


def test_skip_leaves_the_database_alone_and_a_manual_restore_brings_it_back(shop):
    shop.configure(strategy="skip")
    before = shop.snapshot()
    out = shop.deploy("2.4.0", faults={"crash_after_sec": 1})
    assert out.rc == 3, out.stdout + out.stderr
    assert "rollback_strategy = skip" in out.stderr
    assert "price" in shop.snapshot()[0]  # the new schema stays, under the old release
    backup = shop.json("history shop")[0]["backup"]
    out = shop.host.run(f"bloomctl backup restore shop {backup} --yes")
    assert out.rc == 0, out.stderr
    assert f"restored backup {backup}" in out.stdout and "serving 1.0.0" in out.stdout
    assert shop.snapshot() == before
    assert shop.serving() == "sampleapp 1.0.0"
    shop.configure()


def test_a_backup_that_fails_refuses_the_switch_before_anything_changes(shop):
    shop.configure(url="postgresql:///no_such_database")
    before = shop.snapshot()
    try:
        out = shop.deploy("2.5.0")
        assert out.rc == 3, out.stdout + out.stderr
        assert 'database "no_such_database" does not exist' in out.stderr
        assert "the switch is refused, nothing changed" in out.stderr
    finally:
        shop.configure()
    assert shop.snapshot() == before
    assert shop.serving() == "sampleapp 1.0.0"
    assert shop.json("history shop")[0]["migration"] is None


def test_a_backup_directory_without_room_gives_a_clear_error(shop):
    shop.configure(free=1 << 50)
    try:
        out = shop.deploy("2.6.0")
        assert out.rc == 3, out.stdout + out.stderr
        assert "less than database.min_free_bytes" in out.stderr and "no backup was taken" in out.stderr
    finally:
        shop.configure()
    # A file system that fills up during the dump: the partial backup goes, nothing else changes.
    mounted = shop.host.run("mkdir -p /srv/tiny && mount -t tmpfs -o size=64k tmpfs /srv/tiny")
    if mounted.rc != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        # random enough that the dump's compression cannot fit it into 64 KiB
        shop.sql("CREATE TABLE filler AS SELECT (SELECT string_agg(md5(random()::text || g || h), '') "
                 "FROM generate_series(1, 40) h) AS x FROM generate_series(1, 2000) g")
        before = shop.snapshot()
        shop.configure(extra='backup_dir = "/srv/tiny"')
        out = shop.deploy("2.6.1")
        assert out.rc == 3, out.stdout + out.stderr
        assert "No space left on device" in out.stderr or "could not write" in out.stderr, out.stderr
        assert "the switch is refused, nothing changed" in out.stderr
        assert shop.host.check_output("ls -A /srv/tiny").strip() == ""
        assert shop.snapshot() == before
    finally:
        shop.configure()
        shop.sql("DROP TABLE IF EXISTS filler")
        shop.host.run("umount /srv/tiny")


def test_pre_switch_commands_run_as_the_app_in_the_new_release_and_can_refuse(shop):
    before, current = shop.snapshot(), status_json(shop.host, "shop")["current"]
    shop.configure(top='pre_switch = ["id -un > /tmp/pre-switch.out; pwd >> /tmp/pre-switch.out", '
                       '"echo cache not warm >&2; exit 4"]')
    try:
        out = shop.deploy("2.7.0")
        assert out.rc == 3, out.stdout + out.stderr
        assert "pre_switch command" in out.stderr and "exited with status 4: cache not warm" in out.stderr
        assert "the switch is refused, nothing changed" in out.stderr
        assert shop.host.check_output("cat /tmp/pre-switch.out").split() == ["shop",
                                                                           "/var/lib/bloom/releases/shop/2.7.0"]
        assert shop.json("history shop")[0]["backup"] is None  # refused before the backup
    finally:
        shop.configure()
    assert shop.snapshot() == before
    assert shop.serving() == f"sampleapp {current}"


def test_a_manual_rollback_past_a_migration_puts_the_database_back(shop):
    before = shop.snapshot()
    out = shop.deploy("3.0.0")
    assert out.rc == 0, out.stderr
    assert "price" in shop.snapshot()[0] and "APPLE" in shop.snapshot()[1]
    out = shop.host.run("bloomctl rollback shop")
    assert out.rc == 0, out.stderr
    assert shop.snapshot() == before
    assert shop.serving() == "sampleapp 1.0.0"


def test_retention_keeps_the_backup_the_current_release_needs(shop):
    shop.configure(keep=2)
    try:
        for version in ("3.1.0", "3.2.0"):
            out = shop.deploy(version, up="CREATE TABLE IF NOT EXISTS t_%s (x int);" % version.replace(".", "_"),
                              down="SELECT 1;")
            assert out.rc == 0, out.stderr
        backups = shop.json("backup list shop")
        assert len(backups) == 2
        newest_migration = shop.json("migrations shop")[0]
        assert newest_migration["version"] == "3.2.0" and newest_migration["backup"] == backups[0]["id"]
        on_disk = shop.host.check_output("ls /var/lib/bloom/backups/shop").split()
        assert sorted(on_disk) == sorted(Path(b["path"]).name for b in backups)
    finally:
        shop.configure()


def _agent_back(shop, pid: str) -> None:
    wait_until(lambda: show(shop.host, "bloom-agent", "MainPID")["MainPID"] not in ("0", pid), 30, "the agent's restart")
    wait_until(lambda: shop.host.run("bloomctl history shop --json").rc == 0
               and shop.json("history shop")[0]["finished_at"], 60, "the restarted agent to finish the deployment")
    wait_until(lambda: status_json(shop.host, "shop").get("state") == "serving", 60, "the app to serve")


def test_an_agent_killed_during_a_migration_undoes_it_when_it_comes_back(shop):
    before, current = shop.snapshot(), status_json(shop.host, "shop")["current"]
    pid = show(shop.host, "bloom-agent", "MainPID")["MainPID"]
    built = make_release("4.0.0", shop.workdir, files={
        "migrations/up.sql": (CHANGE_UP + "\nSELECT pg_sleep(30);").encode(), "migrations/down.sql": CHANGE_DOWN.encode()})
    shop.host.run(f"bloomctl deploy shop {shop.put(built, '4.0.0')} --no-wait")
    wait_until(lambda: shop.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") == "1",
               30, "the migration to be under way")
    assert "price" in shop.snapshot()[0]  # half applied
    killed = shop.host.run("systemctl kill -s KILL bloom-agent")
    # In the container systemd may fail to kill the emptied cgroup as a whole (EIO) after it has sent every
    # process SIGKILL, and say so in its exit code: the agent is dead all the same, which _agent_back checks.
    assert killed.rc == 0 or "Input/output error" in killed.stderr, killed.stderr
    _agent_back(shop, pid)
    record = shop.json("history shop")[0]
    assert (record["version"], record["outcome"]) == ("4.0.0", "failed")
    assert "the agent restarted during step migrating" in record["reason"] and "restored backup" in record["reason"]
    assert shop.snapshot() == before
    assert shop.serving() == f"sampleapp {current}"


@pytest.mark.parametrize("step, outcome", [("backing-up", "failed"), ("rolling-back-database", "rolled-back")])
def test_an_agent_killed_at_a_database_step_finishes_it_when_it_comes_back(shop, step, outcome):
    before, current = shop.snapshot(), status_json(shop.host, "shop")["current"]
    with agent_failpoints(shop.host):
        pid = show(shop.host, "bloom-agent", "MainPID")["MainPID"]
        shop.host.check_output(f"echo {step} > /run/bloom-failpoint")
        out = shop.deploy(f"5.0.{0 if step == 'backing-up' else 1}", faults={"crash_after_sec": 1})
        assert out.rc == 1, "the agent should have died under bloomctl"
        _agent_back(shop, pid)
        record = shop.json("history shop")[0]
        assert record["outcome"] == outcome, record
        assert not shop.host.file("/run/bloom-failpoint").exists, "the failpoint was hit"
    assert shop.snapshot() == before
    assert shop.serving() == f"sampleapp {current}"
    assert shop.host.check_output("ls -A /var/lib/bloom/backups/shop | grep -c partial || true").strip() == "0"
