"""bloom-agent, the daemon: one asyncio loop, signals queued and dispatched to ``handle_*``.

Start-up order matters to systemd: configuration loaded and state opened *before* READY=1, so
``systemctl start`` returns only for an agent that can really serve.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bloom_agent import __version__
from bloom_agent.config import agent as config_mod
from bloom_agent.config.apps import app_warnings, load_apps, refuse_shared_addresses
from bloom_agent.config.paths import Paths
from bloom_agent.config.schema import read_toml
from bloom_agent.control import https, listener
from bloom_agent.control.auth import Caller, group_id
from bloom_agent.control.protocol import Request
from bloom_agent.control.server import ControlServer, unknown_command
from bloom_agent.daemon import commands
from bloom_agent.daemon import logs
from bloom_agent.daemon.looplag import LoopLag, new_event_loop
from bloom_agent.daemon.notify import Notifier
from bloom_agent.database.guard import DatabaseGuard
from bloom_agent.deploy.backups import DatabaseOperations
from bloom_agent.deploy.manager import AppManager
from bloom_agent.deploy.switcher import Journal
from bloom_agent.errors import (EXIT_CONFIG, EXIT_ERROR, EXIT_OK, BloomError, ConfigError, InvalidArguments,
                                NoSystemBus)
from bloom_agent.metrics.textfile import TextfileExporter
from bloom_agent.store.state import StateStore, boot_id_from, utcnow
from bloom_agent.systemd import adapter as systemd_adapter
from bloom_agent.systemd.adapter import Systemd
from bloom_agent.systemd.unitfiles import UnitWriter

log = logging.getLogger("bloom_agent")

# Graceful shutdown waits this long for in-flight requests; a second signal cuts it short.
SHUTDOWN_GRACE = 10.0
# Without a watchdog the loop still wakes now and then; it costs nothing and keeps the code path hot.
IDLE_TICK = 30.0
# node_exporter's textfile is written this often (and whenever a switch or rollback ends).
METRICS_INTERVAL = 5.0
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Agent:
    """The daemon, built from what main() hands it: the configuration, the host's paths, the state
    store, sd_notify, the control socket, and how to reach systemd (called inside the running loop,
    which the D-Bus adapter needs). A test builds one under a temporary root with a fake systemd."""

    def __init__(self, config: config_mod.AgentConfig, paths: Paths, store: StateStore, notifier: Notifier,
                 sock: socket.socket, connect_systemd: Callable[[], Awaitable[Systemd]],
                 journal: Journal = Journal(), api_sock: socket.socket | None = None,
                 credentials_dir: str | None = None, loop_lag: LoopLag | None = None) -> None:
        self.config = config
        # what the loop-lag probe saw (None: the loop it runs in has no probe, e.g. a test's own)
        self.loop_lag = loop_lag
        self.paths = paths
        self.store = store
        self.notifier = notifier
        self._connect_systemd = connect_systemd
        self._journal = journal
        self.started_at = utcnow()
        self.started_monotonic = time.monotonic()
        self.config_loaded_at = self.started_at
        self.state_text = "starting"
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        self._stopping = False
        self.apps: AppManager | None = None
        self.database: DatabaseOperations | None = None
        self._reconciling: asyncio.Task | None = None
        self._metrics_writing: asyncio.Task | None = None
        self.control = ControlServer(
            sock,
            self.dispatch,
            control_gid=lambda: group_id(self.config.control_group),
            max_request_bytes=config.max_request_bytes,
            proc=paths.proc,
        )
        # The HTTPS API, when bloom-agent-api.socket passed its socket: the same dispatch, and so the same
        # commands and answers. Its settings are read now: a wrong one stops the start (ConfigError).
        self.api = https.ApiServer(api_sock, self.dispatch, config.api, credentials_dir) if api_sock else None

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if loop.get_debug():  # PYTHONASYNCIODEBUG=1: name what holds the loop (bench/reload_stall.py --slow-callbacks)
            loop.slow_callback_duration = float(os.environ.get("BLOOM_SLOW_CALLBACK_MS", "100")) / 1000
        for sig in HANDLED_SIGNALS:
            # Handlers only queue; all work happens in the loop below.
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        try:
            return await self._run()
        finally:
            for sig in HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        """What SIGTERM does, for a caller in the same process."""
        self._signals.put_nowait(signal.SIGTERM)

    async def _run(self) -> int:
        guard = DatabaseGuard(self.store, self.paths.state_dir)
        self.apps = AppManager(self.paths.apps_dir, self.paths.releases_dir, self.store, await self._connect_systemd(),
                               UnitWriter.for_paths(self.paths), self._journal, guard)
        self.database = DatabaseOperations(self.apps, guard)
        self.apps.history_keep = self.config.history_keep
        self.metrics = TextfileExporter(self.paths.metrics_dir, self.apps)
        self.apps.on_change = self._write_metrics
        try:
            await self.apps.load()
        except BloomError as err:  # e.g. systemd unreachable: the agent still answers, and says why
            log.error("apps not loaded: %s", err)
        # Before the socket opens: an app whose switch is to be resumed is busy for every request.
        claimed = self.apps.claim_unfinished()
        await self.control.start()
        if self.api is not None:
            await self.api.start()
            log.info("HTTPS API listening on %s", self.api.address)
        self.store.record_agent_event("start", __version__)
        self._set_state("idle")
        self.notifier.ready(self._status_line())
        log.info("bloom-agent %s ready (config %s, state %s)", __version__, self.config.path, self.paths.state_db)
        # After READY: reconciling can take as long as starting a release, and systemd should not wait for it.
        self._reconciling = asyncio.ensure_future(self._reconcile(claimed))
        tick = min(self.notifier.watchdog_interval or IDLE_TICK, IDLE_TICK, METRICS_INTERVAL)
        while not self._stopping:
            try:
                async with asyncio.timeout(tick):
                    sig = await self._signals.get()
            except TimeoutError:
                sig = None
            self.notifier.watchdog()
            self._write_metrics()
            if sig is not None:
                await self.handle_signal(sig)
        return await self._shutdown()

    def _write_metrics(self) -> None:
        """In the background, one write at a time: reading every app's units from a busy systemd must
        not hold up the loop's watchdog pings or signals, and writes that would queue up say nothing new."""
        if self._metrics_writing is None or self._metrics_writing.done():
            self._metrics_writing = asyncio.ensure_future(self.metrics.write())

    async def handle_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            await self.handle_hup()
        else:
            self.handle_term()

    def handle_term(self) -> None:
        log.info("stopping on request")
        self._stopping = True

    async def handle_hup(self) -> None:
        self.notifier.reloading()
        await self.reload_config()
        self.notifier.ready(self._status_line())

    async def _reconcile(self, claimed) -> None:
        try:
            await self.apps.reconcile(claimed)
        except BloomError as err:
            log.error("reconciling apps after start: %s", err)
        except Exception:
            log.exception("reconciling apps after start failed")

    async def _shutdown(self) -> int:
        self._set_state("stopping")
        self.notifier.stopping()
        if self._reconciling is not None:
            self._reconciling.cancel()
        await self.apps.shutdown()
        closing = asyncio.ensure_future(asyncio.gather(
            self.control.close(SHUTDOWN_GRACE), *([self.api.close(SHUTDOWN_GRACE)] if self.api else [])))
        second_signal = asyncio.ensure_future(self._signals.get())
        done, _ = await asyncio.wait({closing, second_signal}, return_when=asyncio.FIRST_COMPLETED)
        if second_signal in done and not closing.done():
            log.warning("second signal: stopping now without waiting for requests in flight")
            closing.cancel()
        second_signal.cancel()
        if self._metrics_writing is not None:
            await asyncio.wait({self._metrics_writing})
        await self.metrics.write(up=False)
        self.store.record_agent_event("stop", __version__)
        self.apps.systemd.close()
        self.store.close()
        log.info("stopped")
        return EXIT_OK

    # -- configuration ----------------------------------------------------------------------

    async def reload_config(self) -> bool:
        try:
            new = config_mod.load(self.config.path)
        except ConfigError as err:
            log.error("configuration not reloaded, keeping the running one: %s", err)
            self.store.record_agent_event("reload-refused", __version__, str(err))
            return False
        if self.api is not None:
            try:
                self.api.configure(new.api)  # reads what [api] names; nothing changes if that fails
            except ConfigError as err:
                log.error("configuration not reloaded, keeping the running one: %s: %s", new.path, err)
                self.store.record_agent_event("reload-refused", __version__, str(err))
                return False
        for key in config_mod.RESTART_ONLY:
            if getattr(new, key) != getattr(self.config, key):
                log.warning("agent.%s changed; it takes effect when the agent restarts", key)
        self.config = dataclasses.replace(new, **{key: getattr(self.config, key) for key in config_mod.RESTART_ONLY})
        logs.set_level(new.log_level)
        self.config_loaded_at = utcnow()
        if self.apps is not None:
            self.apps.history_keep = self.config.history_keep
            try:
                await self.apps.load()
            except BloomError as err:
                log.error("apps not reloaded: %s", err)
        self.store.record_agent_event("reload", __version__)
        log.info("configuration reloaded from %s", new.path)
        return True

    # -- requests ---------------------------------------------------------------------------

    async def dispatch(self, caller: Caller, request: Request, progress, upload) -> Any:
        handler = commands.COMMANDS.get(request.command)
        if handler is None:
            raise unknown_command(request.command, list(commands.COMMANDS))
        if upload is not None and request.command not in commands.UPLOADS:
            raise InvalidArguments(f"{request.command} takes no upload")
        if upload is None and request.command in commands.UPLOADS:
            raise InvalidArguments(f"{request.command} needs the tarball sent with the request",
                                   hint="use the bloomctl that came with this bloom-agent")
        return await handler(self, caller, request.args, progress, upload)

    def _set_state(self, text: str) -> None:
        self.state_text = text
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        count = len(self.apps.apps) if self.apps else 0
        return f"{self.state_text}; {count} app(s)" if count else f"{self.state_text}; no apps configured"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bloom-agent", description="bloom-agent release switcher daemon")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"configuration file (default: ${config_mod.CONFIG_ENV} or {config_mod.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="run with every path below this directory and without systemd (for tests)")
    parser.add_argument("--version", action="version", version=f"bloom-agent {__version__}")
    return parser.parse_args(argv)


def check_config(path: Path, cfg: config_mod.AgentConfig, paths: Paths) -> int:
    """The agent's file and every app file, checked as a start or a reload would; 78 if any is wrong."""
    print(f"{path}: OK" if cfg.from_file else f"{path}: not present, all defaults")
    apps, errors = load_apps(paths.apps_dir, paths.releases_dir)
    errors.update(refuse_shared_addresses(apps, first=set()))
    for app in apps.values():
        print(f"{app.path}: OK")
        for warning in app_warnings(app):
            print(f"warning: {warning}")
    for error in errors.values():
        print(error, file=sys.stderr)
    if (cfg.from_file and "api" in read_toml(path)) or Path(cfg.api.certificate).exists():
        try:
            https.load(cfg.api, os.environ.get("CREDENTIALS_DIRECTORY"))
            print(f"[api]: OK (certificate {cfg.api.certificate}; allowed: {', '.join(cfg.api.allowed_ips)})")
        except ConfigError as err:
            # An error only with bloom-agent-api.socket enabled, when the agent refuses to start for it.
            print(f"[api]: not usable (the agent refuses to start with bloom-agent-api.socket enabled): {err}",
                  file=sys.stderr)
    return EXIT_CONFIG if errors else EXIT_OK


def require_systemd(systemd: Systemd) -> Systemd:
    """On a host the agent is nothing without systemd: refuse to run rather than answer "no apps
    configured" (only ``--root`` runs on without it, on purpose)."""
    if isinstance(systemd, systemd_adapter.NoSystemd):
        raise NoSystemBus(f"refusing to start: systemd cannot be reached over the D-Bus system bus ({systemd.why})",
                          hint="bloom-agent drives systemd through the system bus: install and start it "
                               "(apt install dbus; systemctl start dbus.socket), then: systemctl start bloom-agent")
    return systemd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup("info")
    path = args.config or config_mod.default_path()
    try:
        cfg = config_mod.load(path)
    except ConfigError as err:
        log.error("refusing to start: %s", err)
        return EXIT_CONFIG
    paths = Paths.for_host(cfg, args.root)
    if args.check_config:
        return check_config(path, cfg, paths)
    logs.set_level(cfg.log_level)
    try:
        store = StateStore(paths.state_db, boot_id=boot_id_from(paths.boot_id_file))
        sockets = listener.inherited(https.FD_NAME)
        sock = sockets.control
        bound_here = sock is None
        if bound_here:
            sock = listener.bind(paths.control_socket, cfg.control_group)
    except BloomError as err:
        log.error("refusing to start: %s", err)
        return err.exit_code

    async def connect() -> Systemd:
        if args.root == Path("/"):
            return require_systemd(await systemd_adapter.connect(paths.cgroup_roots))
        return systemd_adapter.NoSystemd(f"running under --root {args.root}")

    probe = LoopLag()
    try:
        agent = Agent(cfg, paths, store, Notifier(), sock, connect, api_sock=sockets.api,
                      credentials_dir=os.environ.get("CREDENTIALS_DIRECTORY"), loop_lag=probe)
    except ConfigError as err:
        log.error("refusing to start: %s: %s", path, err)
        log.error("the HTTPS API's socket is enabled (bloom-agent-api.socket): fix [api], or turn it off with: "
                  "systemctl disable --now bloom-agent-api.socket; systemctl restart bloom-agent")
        return EXIT_CONFIG
    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop(probe)) as runner:
            return runner.run(agent.run())
    except BloomError as err:
        log.error("%s", err)
        return err.exit_code or EXIT_ERROR
    finally:
        if bound_here:  # systemd's socket outlives us; one we bound ourselves does not
            paths.control_socket.unlink(missing_ok=True)
