"""Apps, their releases and their deployments: the operations bloomctl asks for.

One operation per app at a time. The lock is an in-memory object of the agent, so it can never
outlive the agent; what was in flight when the agent died is found in the database instead
(``reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from bloom_agent.config.apps import AppConfig, app_warnings, describe, load_apps, refuse_shared_addresses
from bloom_agent.control.auth import Caller
from bloom_agent.database.guard import DatabaseGuard
from bloom_agent.deploy import events, failpoints, relisten
from bloom_agent.deploy.deployment import OUTCOMES, Step
from bloom_agent.deploy.hooks import run_hooks
from bloom_agent.deploy.switcher import Deployment, Journal, Outcome, Progress, Switcher, no_progress
from bloom_agent.errors import BloomError, Busy, ConfigError, InstallError, InvalidArguments, ReleaseError, UnknownApp
from bloom_agent.store import releases
from bloom_agent.store import versions
from bloom_agent.store.releases import Upload
from bloom_agent.store.state import StateStore, seconds_between
from bloom_agent.systemd.adapter import Systemd, is_running
from bloom_agent.systemd.unitfiles import UnitWriter
from bloom_agent.watch.checks import Target, run_check

log = logging.getLogger(__name__)


@dataclass
class Holder:
    operation: str
    caller: str
    since: float
    deployment: Deployment | None = None
    task: asyncio.Task | None = None
    # Who hears a switch's progress: the client that asked, and any 'bloomctl wait' attached since.
    listeners: list[Progress] = field(default_factory=list)

    def tell(self, payload: dict) -> None:
        for listener in list(self.listeners):
            listener(payload)

    def describe(self, app: str) -> str:
        at = datetime.fromtimestamp(self.since).strftime("%H:%M:%S")
        return f"busy: {self.operation} of {app} started by {self.caller} at {at}"


class AppManager:
    def __init__(self, apps_dir: Path, releases_root: Path, store: StateStore, systemd: Systemd,
                 units: UnitWriter, journal: Journal = Journal(), database: DatabaseGuard | None = None) -> None:
        self.apps_dir = apps_dir
        self.releases_root = releases_root
        self.store = store
        self.systemd = systemd
        self.units = units
        self.database = database
        self.switcher = Switcher(systemd, store, units, journal, database)
        self.apps: dict[str, AppConfig] = {}
        self.app_errors: dict[str, str] = {}
        self.app_warnings: list[str] = []
        self._holders: dict[str, Holder] = {}
        self._tasks: set[asyncio.Task] = set()
        # Called when a switch or rollback has ended (the daemon writes the metrics then).
        self.on_change: Callable[[], None] = lambda: None
        # Deployments kept in each app's history (agent.history_keep; the daemon sets it on each load).
        self.history_keep = 1000

    # -- app definitions ----------------------------------------------------------------------

    async def load(self) -> list[str]:
        """(Re)read the app files and write their units; one daemon-reload if anything changed."""
        apps, errors = load_apps(self.apps_dir, self.releases_root)
        errors.update(refuse_shared_addresses(apps, first=set(self.apps)))
        for name, app in list(apps.items()):
            foreign = self.units.foreign_unit(app)
            if foreign is not None:
                errors[str(app.path)] = (f"{app.path}: the name {name!r} is taken: {foreign} was not written by "
                                         f"bloom-agent, which never overwrites a unit it does not own; name the app "
                                         f"file otherwise")
                del apps[name]
        for path, err in errors.items():
            log.error("app file not loaded: %s", err)
        warnings = [w for app in apps.values() for w in app_warnings(app)]
        for warning in warnings:
            log.warning("%s", warning)
        changed = False
        for app in apps.values():
            if app.name in self._holders and self.apps.get(app.name) != app:
                log.warning("%s: app file changed during an operation; run 'bloomctl reload' again once it "
                            "has finished", app.name)
                apps[app.name] = self.apps[app.name]
                continue
            # A socket in use is left as it is: a release keeps the descriptors it started with, so a
            # change reaches it only with a new process (relisten, or the next switch).
            in_use = self.store.app_state(app.name)["current"] is not None
            socket_changed, service_changed = self.units.write_app_units(app, socket=not in_use)
            changed |= socket_changed or service_changed
            if in_use and (pending := self.units.socket_change(app)).way != "unchanged":
                if pending.old != pending.new:
                    how = f"at the next switch of {app.name}, or now with 'bloomctl app relisten {app.name}'"
                else:  # settings alone: a switch leaves them, as applying them closes the socket
                    how = f"with 'bloomctl app relisten {app.name}' (which closes the socket for a moment)"
                warning = f"{app.path}: the socket changed ({pending.describe()}): it applies {how}"
                log.warning("%s", warning)
                warnings.append(warning)
        if changed:
            await self.systemd.daemon_reload()
        self.apps, self.app_errors, self.app_warnings = apps, errors, warnings
        return sorted(apps)

    def app(self, name: str) -> AppConfig:
        try:
            return self.apps[name]
        except KeyError:
            path = self.apps_dir / f"{name}.toml"
            if str(path) in self.app_errors:
                raise ConfigError(f"{path.name} was not loaded: {self.app_errors[str(path)]}",
                                   hint="fix the file, then: bloomctl reload") from None
            known = ", ".join(sorted(self.apps)) or "none"
            raise UnknownApp(f"unknown app {name!r} (configured: {known})",
                             hint=f"declare it in {self.apps_dir}/{name}.toml, then: bloomctl reload") from None

    # -- locking --------------------------------------------------------------------------------

    def _acquire(self, app: str, operation: str, caller: str) -> Holder:
        holder = self._holders.get(app)
        if holder is not None:
            raise Busy(holder.describe(app), hint="wait for it to finish (bloomctl status " + app + ")")
        holder = Holder(operation, caller, time.time())
        self._holders[app] = holder
        return holder

    def _release(self, app: str, holder: Holder) -> None:
        if self._holders.get(app) is holder:
            del self._holders[app]

    @contextlib.contextmanager
    def holding(self, app: str, operation: str, caller: str) -> Iterator[Holder]:
        """The app held for one operation (Busy if something else holds it)."""
        holder = self._acquire(app, operation, caller)
        try:
            yield holder
        finally:
            self._release(app, holder)

    # -- install / remove -------------------------------------------------------------------------

    async def install(self, name: str, upload: Upload, filename: str | None, version: str | None, sha256: str | None,
                      caller: Caller, strip: int = 0, check: bool = False) -> dict:
        app = self.app(name)
        if check:
            return await self._check_install(app, upload, filename, version, sha256, strip)
        holder = self._acquire(name, "install", caller.user)
        try:
            return await self._install(app, upload, filename, version, sha256, caller, strip)
        finally:
            self._release(name, holder)

    async def _check_install(self, app: AppConfig, upload: Upload, filename: str | None, version: str | None,
                             sha256: str | None, strip: int) -> dict:
        """Everything an install checks, unpacked into staging and thrown away: nothing is recorded and
        nothing is left (an Ansible --check, a CI job's dry run). It takes no lock: it changes nothing."""
        display = filename or "the tarball from standard input"
        version = self._version_of(app, filename, version)
        checksum = self._checksum_to_expect(app, display, version, sha256, strip)
        received = await releases.receive(app, upload, display)
        try:
            existing = self.store.release(app.name, version)
            if existing:
                self._refuse_other_contents(app, display, version, existing, received.sha256)
                return {"app": app.name, "version": version, "path": str(app.releases_dir / existing["instance"]),
                        "sha256": received.sha256, "size": existing["size"], "unchanged": True, "warning": "",
                        "checked": True}
            done = await asyncio.to_thread(releases.install, app, received.path, version, checksum, strip,
                                           received.sha256, display, check=True)
        finally:
            received.path.unlink(missing_ok=True)
        return {"app": app.name, "version": version, "path": str(done.path), "sha256": done.sha256, "size": done.size,
                "unchanged": False, "warning": done.warning, "checked": True}

    @staticmethod
    def _version_of(app: AppConfig, filename: str | None, version: str | None) -> str:
        if version is not None:
            return version
        if not filename:
            raise InvalidArguments("the release's version is needed: pass --version X.Y.Z",
                                   hint="or send a file named APP-X.Y.Z.tar.gz")
        return releases.version_from_name(app.name, filename)

    @staticmethod
    def _checksum_to_expect(app: AppConfig, display: str, version: str, sha256: str | None, strip: int) -> str | None:
        """The request's other arguments checked; the SHA-256 the tarball must have, if any."""
        versions.validate(version)
        if not 0 <= strip <= MAX_STRIP_COMPONENTS:
            raise InvalidArguments(f"--strip-components must be 0 to {MAX_STRIP_COMPONENTS}, got {strip}")
        return releases.expected_checksum(display, sha256, app.require_checksum)

    async def _install(self, app: AppConfig, upload: Upload, filename: str | None, version: str | None,
                       sha256: str | None, caller: Caller, strip: int) -> dict:
        """The tarball comes with the request (the client read it as the caller): spooled, hashed as it
        arrives, then unpacked from the agent's own copy."""
        display = filename or "the tarball from standard input"
        version = self._version_of(app, filename, version)
        dep = self.store.begin_deployment(app.name, "install", version, None, "installing", caller.label)
        try:
            checksum = self._checksum_to_expect(app, display, version, sha256, strip)
            received = await releases.receive(app, upload, display)
            try:
                existing = self.store.release(app.name, version)
                if existing:
                    return self._already_installed(app, display, version, existing, dep, received.sha256)
                # Unpacking is slow disk work: off the loop, so the agent keeps answering and pinging its watchdog.
                done = await asyncio.to_thread(releases.install, app, received.path, version, checksum, strip,
                                               received.sha256, display)
            finally:
                received.path.unlink(missing_ok=True)
            # Recorded before it is put in place: a killed agent leaves a record without a directory
            # (dropped at the next start), never a directory nobody knows of.
            self.store.add_release(app.name, version, done.instance, done.sha256, done.size)
            failpoints.hit("install-recorded")
            try:
                await asyncio.to_thread(releases.place, done)
            except BloomError:
                self.store.delete_release(app.name, version)
                raise
        except BloomError as err:
            self.store.finish_deployment(dep, "failed", "failed", err.message)
            raise
        self.store.finish_deployment(dep, "done", "done", f"{done.size} bytes, sha256 {done.sha256}")
        events.emit(logging.INFO, events.INSTALLED, f"{app.name}: installed {version} ({done.size} bytes, sha256 "
                    f"{done.sha256}) by {caller.label}", app.name, version, dep, BLOOM_CALLER=caller.label)
        if done.warning:
            log.warning("%s %s: %s", app.name, version, done.warning, extra=events.fields(app.name, version, dep))
        return {"app": app.name, "version": version, "path": str(done.path), "sha256": done.sha256, "size": done.size,
                "unchanged": False, "warning": done.warning}

    @staticmethod
    def _refuse_other_contents(app: AppConfig, name: str, version: str, existing: dict, digest: str) -> None:
        """A version names one release for good: another tarball under it is refused."""
        if digest != existing["sha256"]:
            raise InstallError(
                f"{app.name} {version} is already installed with other contents (sha256 {existing['sha256'][:16]}..., "
                f"{name} has {digest[:16]}...)",
                hint="a version names one release for good: build this one as a new version")

    def _already_installed(self, app: AppConfig, name: str, version: str, existing: dict, dep: int,
                           digest: str) -> dict:
        """The same tarball again is a no-op (a CI job that re-runs)."""
        self._refuse_other_contents(app, name, version, existing, digest)
        self.store.finish_deployment(dep, "done", "unchanged", "already installed with the same contents")
        path = app.releases_dir / existing["instance"]
        return {"app": app.name, "version": version, "path": str(path), "sha256": digest, "size": existing["size"],
                "unchanged": True, "warning": ""}

    async def remove(self, name: str, version: str, caller: Caller) -> dict:
        app = self.app(name)
        holder = self._acquire(name, "remove", caller.user)
        try:
            row = self.store.release(name, version)
            if row is None:
                raise ReleaseError(f"{name} {version} is not installed", hint=f"see: bloomctl releases {name}")
            reason = await self._in_use(app, version)
            if reason:
                raise ReleaseError(f"cannot remove {name} {version}: {reason}")
            await asyncio.to_thread(releases.remove_release, app, row["instance"])
            self.store.delete_release(name, version)
            dep = self.store.begin_deployment(name, "remove", version, None, "removing", caller.label)
            self.store.finish_deployment(dep, "done", "done")
            events.emit(logging.INFO, events.REMOVED, f"{name}: removed {version} by {caller.label}", name, version, dep,
                        BLOOM_CALLER=caller.label)
            return {"app": name, "version": version, "removed": True}
        finally:
            self._release(name, holder)

    async def remove_app(self, name: str, caller: Caller) -> dict:
        """Take an app off the host: its releases stopped, its socket closed, its units, drop-ins,
        releases and app file removed, its releases and state forgotten (its history stays)."""
        app = self.app(name)
        holder = self._acquire(name, "app removal", caller.user)
        try:
            stopped = []
            for status in await self.systemd.instances(f"{name}@*.service"):
                await self.switcher.retire(status.name)
                stopped.append(status.name)
            await self.switcher.retire(app.socket_unit)
            await self.systemd.disable(app.socket_unit)
            self.units.remove_app_units(app)
            await self.systemd.daemon_reload()
            await asyncio.to_thread(releases.remove_all, app)
            app.path.unlink(missing_ok=True)
            self.store.forget_app(name)
            dep = self.store.begin_deployment(name, "remove-app", "-", None, "removing", caller.label)
            self.store.finish_deployment(dep, "done", "done", f"stopped {', '.join(stopped) or 'nothing'}; "
                                         f"units, releases and {app.path.name} removed")
            del self.apps[name]
            events.emit(logging.WARNING, events.APP_REMOVED, f"{name}: app removed by {caller.label}", name,
                        deployment=dep, BLOOM_CALLER=caller.label)
            return {"app": name, "removed": True, "stopped": stopped, "file": str(app.path)}
        finally:
            self._release(name, holder)

    async def relisten(self, name: str, caller: Caller) -> dict:
        """Put the app file's socket in place now, the least disruptive way systemd allows
        (``deploy/relisten.py``), and restart the serving release on it; recorded in the history."""
        app = self.app(name)
        with self.holding(name, "relisten", caller.user):
            current = self.store.app_state(name)["current"]
            serving = app.instance_unit(versions.instance(current)) if current else None
            dep = self.store.begin_deployment(name, "relisten", current or "-", None, "relistening", caller.label)
            try:
                done = await relisten.apply(self.systemd, self.units, app, serving, self.systemd.daemon_reload,
                                            restart=True)
            except BloomError as err:
                self.store.finish_deployment(dep, "failed", "failed", err.message)
                raise
            self.store.finish_deployment(dep, "done", "done", done.text())
            log.info("%s (by %s)", done.text(), caller.label, extra=events.fields(name, current, dep))
            return done.as_dict()

    async def _in_use(self, app: AppConfig, version: str) -> str:
        state = self.store.app_state(app.name)
        if version == state["current"]:
            return "it is the current release"
        if version == state["last_good"]:
            return "it is the last good release"
        if version == self._previous_good(app.name):
            return "it is the release 'bloomctl rollback' goes to"
        if version == self._served_before(app.name):
            return "it served before the current release"
        if (await self.systemd.status(app.instance_unit(versions.instance(version)))).running:
            return "it is running"
        return ""

    async def cleanup(self, app: AppConfig) -> list[str]:
        """Keep keep_releases. What goes first: failed and rolled-back releases, then ones never run,
        then the oldest good ones; never one in use (current, last good, the rollback target, the one
        that served before the current one, anything running)."""
        rows = self.store.releases(app.name)
        excess = len(rows) - app.keep_releases
        if excess <= 0:
            return []
        candidates = sorted(rows, key=lambda r: (RETENTION_ORDER.get(r["status"], len(RETENTION_ORDER)),
                                                 r["installed_at"]))
        removed = []
        for row in candidates:
            if len(removed) == excess:
                break
            if await self._in_use(app, row["version"]):
                continue
            await asyncio.to_thread(releases.remove_release, app, row["instance"])
            self.store.delete_release(app.name, row["version"])
            removed.append(row["version"])
            events.emit(logging.INFO, events.REMOVED, f"{app.name}: removed {row['version']} (keep_releases)", app.name,
                        row["version"])
        if removed:
            log.info("%s: cleaned up old releases %s", app.name, ", ".join(removed))
        return removed

    # -- switch / rollback ----------------------------------------------------------------------

    async def switch(self, name: str, version: str, caller: Caller, progress: Progress = no_progress,
                     wait: bool = True, action: str = "switch") -> dict:
        app = self.app(name)
        holder = self._acquire(name, f"{action} to {version}", caller.user)
        return await self._switch_holding(app, version, caller, holder, progress, wait, action)

    async def _switch_holding(self, app: AppConfig, version: str, caller: Caller, holder: Holder,
                              progress: Progress, wait: bool, action: str) -> dict:
        """The switch, with the app's lock already held: the lock goes with the switch's task."""
        try:
            release = self.store.release(app.name, version)
            if release is None:
                raise ReleaseError(f"{app.name} {version} is not installed",
                                   hint=f"install it first: bloomctl install {app.name} TARBALL")
            current = self.store.app_state(app.name)["current"]
            if version == current:
                raise ReleaseError(f"{app.name} is already on {version}")
            dep = self.switcher.begin(app, action, version, caller.label)
        except BaseException:
            self._release(app.name, holder)
            raise
        holder.operation, holder.deployment = f"{action} to {version}", dep
        holder.listeners.append(progress)
        task = holder.task = asyncio.ensure_future(self._run(app, dep, holder, holder.tell))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not wait:
            return {"app": app.name, "deployment": dep.id, "version": version, "from_version": dep.old,
                    "outcome": "started", "exit_code": 0, "reason": ""}
        # shield: a client that goes away must not cancel the switch itself
        outcome = await asyncio.shield(task)
        if outcome is None:
            raise BloomError(f"the agent is stopping; the {action} of {app.name} to {version} resumes when it starts "
                             f"again", hint=f"then: bloomctl status {app.name}")
        return outcome.as_dict()

    async def deploy(self, name: str, upload: Upload, filename: str | None, version: str | None, sha256: str | None,
                     caller: Caller, progress: Progress = no_progress, wait: bool = True, strip: int = 0) -> dict:
        """Install, then switch, under one hold of the app's lock: no other operation comes between.
        Deploying again what is installed and serving is a successful no-op."""
        app = self.app(name)
        holder = self._acquire(name, "deploy", caller.user)
        handed_over = False
        try:
            installed = await self._install(app, upload, filename, version, sha256, caller, strip)
            version = installed["version"]
            if installed["warning"]:
                progress({"step": "installed", "version": version, "warning": installed["warning"]})
            if installed["unchanged"]:
                return self._deployed_again(name, version)
            progress({"step": "installed", "version": version})
            handed_over = True
            return await self._switch_holding(app, version, caller, holder, progress, wait, "switch")
        finally:
            if not handed_over:
                self._release(name, holder)

    def _deployed_again(self, name: str, version: str) -> dict:
        current = self.store.app_state(name)["current"]
        if version != current:
            raise ReleaseError(f"{name} {version} is already installed but not serving (current: {current or 'none'})",
                               hint=f"to serve it: bloomctl switch {name} {version}")
        return {"app": name, "deployment": None, "version": version, "from_version": version,
                "outcome": "unchanged", "exit_code": 0, "serving": version, "timings": {},
                "reason": f"{name} {version} is already installed and serving; nothing to do"}

    async def _run(self, app: AppConfig, dep: Deployment, holder: Holder, progress: Progress) -> Outcome | None:
        try:
            outcome = await self.switcher.run(dep, progress)
            if outcome is None:
                return None  # left where it was for the next start: the agent is stopping
            if outcome.outcome == "done":
                await self.cleanup(app)
                await run_hooks("switch", app.on_switch, outcome.as_dict())
            elif outcome.outcome == "degraded":
                _log_rollback_failure(outcome)
                await run_hooks("rollback_failure", app.on_rollback_failure, outcome.as_dict())
            else:
                await run_hooks("rollback", app.on_rollback, outcome.as_dict())
            self._prune_history(app.name)
            return outcome
        finally:
            self._release(app.name, holder)
            self.on_change()

    def _prune_history(self, name: str) -> None:
        """After a switch that ended (not one left to the next start): the history's retention. Never
        the switch's business to fail on."""
        try:
            pruned = self.store.prune_history(name, self.history_keep)
        except Exception as exc:
            log.warning("%s: history not pruned: %s", name, exc)
            return
        if pruned:
            log.info("%s: %d old deployment(s) deleted from the history (agent.history_keep = %d)", name, pruned,
                     self.history_keep)

    async def rollback(self, name: str, to: str | None, caller: Caller, progress: Progress = no_progress,
                       wait: bool = True) -> dict:
        app = self.app(name)
        holder = self._holders.get(name)
        if holder is not None and holder.deployment is not None and holder.deployment.step is Step.PROBATION:
            # Fast path: abort the probation in progress; its own rollback does the reverse swap.
            dep = holder.deployment
            if to is not None and to != dep.old:
                raise Busy(holder.describe(name), hint=f"during probation a rollback goes back to {dep.old}; "
                                                       f"run 'bloomctl rollback {name}' without --to")
            dep.abort_reason = f"rollback requested by {caller.label}"
            dep.abort.set()
            if wait and holder.task is not None:
                return (await asyncio.shield(holder.task)).as_dict()
            return {"app": name, "deployment": dep.id, "outcome": "aborting", "exit_code": 0, "reason": dep.abort_reason,
                    "version": dep.new, "from_version": dep.old}
        target = to or self._previous_good(name)
        if target is None:
            raise ReleaseError(f"{name} has no earlier good release to roll back to", hint=f"see: bloomctl releases {name}")
        row = self.store.release(name, target)
        if row is None:
            raise ReleaseError(f"{name} {target} is not installed")
        if row["status"] == "failed":
            raise ReleaseError(f"{name} {target} failed before ({row['reason']}); refusing to roll back to it",
                               hint="pick another version with --to")
        return await self.switch(name, target, caller, progress, wait, action="rollback")

    def _served_before(self, name: str) -> str | None:
        """The release that served before the current one, whatever became of it."""
        current = self.store.app_state(name)["current"]
        return next((v for v in self._served_newest_first(name) if v != current), None)

    def _previous_good(self, name: str) -> str | None:
        """Where a plain 'bloomctl rollback' goes: back through the releases that served, newest first,
        to the first that is still good (not failed, not rolled back) and installed; failing that, the
        newest installed good release the history no longer mentions."""
        current = self.store.app_state(name)["current"]
        status = {r["version"]: r["status"] for r in self.store.releases(name)}
        for version in self._served_newest_first(name):
            if version != current and status.get(version) == "good":
                return version
        good = [r for r in self.store.releases(name) if r["status"] == "good" and r["version"] != current]
        return max((r["version"] for r in good), key=_good_order(self.store, name), default=None)

    def _served_newest_first(self, name: str) -> list[str]:
        order = []
        for change in self.store.serving_changes(name):
            for version in (change["version"], change["from_version"]):
                if version is not None and version not in order:
                    order.append(version)
        return order

    # -- reporting --------------------------------------------------------------------------------

    def release_rows(self, name: str) -> list[dict]:
        self.app(name)
        state = self.store.app_state(name)
        previous = self._previous_good(name)
        rows = []
        for r in self.store.releases(name):
            status = r["status"]
            if r["version"] == state["current"]:
                status = "current" if status == "good" else f"current ({status})"
            elif r["version"] == previous:
                status = "previous"
            rows.append({"version": r["version"], "status": status, "reason": r["reason"],
                         "installed_at": r["installed_at"], "sha256": r["sha256"], "size": r["size"]})
        return rows

    async def app_status(self, name: str) -> dict[str, Any]:
        return (await self.app_statuses([name]))[0]

    async def app_statuses(self, names: list[str]) -> list[dict[str, Any]]:
        """The status of each app, from one question to systemd for all of them: `bloomctl status` and
        the metrics file ask for every app, and at fifty apps a round of calls per app showed."""
        apps = [self.app(name) for name in names]
        states = await self.systemd.active_states([f"{name}@*.service" for name in names])
        return [self._app_status(app, sorted(unit for unit, active in states.items()
                                             if unit.startswith(f"{app.name}@") and is_running(active)))
                for app in apps]

    def _app_status(self, app: AppConfig, running: list[str]) -> dict[str, Any]:
        name = app.name
        state = self.store.app_state(name)
        holder = self._holders.get(name)
        if holder is not None:
            text = holder.deployment.step.value if holder.deployment else holder.operation
        elif state["degraded"]:
            text = "degraded"
        elif state["current"]:
            text = "serving"
        else:
            text = "not deployed"
        current_unit = app.instance_unit(versions.instance(state["current"])) if state["current"] else None
        # What `bloomctl status` exits on: a release of the app is up, and nothing is wrong with the app.
        serving = current_unit in running and not state["degraded"]
        return {**describe(app), "current": state["current"], "last_good": state["last_good"], "state": text,
                "degraded": state["degraded"], "running": running, "serving": serving,
                "busy": holder.describe(name) if holder else None}

    def systemd_problem(self) -> str:
        """Empty when systemd answers; otherwise why not (app operations cannot work then)."""
        return getattr(self.systemd, "why", "")

    async def health(self, name: str) -> dict[str, Any]:
        """Run every declared check once, now, against the current release."""
        app = self.app(name)
        current = self.store.app_state(name)["current"]
        if current is None:
            raise ReleaseError(f"{name} has no current release to check", hint=f"deploy one: bloomctl deploy {name} TARBALL")
        unit = app.instance_unit(versions.instance(current))
        target = Target(name, current, unit, self.systemd.unit_metrics)
        status = await self.systemd.status(unit)
        results = [{"name": "unit", "ok": status.active, "detail": status.describe(), "seconds": 0.0}]
        results += [(await run_check(spec, target)).as_dict() for spec in app.health_checks]
        return {"app": name, "version": current, "healthy": all(r["ok"] for r in results), "checks": results}

    def history(self, name: str, limit: int) -> list[dict]:
        self.app(name)
        backups = {b["deployment"]: b["id"] for b in self.store.backups(name) if b["deployment"]}
        migrations = {m["deployment"]: m["state"] for m in self.store.migrations(name, limit)}
        return [{"id": r["id"], "action": r["action"], "version": r["version"], "from": r["from_version"],
                 "outcome": r["outcome"] or r["step"], "reason": r["reason"], "caller": r["caller"],
                 "started_at": r["started_at"], "finished_at": r["finished_at"], "backup": backups.get(r["id"]),
                 "migration": migrations.get(r["id"])}
                for r in self.store.history(name, limit)]

    async def wait(self, name: str, progress: Progress = no_progress) -> dict:
        """Attach to the app's switch or rollback in flight and return its outcome; with none in flight,
        the outcome of the last one."""
        self.app(name)
        while (holder := self._holders.get(name)) is not None and holder.task is None:
            await asyncio.sleep(WAIT_POLL_SEC)  # an install, or a deploy's install, before its switch
        if holder is None:
            row = self.store.last_switch(name)
            if row is None:
                raise ReleaseError(f"{name} has no switch or rollback to wait for", hint=f"see: bloomctl history {name}")
            outcome = row["outcome"] or row["step"]
            return {"app": name, "deployment": row["id"], "action": row["action"], "version": row["version"],
                    "from_version": row["from_version"], "outcome": outcome, "exit_code": OUTCOME_CODES.get(outcome, 1),
                    "reason": row["reason"], "serving": self.store.app_state(name)["current"], "timings": {}}
        holder.listeners.append(progress)
        try:
            outcome = await asyncio.shield(holder.task)
        finally:
            holder.listeners.remove(progress)
        if outcome is None:
            raise BloomError(f"the agent is stopping; the switch of {name} resumes when it starts again")
        return outcome.as_dict()

    def show(self, name: str, deployment: int | None) -> dict:
        """One deployment (the newest switch or rollback by default) with its steps and their times."""
        self.app(name)
        if deployment is None:
            row = self.store.last_switch(name)
            if row is None:
                raise ReleaseError(f"{name} has no switch or rollback yet", hint=f"see: bloomctl history {name}")
        else:
            row = self.store.deployment(deployment)
            if row is None or row["app"] != name:
                raise ReleaseError(f"{name} has no deployment {deployment}", hint=f"see: bloomctl history {name}")
        steps = self.store.steps(row["id"])
        for step, following in zip(steps, steps[1:] + [None]):
            step["seconds"] = round(seconds_between(step["at"], following["at"]), 3) if following else None
        return {"id": row["id"], "app": name, "action": row["action"], "version": row["version"],
                "from": row["from_version"], "outcome": row["outcome"] or row["step"], "reason": row["reason"],
                "caller": row["caller"], "started_at": row["started_at"], "finished_at": row["finished_at"],
                "steps": steps}

    # -- after an agent restart ----------------------------------------------------------------------

    def claim_unfinished(self) -> list[tuple[AppConfig, Deployment, Holder]]:
        """What a killed agent left in flight, each app held for its resumption. Called before the
        control socket opens, so that no request can take an app whose switch is to be resumed."""
        claimed = []
        for row in self.store.unfinished_deployments():
            app = self.apps.get(row["app"])
            if app is None:
                self.store.finish_deployment(row["id"], row["step"], "abandoned", "app no longer configured")
                continue
            if row["action"] not in ("switch", "rollback"):
                # install, remove, reconcile: nothing to resume; their leftovers are swept by _settle.
                self.store.finish_deployment(row["id"], "failed", "failed", f"the agent restarted during the {row['action']}")
                continue
            if app.name in self._holders:
                # Two unfinished switches of one app cannot both be resumed; the later wins, this one is closed.
                self.store.finish_deployment(row["id"], row["step"], "abandoned", "superseded by a later deployment")
                continue
            dep = self.switcher.resumed(app, row)
            holder = self._acquire(app.name, f"{dep.action} to {dep.new} (resumed)", "bloom-agent")
            holder.deployment = dep
            claimed.append((app, dep, holder))
        return claimed

    async def reconcile(self, claimed: list[tuple[AppConfig, Deployment, Holder]]) -> None:
        """Finish what a killed agent left, then make sure each app has exactly one serving release.
        An app a request holds meanwhile is left to that request, which settles it on its own."""
        for app, dep, holder in claimed:
            await self._run(app, dep, holder, no_progress)
        for leftover in releases.remove_root_leftovers(self.releases_root):
            log.warning("removed %s, left by an app removal that did not finish", leftover)
        for app in list(self.apps.values()):
            try:
                holder = self._acquire(app.name, "reconcile", "bloom-agent")
            except Busy:
                log.info("%s: busy with a request; not reconciled", app.name)
                continue
            try:
                await self._settle(app)
            finally:
                self._release(app.name, holder)

    async def _settle(self, app: AppConfig) -> None:
        releases.remove_staging_leftovers(app)
        state = self.store.app_state(app.name)
        current = state["current"]
        actions = []
        for row in self.store.releases(app.name):
            # An install killed between its record and its rename: the record goes, nothing else was there.
            if row["status"] == "installed" and row["version"] not in (current, state["last_good"]) and \
                    not (app.releases_dir / row["instance"]).is_dir():
                self.store.delete_release(app.name, row["version"])
                actions.append(f"forgot {row['version']}, whose install did not finish")
        if current is not None:
            unit = app.instance_unit(versions.instance(current))
            if not (await self.systemd.status(unit)).active:
                result = await self.systemd.start(unit)
                actions.append(f"started {current} ({result})")
        for status in await self.systemd.instances(f"{app.name}@*.service"):
            if not status.running:
                continue
            if current is None or status.name != app.instance_unit(versions.instance(current)):
                await self.systemd.stop(status.name)
                await self.systemd.reset_failed(status.name)
                actions.append(f"stopped stray {status.name}")
        if actions:
            dep = self.store.begin_deployment(app.name, "reconcile", current or "-", None, "reconciling", "bloom-agent")
            self.store.finish_deployment(dep, "done", "done", "; ".join(actions))
            log.warning("%s: reconciled after restart: %s", app.name, "; ".join(actions))

    async def shutdown(self) -> None:
        """Leave switches in flight to the next agent: their steps are recorded. A step waiting for
        the agent's stop (probation while the host shuts down) ends on its own; the rest are cancelled."""
        self.switcher.stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_SEC)
            for task in pending:
                task.cancel()


# How often 'bloomctl wait' looks whether an install has turned into a switch.
WAIT_POLL_SEC = 0.1
# bloomctl's exit code for each outcome a finished switch can have.
OUTCOME_CODES = {outcome: code for outcome, code in OUTCOMES.values()}

# How long switches in flight get to notice the agent's stop before they are cancelled.
STOP_GRACE_SEC = 0.5

# More than a build directory and a prefix or two is a packing mistake, not a layout.
MAX_STRIP_COMPONENTS = 3

# Which releases retention removes first; unknown statuses after these, then the oldest first.
RETENTION_ORDER = {"failed": 0, "rolled-back": 0, "installed": 1, "good": 2}

def _log_rollback_failure(outcome: Outcome) -> None:
    events.emit(logging.CRITICAL, events.ROLLBACK_FAILED,
                f"{outcome.app}: rollback failed, app degraded: {outcome.reason} "
                f"(switch {outcome.from_version} -> {outcome.version}; serving {outcome.serving})",
                outcome.app, outcome.version, outcome.deployment)


def _good_order(store: StateStore, name: str):
    installed = {r["version"]: r["installed_at"] for r in store.releases(name)}
    return lambda version: installed.get(version, "")
