"""bloomctl: a thin layer over the control protocol. Parsing and printing here; everything else in the agent."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from bloom_agent import __version__
from bloom_agent.control import client
from bloom_agent.errors import (EXIT_DETACHED, EXIT_ERROR, EXIT_NOT_SERVING, EXIT_USAGE, BloomError, InvalidArguments,
                                PermissionDenied)


class Context:
    """Where requests go: the local agent's socket, another host's agent over ssh (-H), or over its HTTPS
    API (--url)."""

    def __init__(self, socket_path: Path, host: str | None, api: client.Api | None = None) -> None:
        self.socket_path = socket_path
        self.host = host
        self.api = api

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: float | None = 60.0,
             on_progress=None, upload: BinaryIO | None = None) -> Any:
        return client.call(command, args, socket_path=self.socket_path, timeout=timeout, on_progress=on_progress,
                           upload=upload, host=self.host, api=self.api)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", type=click.Path(path_type=Path, readable=False), envvar=client.SOCKET_ENV,
              default=client.DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
@click.option("-H", "--host", "host", envvar=client.HOST_ENV, metavar="[USER@]HOST[:PORT]",
              help="Act on the agent of another host, over ssh (bloomctl must be installed there; "
                   f"${client.SSH_ENV} sets the ssh command).")
@click.option("--url", "url", envvar=client.URL_ENV, metavar="https://HOST[:PORT]",
              help="Act on the agent of another host over its HTTPS API (signed with --secret-file).")
@click.option("--secret-file", type=click.Path(path_type=Path, dir_okay=False), envvar=client.SECRET_FILE_ENV,
              help="The API's shared secret, for --url.")
@click.option("--cacert", type=click.Path(path_type=Path, dir_okay=False), envvar=client.CACERT_ENV,
              help="Verify the API's certificate with this certificate or CA (default: the system's CAs), for --url.")
@click.version_option(__version__, prog_name="bloomctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: Path, host: str | None, url: str | None, secret_file: Path | None,
        cacert: Path | None) -> None:
    """Control bloom-agent: zero-downtime release switching with automatic rollback."""
    if host and url:
        raise InvalidArguments("give -H (ssh) or --url (HTTPS API), not both",
                               hint=f"check ${client.HOST_ENV} and ${client.URL_ENV} too")
    ctx.obj = Context(socket_path, host or None, client.Api(url, secret_file, cacert) if url else None)


quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="No progress lines on stderr (the outcome and errors are still printed).")
wait_option = click.option("--wait/--no-wait", default=True, show_default=True,
                           help="Wait for the outcome (through probation), or return once the switch has started.")


@cli.command()
@click.argument("app", required=False)
@json_option
@click.pass_obj
def status(obj: Context, app: str | None, as_json: bool) -> None:
    """Show the agent and its apps, or one APP.

    Exit status, like systemctl status: 0 when every app shown is serving; 3 when one is degraded or
    has no release running (not deployed, or its release stopped); 1 when the agent cannot reach
    systemd, an app file did not load, or the agent does not answer.
    """
    result = obj.call("status", {"app": app} if app else {})
    apps = [result] if app else result.get("apps") or []
    if as_json:
        _print_json(result)
    elif app:
        _echo_app(result)
    else:
        agent = result["agent"]
        click.echo(f"bloom-agent {agent['version']}: {agent['state']} (pid {agent['pid']}, up "
                   f"{_duration(agent['uptime_sec'])})")
        click.echo(f"  config: {agent['config']} (loaded {agent['config_loaded_at']})")
        click.echo(f"  state:  {agent['state_db']}")
        if agent.get("systemd", "reachable") != "reachable":
            click.echo(f"  systemd: NOT REACHABLE ({agent['systemd']}): app operations cannot work")
        if not apps:
            click.echo("  apps:   none configured")
        for a in apps:
            _echo_app(a, indent="  ")
        for path, err in (result.get("app_errors") or {}).items():
            click.echo(f"  not loaded: {err}", err=True)
    if not app and (result["agent"].get("systemd", "reachable") != "reachable" or result.get("app_errors")):
        raise StatusNotOk(EXIT_ERROR)
    if any(not a.get("serving") for a in apps):
        raise StatusNotOk(EXIT_NOT_SERVING)


def _echo_app(a: dict, indent: str = "") -> None:
    click.echo(f"{indent}{a['name']}: {a['state']}, current {a['current'] or '-'}, last good {a['last_good'] or '-'}")
    if a.get("busy"):
        click.echo(f"{indent}  {a['busy']}")
    if a.get("degraded"):
        click.echo(f"{indent}  degraded: {a['degraded']}")
    click.echo(f"{indent}  running: {', '.join(a['running']) or 'nothing'}")


@cli.command()
@click.pass_obj
def reload(obj: Context) -> None:
    """Re-read the agent's configuration and the app files (like systemctl reload bloom-agent)."""
    result = obj.call("reload")
    click.echo(f"apps: {', '.join(result['apps']) or 'none'}")
    for err in (result.get("app_errors") or {}).values():
        click.echo(f"not loaded: {err}", err=True)
    for warning in result.get("app_warnings") or []:
        click.echo(f"warning: {warning}", err=True)
    if not result["config_reloaded"]:
        raise BloomError("the agent's configuration was not reloaded; see: journalctl -u bloom-agent")


# Read by bloomctl, as the caller, and sent with the request: the agent opens no path for anyone.
tarball_argument = click.argument("tarball")
filename_option = click.option("--filename", metavar="NAME",
                               help="The tarball's file name when TARBALL is - (its version is read from it).")


class Tarball:
    """The release tarball as its caller can read it: a file, or standard input for '-'."""

    def __init__(self, path: str, filename: str | None) -> None:
        self.path = path
        if path == "-":
            self.file, self.filename = sys.stdin.buffer, filename
            return
        try:
            self.file = open(path, "rb")
        except IsADirectoryError:
            raise InvalidArguments(f"{path} is a directory, not a release tarball",
                                   hint="pack it first: tar -czf APP-VERSION.tar.gz -C DIR .") from None
        except FileNotFoundError:
            raise InvalidArguments(f"{path}: no such file") from None
        except PermissionError:
            raise InvalidArguments(f"cannot read {path}: permission denied",
                                   hint="the agent installs only tarballs its caller can read; "
                                        "check the file's mode and owner, or run as its owner") from None
        except OSError as exc:
            raise InvalidArguments(f"cannot read {path}: {exc.strerror or exc}") from None
        self.filename = filename or os.path.basename(path)

    def sha256(self, given: str | None) -> str | None:
        """--sha256, or the first word of TARBALL.sha256 beside the file, read as the caller."""
        if given or self.path == "-":
            return given
        try:
            with open(f"{self.path}.sha256") as fh:
                words = fh.read(4096).split()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InvalidArguments(f"cannot read {self.path}.sha256: {exc.strerror or exc}") from None
        return words[0] if words else None

    def args(self, app: str, version: str | None, sha256: str | None, strip: int) -> dict[str, Any]:
        return {"app": app, "filename": self.filename, "version": version, "sha256": self.sha256(sha256),
                "strip_components": strip}


version_option = click.option("--version", "version", help="Release version (default: from the file name APP-VERSION.tar.gz).")
sha256_option = click.option("--sha256", help="Expected SHA-256 (default: from TARBALL.sha256 next to it).")
strip_option = click.option("--strip-components", "strip", type=click.IntRange(0, 3), default=0, show_default=True,
                            help="Drop this many leading directories from the tarball's paths, like tar's option "
                                 "(for a tarball packed with its build directory).")


def tarball_options(command):
    """TARBALL and what qualifies it, for install and deploy."""
    for option in reversed((tarball_argument, version_option, sha256_option, strip_option, filename_option)):
        command = option(command)
    return command


@cli.command()
@click.argument("app")
@tarball_options
@click.option("--check", is_flag=True, help="Validate only: unpack and check the release, then discard it.")
@json_option
@click.pass_obj
def install(obj: Context, app: str, tarball: str, version: str | None, sha256: str | None, strip: int,
            filename: str | None, check: bool, as_json: bool) -> None:
    """Validate and unpack a release of APP from TARBALL (- for standard input)."""
    release = Tarball(tarball, filename)
    args = {**release.args(app, version, sha256, strip), **({"check": True} if check else {})}
    # Unpacking a large release takes as long as it takes: no client-side time limit.
    result = obj.call("install", args, timeout=None, upload=release.file)
    if as_json:
        _print_json(result)
        return
    if check and not result["unchanged"]:
        click.echo(f"{app} {result['version']} ({result['size']} bytes) would install; nothing was changed")
    elif result["unchanged"]:
        click.echo(f"{app} {result['version']} is already installed with the same contents, in {result['path']}")
    else:
        click.echo(f"installed {app} {result['version']} ({result['size']} bytes) in {result['path']}")
    if result["warning"]:
        click.echo(f"warning: {result['warning']}", err=True)


@cli.command()
@click.argument("app")
@json_option
@click.pass_obj
def releases(obj: Context, app: str, as_json: bool) -> None:
    """List APP's installed releases with their status."""
    rows = obj.call("releases", {"app": app})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo(f"{app}: no releases installed")
        return
    click.echo(f"{'VERSION':<20} {'STATUS':<18} {'INSTALLED (UTC)':<19} {'SIZE':>10}  SHA256")
    for r in rows:
        click.echo(f"{r['version']:<20} {r['status']:<18} {_when(r['installed_at'])} {r['size']:>10}  {r['sha256'][:16]}")
        if r["reason"]:
            click.echo(f"{'':<20} {r['reason']}")


@cli.command()
@click.argument("app")
@click.argument("version")
@click.pass_obj
def remove(obj: Context, app: str, version: str) -> None:
    """Remove an installed release that is not in use."""
    obj.call("remove", {"app": app, "version": version})
    click.echo(f"removed {app} {version}")


@cli.command()
@click.argument("app")
@click.argument("version")
@wait_option
@quiet_option
@json_option
@click.pass_obj
def switch(obj: Context, app: str, version: str, wait: bool, quiet: bool, as_json: bool) -> None:
    """Switch APP to an installed VERSION without downtime."""
    _report_switch(obj, "switch", {"app": app, "version": version, "wait": wait}, as_json, quiet)


@cli.command()
@click.argument("app")
@tarball_options
@wait_option
@quiet_option
@json_option
@click.pass_obj
def deploy(obj: Context, app: str, tarball: str, version: str | None, sha256: str | None, strip: int,
           filename: str | None, wait: bool, quiet: bool, as_json: bool) -> None:
    """Install TARBALL (- for standard input) and switch APP to it (already installed and serving:
    nothing to do, exit 0)."""
    release = Tarball(tarball, filename)
    _report_switch(obj, "deploy", {**release.args(app, version, sha256, strip), "wait": wait}, as_json, quiet,
                   upload=release.file)


@cli.command()
@click.argument("app")
@click.option("--to", "to", help="Roll back to this version (default: the previous good release).")
@wait_option
@quiet_option
@json_option
@click.pass_obj
def rollback(obj: Context, app: str, to: str | None, wait: bool, quiet: bool, as_json: bool) -> None:
    """Switch APP back to its previous good release (during probation: abort it now)."""
    _report_switch(obj, "rollback", {"app": app, "to": to, "wait": wait}, as_json, quiet)


@cli.command()
@click.argument("app")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@json_option
@click.pass_obj
def history(obj: Context, app: str, limit: int, as_json: bool) -> None:
    """Show APP's installs, switches and rollbacks, newest first."""
    rows = obj.call("history", {"app": app, "limit": limit})
    if as_json:
        _print_json(rows)
        return
    click.echo(f"{'TIME (UTC)':<19} {'ACTION':<10} {'VERSION':<16} {'FROM':<16} {'OUTCOME':<12} {'BY':<10} REASON")
    for r in rows:
        database = f" [backup {r['backup']}, migration {r['migration']}]" if r.get("backup") else (
            f" [migration {r['migration']}]" if r.get("migration") else "")
        click.echo(f"{_when(r['started_at'])} {r['action']:<10} {r['version']:<16} {r['from'] or '-':<16} "
                   f"{r['outcome']:<12} {r['caller']:<10} {r['reason']}{database}")


@cli.command()
@click.argument("app")
@quiet_option
@json_option
@click.pass_obj
def wait(obj: Context, app: str, quiet: bool, as_json: bool) -> None:
    """Follow APP's switch or rollback in flight to its end, and exit with its outcome's code (with none
    in flight, the last one's)."""
    _report_switch(obj, "wait", {"app": app}, as_json, quiet)


@cli.group("app")
def app_group() -> None:
    """Apps as a whole."""


@app_group.command("remove")
@click.argument("app")
@click.option("--yes", is_flag=True, help="Do not ask (for scripts).")
@click.pass_obj
def app_remove(obj: Context, app: str, yes: bool) -> None:
    """Take APP off the host: stop its releases, close its socket, remove its units, releases and app file."""
    if not yes:
        click.confirm(f"Remove {app} from this host: stop it, and delete its units, releases and app file?",
                      abort=True, err=True)
    result = obj.call("app-remove", {"app": app}, timeout=None)
    stopped = ", ".join(result["stopped"]) or "nothing was running"
    click.echo(f"removed {app} ({stopped}; {result['file']} deleted)")


@app_group.command("relisten")
@click.argument("app")
@json_option
@click.pass_obj
def app_relisten(obj: Context, app: str, as_json: bool) -> None:
    """Put APP's changed socket (listen and socket keys of its file, after 'bloomctl reload') in place now,
    the least disruptive way, and say which: addresses only removed keep the others open; anything else
    closes the socket for a moment. The serving release restarts on the new socket."""
    result = obj.call("app-relisten", {"app": app}, timeout=None)
    if as_json:
        _print_json(result)
    else:
        click.echo(result["text"])


@cli.group("backup")
def backup_group() -> None:
    """An app's database backups (apps with a [database] table)."""


@backup_group.command("list")
@click.argument("app")
@json_option
@click.pass_obj
def backup_list(obj: Context, app: str, as_json: bool) -> None:
    """Show APP's backups on disk, newest first."""
    rows = obj.call("backup-list", {"app": app})
    if as_json:
        _print_json(rows)
        return
    click.echo(f"{'ID':>4} {'TAKEN (UTC)':<19} {'OF':<16} {'DEPLOYMENT':>10} {'SIZE':>12}  PATH")
    for r in rows:
        click.echo(f"{r['id']:>4} {_when(r['taken_at'])} {r['version'] or '-':<16} {r['deployment'] or 'manual':>10} "
                   f"{r['size']:>12,}  {r['path']}")


@backup_group.command("create")
@click.argument("app")
@json_option
@click.pass_obj
def backup_create(obj: Context, app: str, as_json: bool) -> None:
    """Back up APP's database now."""
    row = obj.call("backup-create", {"app": app}, timeout=None)
    if as_json:
        _print_json(row)
        return
    click.echo(f"{app}: backup {row['id']} taken in {row['seconds']:g} s: {row['path']} ({row['size']:,} bytes)")


@backup_group.command("restore")
@click.argument("app")
@click.argument("backup", type=int)
@click.option("--yes", is_flag=True, help="Do not ask (for scripts).")
@json_option
@click.pass_obj
def backup_restore(obj: Context, app: str, backup: int, yes: bool, as_json: bool) -> None:
    """Put backup BACKUP of APP back: the serving release is stopped meanwhile; writes since the backup are lost."""
    if not yes:
        click.confirm(f"Restore backup {backup} of {app}? Its release stops meanwhile, and whatever was written "
                      f"since the backup is lost.", abort=True, err=True)
    result = obj.call("backup-restore", {"app": app, "backup": backup}, timeout=None)
    if as_json:
        _print_json(result)
        return
    click.echo(f"{app}: {result['restored']}; serving {result['serving'] or 'nothing'}")


@cli.command()
@click.argument("app")
@json_option
@click.pass_obj
def migrations(obj: Context, app: str, as_json: bool) -> None:
    """Show the migrations APP's switches ran, and what became of them, newest first."""
    rows = obj.call("migrations", {"app": app})
    if as_json:
        _print_json(rows)
        return
    click.echo(f"{'TIME (UTC)':<19} {'DEPLOYMENT':>10} {'VERSION':<16} {'FROM':<16} {'BACKUP':>6} {'STATE':<8} DETAIL")
    for r in rows:
        click.echo(f"{_when(r['started_at'])} {r['deployment']:>10} {r['version']:<16} {r['from'] or '-':<16} "
                   f"{r['backup'] or '-':>6} {r['state']:<8} {r['detail']}")


@cli.command()
@click.argument("app")
@click.argument("version", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries (journalctl -f).")
@click.option("-n", "--lines", type=click.IntRange(0), help="Show the last N entries (journalctl -n).")
@click.option("-o", "--output", metavar="FORMAT", help="journalctl's output format (short, cat, json, ...).")
@click.pass_obj
def logs(obj: Context, app: str, version: str | None, follow: bool, lines: int | None, output: str | None) -> None:
    """Show the journal of APP's releases, or of one VERSION, with journalctl (on the -H host, over ssh)."""
    if app.startswith("-") or (version or "").startswith("-"):
        raise InvalidArguments(f"not an app and version: {app} {version or ''}")
    units = [f"{app}@{version.replace('+', '_')}.service"] if version else [f"{app}@*.service", f"{app}.socket"]
    argv = ["journalctl", *(arg for unit in units for arg in ("-u", unit))]
    argv += ["--follow"] if follow else []
    argv += ["--lines", str(lines)] if lines is not None else []
    argv += ["--output", output] if output else []
    if obj.api:
        raise InvalidArguments("logs reads the host's journal: use it there, or over ssh with -H")
    if obj.host:
        argv = client.ssh_command(obj.host, tuple(argv))
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise BloomError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("app")
@click.argument("deployment", type=int, required=False)
@json_option
@click.pass_obj
def show(obj: Context, app: str, deployment: int | None, as_json: bool) -> None:
    """Show one deployment of APP step by step (default: its newest switch or rollback)."""
    d = obj.call("show", {"app": app, "deployment": deployment})
    if as_json:
        _print_json(d)
        return
    click.echo(f"{app} deployment {d['id']}: {d['action']} {d['from'] or '-'} -> {d['version']} by {d['caller']}: "
               f"{d['outcome']}")
    if d["reason"]:
        click.echo(f"  reason: {d['reason']}")
    for step in d["steps"]:
        took = f"{step['seconds']:8.3f} s" if step["seconds"] is not None else " " * 10
        detail = f"  {step['detail']}" if step["detail"] and step["detail"] != d["reason"] else ""
        click.echo(f"  {step['at'][11:23]}  {step['step']:<14}{took}{detail}")


@cli.command()
@click.argument("app")
@json_option
@click.pass_obj
def health(obj: Context, app: str, as_json: bool) -> None:
    """Run APP's health checks once against its current release; exit 1 if any fails."""
    result = obj.call("health", {"app": app}, timeout=None)
    if as_json:
        _print_json(result)
    else:
        click.echo(f"{result['app']} {result['version']}: {'healthy' if result['healthy'] else 'UNHEALTHY'}")
        for check in result["checks"]:
            click.echo(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    if not result["healthy"]:
        raise BloomError(f"{app}: health check failed")


@cli.command("stdio-bridge", hidden=True)
@click.pass_obj
def stdio_bridge(obj: Context) -> None:
    """Pass a request from standard input to the agent and its answer back: what bloomctl -H runs here."""
    client.stdio_bridge(obj.socket_path)


def _report_switch(obj: Context, command: str, args: dict, as_json: bool, quiet: bool = False,
                   upload: BinaryIO | None = None) -> None:
    """Progress goes to stderr as it comes, one line a step with the time, whether or not it is a
    terminal: a CI job's log shows a deployment as it happens."""

    def say(text: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {text}", err=True)

    def on_progress(p: dict) -> None:
        if p.get("warning") and not as_json:
            say(f"warning: {p['warning']}")  # said even with --quiet
            return
        if quiet or as_json:
            return
        if p.get("step") == "probation" and "watching" in p:
            say(f"probation of {p['version']} for {p['seconds']:g} s, watching: {', '.join(p['watching'])}")
        elif p.get("step") == "probation" and "extended" in p:
            say(f"probation of {p['version']} extended by up to {p['extended']:g} s for a verdict: {p['why']}")
        elif p.get("step") == "probation" and "left" in p:
            say(f"probation of {p['version']}: {p['left']} s left")
        elif p.get("step") != "probation":
            say(f"{p.get('step')}: {p.get('version')}")

    try:
        result = obj.call(command, args, on_progress=on_progress, timeout=None, upload=upload)
    except KeyboardInterrupt:
        raise Detached(args["app"], command) from None
    if as_json:
        _print_json(result)
    elif result["outcome"] == "unchanged":
        click.echo(f"{result['app']}: {result['version']} is already installed and serving; nothing to do")
    elif result["outcome"] in ("started", "aborting"):
        click.echo(f"{result['app']}: {command} to {result['version']} {result['outcome']} (deployment {result['deployment']})")
    else:
        click.echo(f"{result['app']}: {result['from_version'] or '-'} -> {result['version']}: {result['outcome']}")
    if result["exit_code"]:
        raise SwitchFailed(result)


class StatusNotOk(BloomError):
    """status printed what is wrong already; only its exit code is left to give."""

    def __init__(self, exit_code: int) -> None:
        super().__init__("")
        self.exit_code = exit_code


class Detached(BloomError):
    """Ctrl-C on a waiting bloomctl: only the client stops; the agent goes on with what it was asked."""

    exit_code = EXIT_DETACHED

    def __init__(self, app: str, command: str) -> None:
        what = "the rollback" if command == "rollback" else "the switch"
        super().__init__(f"detached; {what} continues in the agent",
                         hint=f"follow it: bloomctl status {app}; abort it: bloomctl rollback {app}")


class SwitchFailed(BloomError):
    """The switch finished, but not on the new release: exit 3 (previous restored) or 4 (restore failed)."""

    def __init__(self, result: dict) -> None:
        if result["exit_code"] != 3:
            what = "CRITICAL: the way back failed too"
        elif result.get("from_version"):
            what = "the previous release was restored"
        else:
            what = "there was no earlier release; the app is not serving"
        super().__init__(f"{result['app']} {result['version']}: {result['outcome']}: {result['reason']}; {what}")
        self.exit_code = result["exit_code"]


def _when(iso: str) -> str:
    """Stored times are ISO 8601 in UTC with milliseconds; a table needs the second."""
    return iso[:19].replace("T", " ")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n] or ["0s"]
    return " ".join(shown[:2])


def _log_denial(err: PermissionDenied) -> None:
    # The socket's mode stops such a caller in the kernel, before the agent could log it; the
    # journal still records who tried (its _UID and _PID fields are set by journald, not by us).
    try:
        from systemd import journal

        journal.send(f"bloomctl: {err.message}", PRIORITY=journal.LOG_WARNING, SYSLOG_IDENTIFIER="bloomctl",
                     BLOOM_DENIED_UID=str(os.getuid()))
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="bloomctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else EXIT_ERROR
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except PermissionDenied as err:
        _log_denial(err)
        click.echo(f"bloomctl: {err}", err=True)
        return err.exit_code
    except StatusNotOk as err:
        return err.exit_code
    except BloomError as err:
        click.echo(f"bloomctl: {err}", err=True)
        return err.exit_code
    return 0
