"""The switch as a state machine: one table of steps and transitions, no I/O.

The runner (switcher.py) records a step in the database *before* it does that step's I/O, then
feeds the step's result ("ok" or "fail") back through ``next_step``. An agent killed at any moment
finds the last recorded step on restart and resumes from ``RESUME_AFTER_RESTART``: every step's I/O is
written to be safe to run twice, so resuming is just running the step again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

from bloom_agent.store import versions

if TYPE_CHECKING:
    from bloom_agent.config.apps import AppConfig


class Step(str, Enum):
    # Steps that do not apply to a deployment are passed over (``next_step``'s ``skip``): no pre_switch
    # commands, no [database] migrate, no migration to undo.
    PREPARING = "preparing"          # pre_switch commands in NEW's directory
    UNDOING_PAST = "undoing-migrations"  # a rollback: OLD stopped, the migrations since NEW served undone
    BACKING_UP = "backing-up"        # the database backed up (if migrations are pending)
    MIGRATING = "migrating"          # NEW's migrations applied, OLD still serving
    STARTING = "starting"            # start APP@NEW beside OLD, wait for READY
    CHECKING = "checking"            # pre-switch checks on NEW
    STOPPING_OLD = "stopping-old"    # SIGTERM to OLD, which drains; NEW now serves alone
    POINTING = "pointing"            # the socket's Service= names NEW (trial layer), daemon-reload
    PROBATION = "probation"          # watch NEW for probation_sec
    BLESSING = "blessing"            # NEW becomes the release a reboot comes back to
    UNDOING_MIGRATION = "undoing-migration"  # before OLD stopped: NEW stopped, its migration undone
    REVERTING = "reverting"          # before OLD stopped: stop NEW, socket back to OLD
    ROLLING_BACK_DATABASE = "rolling-back-database"  # after OLD stopped: NEW stopped, its migration undone
    ROLLING_BACK = "rolling-back"    # after OLD stopped: start OLD, socket to OLD, stop NEW
    DONE = "done"
    FAILED = "failed"                # NEW refused; OLD kept serving throughout
    ROLLED_BACK = "rolled-back"      # NEW misbehaved after taking over; OLD serves again
    DEGRADED = "degraded"            # the way back failed too

    def __str__(self) -> str:
        return self.value


OK, FAIL = "ok", "fail"
# The way back itself failed (a restore, a migrate_down): an operator must look, whatever the step.
BROKEN = "broken"
# A step's fourth answer: no verdict, the agent is stopping; the deployment stays in its recorded step
# and the next start resumes it (RESUME_AFTER_RESTART).
LEFT = "left"

FIRST_STEP = Step.PREPARING
TERMINAL = frozenset({Step.DONE, Step.FAILED, Step.ROLLED_BACK, Step.DEGRADED})

TRANSITIONS: dict[tuple[Step, str], Step] = {
    # Nothing has changed before the migration: a failure refuses the switch.
    (Step.PREPARING, OK): Step.UNDOING_PAST,
    (Step.PREPARING, FAIL): Step.REVERTING,
    (Step.UNDOING_PAST, OK): Step.BACKING_UP,
    (Step.UNDOING_PAST, FAIL): Step.REVERTING,
    (Step.BACKING_UP, OK): Step.MIGRATING,
    (Step.BACKING_UP, FAIL): Step.REVERTING,
    (Step.MIGRATING, OK): Step.STARTING,
    (Step.MIGRATING, FAIL): Step.UNDOING_MIGRATION,
    (Step.STARTING, OK): Step.CHECKING,
    (Step.STARTING, FAIL): Step.UNDOING_MIGRATION,
    (Step.CHECKING, OK): Step.STOPPING_OLD,
    (Step.CHECKING, FAIL): Step.UNDOING_MIGRATION,
    (Step.UNDOING_MIGRATION, OK): Step.REVERTING,
    (Step.UNDOING_MIGRATION, FAIL): Step.DEGRADED,
    # systemd kills what has not drained by TimeoutStopSec, so this fails only if systemd is unreachable:
    # NEW may be serving alone already, so the way back is the reverse swap.
    (Step.STOPPING_OLD, OK): Step.POINTING,
    (Step.STOPPING_OLD, FAIL): Step.ROLLING_BACK_DATABASE,
    # The pointer (and its daemon-reload) comes after requests have moved, never on the path that
    # decides when they move: systemd reads Service= only when no release runs, and NEW runs.
    (Step.POINTING, OK): Step.PROBATION,
    (Step.POINTING, FAIL): Step.ROLLING_BACK_DATABASE,
    (Step.PROBATION, OK): Step.BLESSING,
    (Step.PROBATION, FAIL): Step.ROLLING_BACK_DATABASE,
    (Step.ROLLING_BACK_DATABASE, OK): Step.ROLLING_BACK,
    (Step.ROLLING_BACK_DATABASE, FAIL): Step.DEGRADED,
    (Step.BLESSING, OK): Step.DONE,
    # NEW serves and passed probation, but could not be made permanent: an operator must look.
    (Step.BLESSING, FAIL): Step.DEGRADED,
    (Step.REVERTING, OK): Step.FAILED,
    (Step.REVERTING, FAIL): Step.DEGRADED,
    (Step.ROLLING_BACK, OK): Step.ROLLED_BACK,
    (Step.ROLLING_BACK, FAIL): Step.DEGRADED,
}

# Where an interrupted deployment continues when the agent starts again. Before OLD was told to stop,
# the safe answer is OLD (it never stopped serving); from then on NEW is serving, so carry on with it.
RESUME_AFTER_RESTART: dict[Step, Step] = {
    Step.PREPARING: Step.REVERTING,
    Step.UNDOING_PAST: Step.UNDOING_PAST,  # a restore is safe to run again; what it undid is recorded
    Step.BACKING_UP: Step.REVERTING,       # the partial backup is swept; no migration ran
    Step.MIGRATING: Step.UNDOING_MIGRATION,  # a migration cut short: undo whatever it did
    Step.STARTING: Step.UNDOING_MIGRATION,
    Step.CHECKING: Step.UNDOING_MIGRATION,
    Step.UNDOING_MIGRATION: Step.UNDOING_MIGRATION,
    Step.ROLLING_BACK_DATABASE: Step.ROLLING_BACK_DATABASE,
    Step.STOPPING_OLD: Step.STOPPING_OLD,
    Step.POINTING: Step.POINTING,
    Step.PROBATION: Step.PROBATION,
    Step.BLESSING: Step.BLESSING,
    Step.REVERTING: Step.REVERTING,
    Step.ROLLING_BACK: Step.ROLLING_BACK,
}

# The outcome reported for each terminal step, and bloomctl's exit code for it.
OUTCOMES: dict[Step, tuple[str, int]] = {
    Step.DONE: ("done", 0),
    Step.FAILED: ("failed", 3),
    Step.ROLLED_BACK: ("rolled-back", 3),
    Step.DEGRADED: ("degraded", 4),
}


class InvalidTransition(Exception):
    pass


def next_step(step: Step, result: str, skip: Callable[[Step], bool] = lambda _: False) -> Step:
    """The step after ``step`` answered ``result``, passing over the steps ``skip`` says do not apply."""
    if result == BROKEN:
        return Step.DEGRADED
    try:
        return settle(TRANSITIONS[(step, result)], skip)
    except KeyError:
        raise InvalidTransition(f"no transition from {step} on {result!r}") from None


def settle(step: Step, skip: Callable[[Step], bool]) -> Step:
    """``step``, or the first step after it that applies: a step passed over counts as done."""
    while step not in TERMINAL and skip(step):
        step = TRANSITIONS[(step, OK)]
    return step


def serving_version(step: Step, old: str | None, new: str) -> str | None:
    """Which release is meant to serve once a deployment in ``step`` settles."""
    if step in (Step.PREPARING, Step.UNDOING_PAST, Step.BACKING_UP, Step.MIGRATING, Step.STARTING, Step.CHECKING,
                Step.UNDOING_MIGRATION, Step.REVERTING, Step.FAILED, Step.ROLLING_BACK_DATABASE, Step.ROLLING_BACK,
                Step.ROLLED_BACK):
        return old
    return new


@dataclass
class Deployment:
    """One switch in flight: what it moves between, and what it has learned on the way."""

    id: int
    app: "AppConfig"
    action: str
    new: str
    old: str | None
    caller: str
    reason: str = ""
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    abort_reason: str = ""
    step: Step = FIRST_STEP
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    # seconds spent in each step (and in daemon-reload), for bloomctl --json and the benchmark
    timings: dict[str, float] = field(default_factory=dict)

    def unit(self, version: str) -> str:
        return self.app.instance_unit(versions.instance(version))

    @property
    def fields(self) -> dict:
        """Journal fields of every line about this deployment."""
        return {"BLOOM_APP": self.app.name, "BLOOM_VERSION": self.new, "BLOOM_DEPLOYMENT": self.id}

    @property
    def new_unit(self) -> str:
        return self.unit(self.new)

    @property
    def old_unit(self) -> str | None:
        return self.unit(self.old) if self.old else None


@dataclass(frozen=True)
class Outcome:
    deployment: int
    app: str
    action: str
    version: str
    from_version: str | None
    outcome: str
    exit_code: int
    reason: str
    serving: str | None
    timings: dict[str, float]

    def as_dict(self) -> dict:
        return self.__dict__.copy()
