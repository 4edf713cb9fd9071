"""bloomctl: a thin layer over the control protocol. Parsing and printing here; everything else in the agent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__, client
from .errors import EXIT_ERROR, EXIT_USAGE, BloomError, PermissionDenied


class Context:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return client.call(command, args, socket_path=self.socket_path)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", type=click.Path(path_type=Path, readable=False), envvar=client.SOCKET_ENV,
              default=client.DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
@click.version_option(__version__, prog_name="bloomctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: Path) -> None:
    """Control bloom-agent: zero-downtime release switching with automatic rollback."""
    ctx.obj = Context(socket_path)


@cli.command()
@json_option
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Show the agent and its apps."""
    result = obj.call("status")
    if as_json:
        _print_json(result)
        return
    agent = result["agent"]
    click.echo(f"bloom-agent {agent['version']}: {agent['state']} (pid {agent['pid']}, up {_duration(agent['uptime_sec'])})")
    click.echo(f"  config: {agent['config']} (loaded {agent['config_loaded_at']})")
    click.echo(f"  state:  {agent['state_db']}")
    apps = result.get("apps") or []
    click.echo("  apps:   " + (", ".join(a["name"] for a in apps) if apps else "none configured"))


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
    except BloomError as err:
        click.echo(f"bloomctl: {err}", err=True)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
