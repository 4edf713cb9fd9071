import pytest

from bloom_agent.deploy.deployment import (
    BROKEN, FAIL, FIRST_STEP, OK, OUTCOMES, RESUME_AFTER_RESTART, TERMINAL, TRANSITIONS, InvalidTransition, Step,
    next_step, serving_version, settle,
)

DATABASE_STEPS = {Step.PREPARING, Step.UNDOING_PAST, Step.BACKING_UP, Step.MIGRATING, Step.UNDOING_MIGRATION,
                  Step.ROLLING_BACK_DATABASE}
# An app without pre_switch commands or a database: the steps of the plain switch.
PLAIN = DATABASE_STEPS.__contains__
# A switch that migrates (and so has a migration to undo).
MIGRATES = {Step.PREPARING, Step.UNDOING_PAST}.__contains__


def walk(results, skip=PLAIN):
    step = settle(FIRST_STEP, skip)
    path = [step]
    for result in results:
        step = next_step(step, result, skip)
        path.append(step)
    return path


def test_happy_path():
    assert walk([OK] * 6) == [Step.STARTING, Step.CHECKING, Step.STOPPING_OLD, Step.POINTING, Step.PROBATION,
                              Step.BLESSING, Step.DONE]


def test_a_switch_that_migrates_backs_up_first():
    assert walk([OK] * 8, MIGRATES) == [Step.BACKING_UP, Step.MIGRATING, Step.STARTING, Step.CHECKING,
                                        Step.STOPPING_OLD, Step.POINTING, Step.PROBATION, Step.BLESSING, Step.DONE]


def test_pre_switch_commands_come_first_and_refuse_without_changing_anything():
    path = walk([FAIL, OK], skip={Step.UNDOING_PAST, Step.BACKING_UP, Step.MIGRATING, Step.UNDOING_MIGRATION}.__contains__)
    assert path == [Step.PREPARING, Step.REVERTING, Step.FAILED]


def test_a_failed_backup_refuses_the_switch():
    assert walk([FAIL, OK], MIGRATES) == [Step.BACKING_UP, Step.REVERTING, Step.FAILED]


@pytest.mark.parametrize("ok_before", [1, 2, 3])  # the migration, the start, or the checks fail
def test_a_failure_after_the_migration_undoes_it_before_handing_back(ok_before):
    path = walk([OK] * ok_before + [FAIL, OK, OK], MIGRATES)
    assert path[-3:] == [Step.UNDOING_MIGRATION, Step.REVERTING, Step.FAILED]


def test_a_rollback_in_probation_undoes_the_migration_then_starts_old():
    path = walk([OK] * 6 + [FAIL, OK, OK], MIGRATES)
    assert path[-4:] == [Step.PROBATION, Step.ROLLING_BACK_DATABASE, Step.ROLLING_BACK, Step.ROLLED_BACK]


def test_a_way_back_that_breaks_is_degraded_from_any_step():
    assert walk([OK, FAIL, BROKEN], MIGRATES)[-1] == Step.DEGRADED
    assert walk([OK] * 6 + [FAIL, BROKEN], MIGRATES)[-1] == Step.DEGRADED


@pytest.mark.parametrize("fail_at", [0, 1])
def test_failure_before_old_stops_reverts(fail_at):
    path = walk([OK] * fail_at + [FAIL, OK])
    assert path[-2:] == [Step.REVERTING, Step.FAILED]


def test_failure_in_probation_rolls_back():
    assert walk([OK, OK, OK, OK, FAIL, OK])[-2:] == [Step.ROLLING_BACK, Step.ROLLED_BACK]


def test_failed_way_back_is_degraded():
    assert walk([FAIL, FAIL])[-1] == Step.DEGRADED
    assert walk([OK, OK, OK, OK, FAIL, FAIL])[-1] == Step.DEGRADED


def test_every_non_terminal_step_has_a_way_forward_and_a_resume_point():
    for step in Step:
        if step in TERMINAL:
            assert not any(s == step for s, _ in TRANSITIONS), f"{step} is terminal but has transitions"
            assert step in OUTCOMES
        else:
            assert (step, OK) in TRANSITIONS
            assert step in RESUME_AFTER_RESTART


def test_every_terminal_step_is_reachable():
    assert TERMINAL <= set(TRANSITIONS.values())


def test_no_transition_out_of_a_terminal_step():
    with pytest.raises(InvalidTransition):
        next_step(Step.DONE, FAIL)


def test_every_step_that_does_io_can_fail():
    for step in Step:
        if step not in TERMINAL:
            assert (step, FAIL) in TRANSITIONS, step


def test_resume_before_old_stopped_goes_back_to_old():
    for step in (Step.MIGRATING, Step.STARTING, Step.CHECKING):
        assert settle(RESUME_AFTER_RESTART[step], PLAIN) == Step.REVERTING
        assert RESUME_AFTER_RESTART[step] == Step.UNDOING_MIGRATION  # when a migration ran, it is undone first
        assert serving_version(step, "1.0.0", "2.0.0") == "1.0.0"
    for step in (Step.PREPARING, Step.BACKING_UP):  # nothing has changed yet
        assert RESUME_AFTER_RESTART[step] == Step.REVERTING
    for step in (Step.UNDOING_PAST, Step.UNDOING_MIGRATION, Step.ROLLING_BACK_DATABASE):  # an undo runs again
        assert RESUME_AFTER_RESTART[step] == step
    for step in (Step.STOPPING_OLD, Step.POINTING, Step.PROBATION, Step.BLESSING):
        assert RESUME_AFTER_RESTART[step] == step
        assert serving_version(step, "1.0.0", "2.0.0") == "2.0.0"


def test_exit_codes():
    assert {OUTCOMES[s][1] for s in TERMINAL} == {0, 3, 4}
    assert OUTCOMES[Step.DEGRADED] == ("degraded", 4)


def test_the_state_database_and_its_wal_files_are_not_world_readable(tmp_path):
    import os

    from bloom_agent.store.state import StateStore

    store = StateStore(tmp_path / "state.db")
    store.begin_deployment("web", "install", "1.0.0", None, "installing", "root")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    store.close()
    assert modes["state.db"] == 0o640 and modes.get("state.db-wal", 0o640) == 0o640, modes
    assert modes.get("state.db-shm", 0o640) == 0o640, modes
    assert os.path.exists(tmp_path / "state.db")


def test_every_event_id_is_explained_in_the_journal_catalog():
    import re
    from pathlib import Path

    from bloom_agent.deploy import events

    catalog = (Path(__file__).resolve().parents[2] / "units" / "bloom-agent.catalog").read_text()
    ids = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    assert ids == set(re.findall(r"^-- ([0-9a-f]{32})$", catalog, re.M))


def test_journal_lines_carry_their_fields():
    import logging

    from bloom_agent.daemon.logs import JournalFieldsHandler
    from bloom_agent.deploy import events

    sent = []
    handler = JournalFieldsHandler(send=lambda message, **fields: sent.append((message, fields)))
    logger = logging.getLogger("bloom_agent.events")
    logger.addHandler(handler)
    try:
        events.emit(logging.ERROR, events.ROLLED_BACK, "web: rolled back", "web", "1.2.0", 17, BLOOM_TRIGGER="crash")
    finally:
        logger.removeHandler(handler)
    message, fields = sent[0]
    assert message == "web: rolled back"
    assert {k: fields[k] for k in ("PRIORITY", "MESSAGE_ID", "BLOOM_APP", "BLOOM_VERSION", "BLOOM_DEPLOYMENT",
                                   "BLOOM_TRIGGER", "SYSLOG_IDENTIFIER")} == {
        "PRIORITY": "3", "MESSAGE_ID": events.ROLLED_BACK, "BLOOM_APP": "web", "BLOOM_VERSION": "1.2.0",
        "BLOOM_DEPLOYMENT": 17, "BLOOM_TRIGGER": "crash", "SYSLOG_IDENTIFIER": "bloom-agent"}
    assert not [k for k in fields if not k.isupper()]
