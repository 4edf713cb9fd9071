"""The agent's metrics as a node_exporter textfile (bloom.prom), written whole and renamed into place.

Everything is read from the state database and the app manager when the file is written (on every
finished deployment, and every few seconds): nothing is counted twice, and an agent that restarts
reports the same totals. Off when the directory does not exist (no node_exporter on the host).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from bloom_agent import __version__
from bloom_agent.deploy.manager import AppManager
from bloom_agent.deploy.switcher import trigger
from bloom_agent.store.state import seconds_between

log = logging.getLogger(__name__)

FILE_NAME = "bloom.prom"
# Seconds: a switch is usually a few seconds plus probation; a probation from seconds to an hour.
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STATES = ("serving", "probation", "switching", "degraded", "stopped")


class TextfileExporter:
    def __init__(self, directory: Path, apps: AppManager) -> None:
        self.path = directory / FILE_NAME
        self.apps = apps
        self._warned = False
        # app -> (its newest finished deployment, its finished switches): rebuilt only when one more ended,
        # not every few seconds (at fifty apps with long histories that query was the agent's idle CPU).
        self._history: dict[str, tuple[int | None, list[dict]]] = {}

    def _finished_switches(self, app: str) -> list[dict]:
        newest = self.apps.store.last_finished_deployment(app)
        cached = self._history.get(app)
        if cached is None or cached[0] != newest:
            cached = self._history[app] = (newest, self.apps.store.finished_switches(app))
        return cached[1]

    @property
    def enabled(self) -> bool:
        return self.path.parent.is_dir()

    async def write(self, up: bool = True) -> None:
        """``up=False`` when the agent stops: the file stays, and says the agent is down."""
        if not self.enabled:
            return
        from prometheus_client import write_to_textfile  # only where there is somewhere to write

        try:
            write_to_textfile(str(self.path), await self.registry(up))
            self._warned = False
        except Exception as exc:  # a full disk, systemd busy or unreachable: metrics never stop the agent
            if not self._warned:  # once, not every few seconds
                log.warning("cannot write metrics to %s: %s", self.path, exc)
                self._warned = True

    async def registry(self, up: bool = True):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()
        Gauge("bloom_agent_up", "1 while the agent runs", registry=registry).set(1 if up else 0)
        Gauge("bloom_agent_info", "The agent's version", ["version"], registry=registry).labels(__version__).set(1)
        release = Gauge("bloom_app_release_info", "The app's current release", ["app", "version"], registry=registry)
        state = Gauge("bloom_app_state", "1 for the app's state: " + ", ".join(STATES), ["app", "state"],
                      registry=registry)
        last = Gauge("bloom_app_last_deployment_timestamp_seconds", "When the app's last switch or rollback ended",
                     ["app"], registry=registry)
        errors = Gauge("bloom_app_journal_errors_per_minute",
                       "Errors the journal monitor counts in its minute window, during probation", ["app"],
                       registry=registry)
        deployments = Counter("bloom_deployments", "Switches and rollbacks that ended, by outcome",
                              ["app", "action", "outcome"], registry=registry)
        rollbacks = Counter("bloom_rollbacks", "Releases refused or rolled back, by what tripped", ["app", "trigger"],
                            registry=registry)
        durations = Histogram("bloom_deployment_duration_seconds", "From a switch's start to its end",
                              ["app", "action", "outcome"], buckets=DURATION_BUCKETS, registry=registry)
        probation = Histogram("bloom_probation_duration_seconds", "Time spent in probation", ["app"],
                              buckets=DURATION_BUCKETS, registry=registry)
        names = sorted(self.apps.apps)
        self._history = {app: cached for app, cached in self._history.items() if app in self.apps.apps}
        statuses = await self.apps.app_statuses(names) if names else []
        for name, status in zip(names, statuses):
            if status["current"]:
                release.labels(name, status["current"]).set(1)
            for each in STATES:
                state.labels(name, each).set(1 if _state(status) == each else 0)
            errors.labels(name).set(self.apps.switcher.journal_rates.get(name, 0))
            for row in self._finished_switches(name):
                deployments.labels(name, row["action"], row["outcome"]).inc()
                seconds = max(seconds_between(row["started_at"], row["finished_at"]), 0.0)
                durations.labels(name, row["action"], row["outcome"]).observe(seconds)
                if row["outcome"] in ("rolled-back", "failed"):
                    rollbacks.labels(name, trigger(row["reason"])).inc()
                if row["probation_seconds"] is not None:
                    probation.labels(name).observe(row["probation_seconds"])
                last.labels(name).set(datetime.fromisoformat(row["finished_at"]).timestamp())
        return registry


def _state(status: dict) -> str:
    if status["degraded"]:
        return "degraded"
    if status["state"] == "probation":
        return "probation"
    if status["busy"]:
        return "switching" if status["serving"] else "stopped"
    return "serving" if status["serving"] else "stopped"

