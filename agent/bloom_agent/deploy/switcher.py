"""Runs deployments: the I/O for each step of deployment.py's state machine.

Every step is recorded before its I/O starts, and each step's I/O is safe to repeat, so an agent
killed anywhere resumes by running the recorded step again (``resume``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bloom_agent.config.apps import AppConfig
from bloom_agent.deploy import events, failpoints, relisten
from bloom_agent.database.guard import TO_UNDO, DatabaseGuard
from bloom_agent.deploy.deployment import (BROKEN, FAIL, FIRST_STEP, LEFT, OK, OUTCOMES, RESUME_AFTER_RESTART, TERMINAL,
                                          Deployment, Outcome, Step, next_step, settle)
from bloom_agent.errors import DatabaseError
from bloom_agent.store import versions
from bloom_agent.store.state import StateStore
from bloom_agent.systemd import unitfailure
from bloom_agent.systemd.adapter import Systemd
from bloom_agent.systemd.unitfiles import UnitWriter
from bloom_agent.watch import monitors
from bloom_agent.watch.checks import Target, run_check

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]
# A rollback's step record once it has undone migrations: from then on the release it left no longer
# fits the database.
UNDONE = "undone: "
# Longest wait for the agent's own stop when the host shuts down during a probation.
SHUTDOWN_WAIT_SEC = 120.0


def no_progress(_: dict) -> None:
    """For callers nobody is waiting on (reconcile, --no-wait)."""


@dataclass(frozen=True)
class Journal:
    """What the switch reads from the journal: a release's error rate in probation, a failed unit's last
    lines. Handed in, like systemd: unit tests have no journal to read."""

    monitor: Callable[..., monitors.Monitor] = monitors.JournalMonitor
    tail: unitfailure.JournalTail = unitfailure.journal_tail


def trigger(reason: str) -> str:
    """What ended a switch, in one word an alert can match (BLOOM_TRIGGER)."""
    for prefix, word in (("probation: crash", "crash"), ("probation: watchdog", "watchdog"),
                         ("probation: journal", "journal"), ("probation: health check", "health-check"),
                         ("rollback requested", "operator"),
                         ("the host rebooted", "reboot"), ("the agent restarted", "agent-restart"),
                         ("probation:", "probation")):
        if reason.startswith(prefix):
            return word
    return "start"  # refused before the switch: not ready, or its pre-switch checks


class Switcher:
    def __init__(self, systemd: Systemd, store: StateStore, units: UnitWriter, journal: Journal = Journal(),
                 database: DatabaseGuard | None = None) -> None:
        self.systemd = systemd
        self.store = store
        self.units = units
        self.database = database
        self.journal_monitor = journal.monitor
        self.journal_tail = journal.tail
        # Set when the agent stops: a step waiting for that (see _probation) leaves the deployment to
        # the next start.
        self.stopping = asyncio.Event()
        self._journal_watch: dict[str, monitors.Monitor] = {}  # app -> its journal monitor in probation

    @property
    def journal_rates(self) -> dict[str, int]:
        """Errors per minute each app's journal monitor sees now (apps in probation only)."""
        return {app: getattr(m, "rate", 0) for app, m in self._journal_watch.items()}

    # -- entry points -----------------------------------------------------------------------

    def begin(self, app: AppConfig, action: str, new: str, caller: str) -> Deployment:
        old = self.store.app_state(app.name)["current"]
        dep_id = self.store.begin_deployment(app.name, action, new, old, str(FIRST_STEP), caller)
        events.emit(logging.INFO, events.STARTED, f"{app.name}: {action} {old or '-'} -> {new} started by {caller}",
                    app.name, new, dep_id, BLOOM_FROM=old or "", BLOOM_CALLER=caller)
        dep = Deployment(id=dep_id, app=app, action=action, new=new, old=old, caller=caller)
        dep.step = settle(FIRST_STEP, lambda step: self.skips(dep, step))
        return dep

    def resumed(self, app: AppConfig, row: dict) -> Deployment:
        dep = Deployment(id=row["id"], app=app, action=row["action"], new=row["version"], old=row["from_version"],
                         caller=row["caller"])
        step = Step(row["step"])
        dep.reason = row["reason"]  # a failure learned before the restart still explains the outcome
        if row["boot_id"] and row["boot_id"] != self.store.boot_id() and step in (Step.STOPPING_OLD, Step.POINTING,
                                                                        Step.PROBATION):
            # Not blessed when the host went down: like an Erlang release never made permanent, go back.
            dep.step = Step.ROLLING_BACK_DATABASE
            dep.reason = f"the host rebooted during step {step}; back on the last good release"
        else:
            dep.step = RESUME_AFTER_RESTART[step]
            if dep.step in (Step.UNDOING_MIGRATION, Step.REVERTING) and step not in (Step.UNDOING_MIGRATION,
                                                                                     Step.REVERTING):
                dep.reason = f"the agent restarted during step {step}"
        log.warning("%s: deployment %d was in step %s when the agent stopped; resuming at %s", app.name, dep.id,
                    step, dep.step, extra=dep.fields)
        return dep

    async def run(self, dep: Deployment, progress: Progress = no_progress) -> Outcome | None:
        """Run the steps to a terminal one; None when a step leaves the deployment to the next start."""
        skip = lambda step: self.skips(dep, step)  # noqa: E731
        step = settle(dep.step, skip)
        while step not in TERMINAL:
            dep.step = step
            self.store.record_step(dep.id, str(step))  # written before the step's I/O
            pause = failpoints.hit(str(step))
            if pause:
                await asyncio.sleep(pause)
            progress({"step": str(step), "version": dep.new, "from": dep.old})
            began = time.monotonic()
            try:
                if step is Step.PROBATION:
                    result = await self._probation(dep, progress)
                else:
                    result = await getattr(self, "_" + step.value.replace("-", "_"))(dep)
            except Exception as exc:  # a step that blows up has failed; the machine decides what next
                log.exception("%s: step %s of deployment %d failed", dep.app.name, step, dep.id, extra=dep.fields)
                self._fail(dep, f"{step}: {exc}")
                result = FAIL
            dep.timings[str(step)] = round(dep.timings.get(str(step), 0) + time.monotonic() - began, 4)
            if result == LEFT:
                log.warning("%s: deployment %d left in step %s for the next start", dep.app.name, dep.id, step,
                            extra=dep.fields)
                return None
            step = next_step(step, result, skip)
        dep.step = step
        outcome, exit_code = OUTCOMES[step]
        self.store.finish_deployment(dep.id, str(step), outcome, dep.reason)
        serving = self.store.app_state(dep.app.name)["current"]
        text = f"{dep.app.name}: {dep.action} {dep.old} -> {dep.new}: {outcome}"
        text += f" ({dep.reason})" if dep.reason else ""
        if exit_code == 3:
            events.emit(logging.ERROR, events.ROLLED_BACK, text, dep.app.name, dep.new, dep.id, BLOOM_OUTCOME=outcome,
                        BLOOM_TRIGGER=trigger(dep.reason), BLOOM_SERVING=serving or "")
        else:  # done; or degraded, which the app manager reports as a failed rollback
            log.log(logging.INFO if exit_code == 0 else logging.CRITICAL, "%s", text,
                    extra={**dep.fields, "BLOOM_OUTCOME": outcome})
        return Outcome(dep.id, dep.app.name, dep.action, dep.new, dep.old, outcome, exit_code, dep.reason, serving,
                       dep.timings)

    def skips(self, dep: Deployment, step: Step) -> bool:
        """Whether ``step`` does not apply to this deployment (deployment.py passes over it)."""
        app = dep.app
        if step is Step.PREPARING:
            return not (app.pre_switch and dep.action == "switch")
        if step is Step.UNDOING_PAST:
            return not (app.database and dep.action == "rollback" and dep.old)
        if step in (Step.BACKING_UP, Step.MIGRATING):
            return not (app.migrates and dep.action == "switch")
        if step is Step.UNDOING_MIGRATION and dep.action == "rollback":
            return not any(s["step"] == str(Step.UNDOING_PAST) and s["detail"].startswith(UNDONE)
                           for s in self.store.steps(dep.id))
        if step in (Step.UNDOING_MIGRATION, Step.ROLLING_BACK_DATABASE):
            migration = self.store.migration_of(dep.id)
            return not (app.database and migration and migration["state"] in TO_UNDO)
        return False

    def release_dir(self, app: AppConfig, version: str) -> Path:
        return app.releases_dir / versions.instance(version)

    # -- steps: each returns OK or FAIL (or BROKEN, the way back failed) -----------------------

    async def _preparing(self, dep: Deployment) -> str:
        for command in dep.app.pre_switch:
            try:
                await self._guard().command(dep.app, "pre_switch command", command, dep.new,
                                            self.release_dir(dep.app, dep.new), dep.app.ready_timeout_sec)
            except DatabaseError as err:
                return self._fail(dep, f"{err.message}; the switch is refused, nothing changed")
        return OK

    def _guard(self) -> DatabaseGuard:
        if self.database is None:
            raise RuntimeError("this agent was built without a database guard")
        return self.database

    async def _backing_up(self, dep: Deployment) -> str:
        app, guard = dep.app, self._guard()
        try:
            pending = await guard.pending(app, dep.new, self.release_dir(app, dep.new))
        except DatabaseError as err:
            return self._fail(dep, f"{err.message}; the switch is refused, nothing changed")
        if not pending:
            log.info("%s: %s has no migrations pending; no backup", app.name, dep.new, extra=dep.fields)
            return OK
        try:
            backup = await guard.take_backup(app, dep.id, dep.old, f"before-{versions.instance(dep.new)}")
        except DatabaseError as err:
            if app.database.backup_required:
                return self._fail(dep, f"{err.message}; the switch is refused, nothing changed")
            log.warning("%s: %s; migrating without a backup (database.backup_required = false)", app.name,
                        err.message, extra=dep.fields)
            backup = None
        self.store.begin_migration(app.name, dep.id, dep.new, dep.old, backup["id"] if backup else None)
        guard.prune(app, guard.needed_backups(app, self.store.app_state(app.name)["last_good"]))
        return OK

    async def _migrating(self, dep: Deployment) -> str:
        migration = self.store.migration_of(dep.id)
        if migration is None:
            return OK  # nothing pending
        try:
            await self._guard().migrate(dep.app, migration["id"], dep.new, self.release_dir(dep.app, dep.new))
        except DatabaseError as err:
            return self._fail(dep, f"migration failed: {err.message}")
        return OK

    async def _undoing_migrations(self, dep: Deployment) -> str:
        """A rollback past releases that migrated: OLD stops (nothing may use the schema it needs while
        it is taken away), their migrations are undone, newest first; NEW then starts on its own schema."""
        app = dep.app
        past = self.store.applied_since(app.name, dep.new)
        if not past:
            return OK
        stopped = False

        async def stop_old() -> None:
            nonlocal stopped
            stopped = True
            await self.retire(dep.old_unit)

        if app.database.rollback_strategy != "skip":
            await stop_old()  # migrate_down too: OLD would run on a schema going away under it
        try:
            done = await self._guard().undo(app, past, lambda v: self.release_dir(app, v), stop_old)
        except DatabaseError as err:
            return await self._database_broken(dep, err, dep.old_unit if stopped else None)
        if done:
            self._note(dep, done)
            self.store.record_step(dep.id, str(Step.UNDOING_PAST), UNDONE + done)
        return OK

    async def _undoing_migration(self, dep: Deployment) -> str:
        """NEW never took over: it stops, and its migration is undone. OLD keeps serving through a
        migrate_down (it has served through the migration too); a restore stops it until the backup is
        back, and the socket holds new connections meanwhile."""
        if dep.action == "rollback":
            self._degrade(dep, f"the database was rolled back for {dep.new}, which then did not start; neither "
                               f"release matches the database now")
            return BROKEN
        await self.retire(dep.new_unit)
        stopped = []

        async def stop_old() -> None:
            if dep.old_unit:
                stopped.append(dep.old_unit)
                await self.retire(dep.old_unit)

        return await self._undo(dep, stop_old, lambda: stopped[0] if stopped else None)

    async def _rolling_back_database(self, dep: Deployment) -> str:
        """NEW took over and failed: it stops before its migration is undone (its writes must not land
        on a schema going back), then the next step starts OLD. Requests wait in the socket meanwhile.
        If the undo fails, NEW comes back: the database is still the one it migrated."""
        await self.retire(dep.new_unit)

        async def nothing_else_writes() -> None:
            return None

        return await self._undo(dep, nothing_else_writes, lambda: dep.new_unit)

    async def _undo(self, dep: Deployment, stop_writers: Callable, restart: Callable[[], str | None]) -> str:
        app = dep.app
        migration = self.store.migration_of(dep.id)
        try:
            done = await self._guard().undo(app, [migration], lambda v: self.release_dir(app, v), stop_writers)
        except DatabaseError as err:
            return await self._database_broken(dep, err, restart())
        self._note(dep, done)
        return OK

    async def _database_broken(self, dep: Deployment, err: DatabaseError, restart: str | None) -> str:
        """The database could not be brought back: start again what served before the undo began (the
        restore is one transaction, so the database is still the one it ran on), and call an operator."""
        why = f"database not rolled back: {err.message}"
        if restart:
            await self.systemd.start(restart)
            why += f"; {restart} started again on the database as it is"
        self._degrade(dep, why)
        return BROKEN

    def _note(self, dep: Deployment, text: str) -> None:
        dep.reason = f"{dep.reason}; {text}" if dep.reason else text
        self.store.set_deployment_reason(dep.id, dep.reason)

    async def _reload(self, dep: Deployment) -> None:
        began = time.monotonic()
        await self.systemd.daemon_reload()
        dep.timings["daemon-reload"] = round(dep.timings.get("daemon-reload", 0) + time.monotonic() - began, 4)

    def _fail(self, dep: Deployment, reason: str) -> str:
        if not dep.reason:
            dep.reason = reason
            self.store.set_deployment_reason(dep.id, reason)
        return FAIL

    async def _starting(self, dep: Deployment) -> str:
        app = dep.app
        since = time.time()
        if dep.old is None:
            # First deploy: the socket must name a release before systemd will start it.
            socket_written = self.units.write_socket(app)  # a change left pending while an older release ran
            if self.units.point_socket(app, versions.instance(dep.new), trial=True) or socket_written:
                await self._reload(dep)
            await self.systemd.enable(app.socket_unit)
            if await self.systemd.start(app.socket_unit) != "done":
                why = f"cannot start {app.socket_unit}: {(await self.systemd.status(app.socket_unit)).describe()}"
                return self._fail(dep, await self._with_journal(why, app.socket_unit, since))
        else:
            await self._apply_socket_change(dep)
        began = time.monotonic()
        result = await self.systemd.start(dep.new_unit)
        status = await self.systemd.status(dep.new_unit)
        if result != "done" or not status.active:
            why = unitfailure.not_ready(status, time.monotonic() - began, app.ready_timeout_sec, app.notify)
            return self._fail(dep, await self._with_journal(why, dep.new_unit, since, app.socket_unit))
        return OK

    async def _apply_socket_change(self, dep: Deployment) -> None:
        """A changed listen left pending by a reload reaches NEW: it starts on the new socket. Dropped
        addresses cost nothing (OLD keeps serving them until it stops); anything else stops OLD first.
        Other socket settings alone (an upgrade's template, socket_mode) wait for 'bloomctl app relisten':
        applying them would close the socket, and a switch is expected to cost nothing."""
        change = self.units.socket_change(dep.app)
        if change.way == "unchanged" or change.old == change.new:
            return
        done = await relisten.apply(self.systemd, self.units, dep.app, dep.old_unit, lambda: self._reload(dep),
                                    restart=False)
        if done.not_listening_sec is not None:
            dep.timings["socket-closed"] = done.not_listening_sec
        log.warning("%s: the socket change left pending (%s) is applied by this switch: %s", dep.app.name,
                    change.describe(), done.way, extra=dep.fields)

    async def _with_journal(self, reason: str, unit: str, since: float, socket_unit: str | None = None) -> str:
        try:
            # A read of the journal's files: off the loop, like any disk work that can take a while.
            lines = await asyncio.to_thread(self.journal_tail, unit, since)
        except Exception as exc:  # the failure is what matters; its quote is a courtesy
            log.warning("cannot read the journal of %s: %s", unit, exc)
            lines = []
        return unitfailure.with_journal(reason, unit, lines, socket_unit)

    async def _checking(self, dep: Deployment) -> str:
        """NEW must be up and pass its pre-switch checks within ready_timeout_sec of its start.

        Checks that go through the app's socket (http, tcp) wait for probation: until OLD stops,
        the shared socket may hand the request to OLD, which would prove nothing about NEW.
        """
        deadline = dep.started_monotonic + dep.app.ready_timeout_sec
        specs = [c for c in dep.app.health_checks if c.type not in ("http", "tcp")]
        target = self._target(dep)
        while True:
            status = await self.systemd.status(dep.new_unit)
            if not status.active or status.n_restarts:
                return self._fail(dep, f"pre-switch check: {status.describe()}")
            failed = [r for r in [await run_check(spec, target) for spec in specs] if not r.ok]
            if not failed:
                return OK
            if time.monotonic() >= deadline:
                return self._fail(dep, f"not healthy within ready_timeout_sec ({dep.app.ready_timeout_sec:g} s): "
                                       + "; ".join(f"{r.name}: {r.detail}" for r in failed))
            await asyncio.sleep(min(min(s.interval_sec for s in specs), max(deadline - time.monotonic(), 0.05)))

    async def _pointing(self, dep: Deployment) -> str:
        if self.units.point_socket(dep.app, versions.instance(dep.new), trial=True):
            await self._reload(dep)
        return OK

    async def _stopping_old(self, dep: Deployment) -> str:
        self.store.set_app_state(dep.app.name, current=dep.new)
        self.store.set_release_status(dep.app.name, dep.new, "probation")
        if dep.old_unit:
            await self.retire(dep.old_unit)  # SIGTERM; the old release drains within TimeoutStopSec
        events.emit(logging.INFO, events.SWITCHED, f"{dep.app.name}: {dep.new} serves alone ({dep.old or 'no release'} "
                    f"stopped); probation {dep.app.probation_sec:g} s", dep.app.name, dep.new, dep.id,
                    BLOOM_FROM=dep.old or "")
        return OK

    def _target(self, dep: Deployment) -> Target:
        return Target(dep.app.name, dep.new, dep.new_unit, self.systemd.unit_metrics)

    def monitors(self, dep: Deployment) -> list[monitors.Monitor]:
        app = dep.app
        watching: list[monitors.Monitor] = [monitors.UnitMonitor(self.systemd, dep.new_unit)]
        journal = self.journal_monitor(dep.new_unit, app.max_error_rate_per_minute, app.error_patterns,
                                       since=dep.started_at)
        self._journal_watch[app.name] = journal
        watching.append(journal)
        watching += [monitors.CheckMonitor(spec, self._target(dep)) for spec in app.health_checks]
        return watching

    async def _probation(self, dep: Deployment, progress: Progress = no_progress) -> str:
        watching = self.monitors(dep)
        progress({"step": "probation", "version": dep.new, "seconds": dep.app.probation_sec,
                  "watching": [m.name for m in watching]})
        ticker = asyncio.ensure_future(self._count_down(dep, progress))

        def extended(seconds: float, why: str) -> None:
            log.warning("%s: probation of %s extended by up to %g s until its health checks reach a verdict: %s",
                        dep.app.name, dep.new, seconds, why, extra=dep.fields)
            progress({"step": "probation", "version": dep.new, "extended": seconds, "why": why})

        try:
            trip = await monitors.probation(watching, dep.app.probation_sec, dep.abort, extended)
        finally:
            ticker.cancel()
            self._journal_watch.pop(dep.app.name, None)
        if dep.abort.is_set():
            return self._fail(dep, dep.abort_reason or "rollback requested")
        if trip and await self.systemd.host_stopping():
            # The host is going down and takes NEW with it: no verdict. Stay in probation until the
            # agent is stopped too; after the reboot the boot-id rule brings back the last good release.
            log.warning("%s: host shutting down during probation of %s (%s); leaving it to the next boot",
                        dep.app.name, dep.new, trip, extra=dep.fields)
            try:
                async with asyncio.timeout(SHUTDOWN_WAIT_SEC):
                    await self.stopping.wait()
                return LEFT
            except TimeoutError:
                pass  # the agent was never stopped after all: the verdict stands
        if trip:
            return self._fail(dep, f"probation: {trip}")
        return OK

    @staticmethod
    async def _count_down(dep: Deployment, progress: Progress) -> None:
        """Tell a waiting bloomctl how long probation has left, every few seconds."""
        end = time.monotonic() + dep.app.probation_sec
        every = min(5.0, max(1.0, dep.app.probation_sec / 6))
        while (left := end - time.monotonic()) > every:
            await asyncio.sleep(every)
            progress({"step": "probation", "version": dep.new, "left": round(end - time.monotonic())})

    async def _blessing(self, dep: Deployment) -> str:
        # The /etc layer now names NEW and the /run layer goes: the effective Service= does not
        # change, so no daemon-reload is needed; a reboot comes back on NEW.
        self.units.point_socket(dep.app, versions.instance(dep.new), trial=False)
        self.store.set_release_status(dep.app.name, dep.new, "good")
        if dep.action == "rollback" and dep.old:
            # The operator left it on purpose: a later plain rollback must not go back to it.
            self.store.set_release_status(dep.app.name, dep.old, "rolled-back",
                                          f"rolled back to {dep.new} by {dep.caller}")
        events.emit(logging.INFO, events.BLESSED, f"{dep.app.name}: {dep.new} passed probation; a reboot comes back to it",
                    dep.app.name, dep.new, dep.id)
        self.store.set_app_state(dep.app.name, current=dep.new, last_good=dep.new, degraded="")
        return OK

    async def _reverting(self, dep: Deployment) -> str:
        app = dep.app
        self.store.set_release_status(app.name, dep.new, "failed", dep.reason)
        if dep.old is None:
            await self._give_up_first_release(dep)
            return OK
        # OLD should never have stopped. If it has and cannot come back, NEW (whatever its state)
        # stays: something that may serve beats nothing that will.
        if not (await self.systemd.status(dep.old_unit)).active and not await self._start_old(dep):
            return FAIL
        await self._hand_back_to_old(dep)
        return OK

    async def _rolling_back(self, dep: Deployment) -> str:
        app = dep.app
        # Aborted by an operator, it did not fail: it was rolled back, which later rollbacks skip too.
        self.store.set_release_status(app.name, dep.new, "rolled-back" if dep.abort.is_set() else "failed",
                                      dep.reason)
        if dep.old is None:
            await self._give_up_first_release(dep)
            dep.reason += "; no earlier release to go back to, so the app is stopped"
            return OK
        # The reverse swap: OLD beside NEW and ready, NEW stopped, then the socket back to OLD.
        if not await self._start_old(dep):
            return FAIL
        await self._hand_back_to_old(dep)
        return OK

    async def _start_old(self, dep: Deployment) -> bool:
        """Start OLD again; if it will not come up, stop it (or systemd keeps restarting it behind
        our back), mark the app degraded and leave NEW where it is."""
        result = await self.systemd.start(dep.old_unit)
        if result == "done" and (await self.systemd.status(dep.old_unit)).active:
            return True
        why = (f"cannot start {dep.old} again ({result}; {(await self.systemd.status(dep.old_unit)).describe()}); "
               f"{dep.new} left running")
        await self.retire(dep.old_unit)
        self._degrade(dep, why)
        return False

    async def _hand_back_to_old(self, dep: Deployment) -> None:
        # NEW goes before the pointer moves back: like the forward switch, the daemon-reload must not
        # stand between a misbehaving release and its removal.
        await self.retire(dep.new_unit)
        self.store.set_app_state(dep.app.name, current=dep.old)
        if self.units.point_socket(dep.app, versions.instance(dep.old), trial=False):
            await self._reload(dep)

    async def retire(self, unit: str) -> None:
        """Stop a unit the agent is done with, and forget its failure: a release that died on SIGTERM
        or never came up must not linger in 'systemctl --failed' and turn the host 'degraded'."""
        await self.systemd.stop(unit)
        await self.systemd.reset_failed(unit)

    def _degrade(self, dep: Deployment, why: str) -> str:
        dep.reason = f"{dep.reason}; {why}" if dep.reason else why
        self.store.set_app_state(dep.app.name, degraded=why)
        return FAIL

    async def _give_up_first_release(self, dep: Deployment) -> None:
        """A first deploy that fails leaves no release: NEW stopped and the socket retired, so
        connections are refused rather than queued for nobody."""
        await self.retire(dep.new_unit)
        self.store.set_app_state(dep.app.name, current=None)
        await self.retire(dep.app.socket_unit)
        await self.systemd.disable(dep.app.socket_unit)
        self.units.clear_socket_pointer(dep.app)
        await self._reload(dep)
