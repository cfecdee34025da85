"""The claim is one conditional UPDATE (shipway.jobs.lease.claim), on SQLite and PostgreSQL;
the mark after a send never waits for a claim (shipway.jobs.dispatch.mark_dispatched).

What it must still refuse: a duplicate delivery, a job not due yet (which the relay then
sends again), and a job behind another one of its (deployment, environment) line.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from shipway.auth.service import get_or_create_workspace
from shipway.db import engine_for, transaction
from shipway.errors import InvalidTransition, NotFound
from shipway.events.models import Event
from shipway.ids import utcnow
from shipway.jobs import dispatch, lease, queueing, runner
from shipway.jobs.models import Job

pytestmark = pytest.mark.usefixtures("shipway_env")


def _enqueue(**options: object) -> str:
    with transaction() as session:
        workspace_id = get_or_create_workspace(session, name="claims").id
        job = queueing.enqueue(
            session,
            workspace_id=workspace_id,
            kind="noop",
            actor="test",
            params={"seconds": 0},
            **options,  # type: ignore[arg-type]
        )
        job.dispatched_at = utcnow()
        return job.id


def _claim(job_id: str, owner: str = "host/1/aa") -> lease.Claim | None:
    with transaction() as session:
        return lease.claim(session, job_id=job_id, owner=owner)


def _job(job_id: str) -> Job:
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _claim_events(job_id: str) -> int:
    with transaction() as session:
        query = select(func.count()).where(
            Event.job_id == job_id, Event.from_state == "queued", Event.to_state == "running"
        )
        return int(session.scalar(query) or 0)


def _events(job_id: str) -> list[tuple[object, ...]]:
    """Every Event of a job, as (subject, from, to, reason, actor, data, workspace)."""
    with transaction() as session:
        rows = session.execute(
            select(
                Event.subject_type,
                Event.from_state,
                Event.to_state,
                Event.reason,
                Event.actor,
                Event.data,
                Event.subject_id,
                Event.workspace_id.is_not(None),
            )
            .where(Event.job_id == job_id)
            .order_by(Event.id)
        )
        return [tuple(row) for row in rows]


def test_a_queued_job_is_claimed_with_a_lease_and_one_event() -> None:
    job_id = _enqueue()
    claim = _claim(job_id)
    assert claim is not None
    assert (claim.kind, claim.attempt, claim.params) == ("noop", 1, {"seconds": 0})
    job = _job(job_id)
    assert job.state == "running" and job.lease_owner == "host/1/aa" and job.attempts == 1
    assert job.started_at is not None and job.lease_expires_at is not None
    assert job.lease_expires_at > job.started_at
    assert _claim_events(job_id) == 1


def test_a_duplicate_delivery_claims_nothing() -> None:
    job_id = _enqueue()
    assert _claim(job_id) is not None
    assert _claim(job_id, owner="host/2/bb") is None
    assert _job(job_id).lease_owner == "host/1/aa"
    assert _claim_events(job_id) == 1


def test_a_job_not_due_yet_is_left_for_the_relay() -> None:
    job_id = _enqueue(not_before=utcnow() + timedelta(hours=1))
    assert _job(job_id).dispatched_at is not None
    assert _claim(job_id) is None
    job = _job(job_id)
    assert job.state == "queued" and job.dispatched_at is None  # the relay sends it when due


def test_a_job_due_now_is_claimed() -> None:
    job_id = _enqueue(not_before=utcnow() - timedelta(seconds=1))
    assert _claim(job_id) is not None


def test_a_line_runs_its_jobs_one_at_a_time_in_order() -> None:
    first = _enqueue(serial_key="dep:prod")
    second = _enqueue(serial_key="dep:prod")
    other = _enqueue(serial_key="dep:staging")
    assert _claim(second) is None  # queued behind the first
    assert _claim(other) is not None  # another line
    claim = _claim(first)
    assert claim is not None and claim.serial_key == "dep:prod"
    assert _claim(second) is None  # the first runs
    with transaction() as session:
        lease.finish(session, job_id=first, owner="host/1/aa", state="succeeded")
    assert _claim(second) is not None
    assert _job(second).dispatched_at is not None  # never reset: it was due


def test_a_delayed_job_blocks_no_one_until_due() -> None:
    _enqueue(serial_key="dep:prod", not_before=utcnow() + timedelta(hours=1))
    later = _enqueue(serial_key="dep:prod")
    assert _claim(later) is not None


def test_run_job_runs_a_queued_noop_to_succeeded() -> None:
    job_id = _enqueue()
    assert runner.run_job(job_id, owner="host/1/aa") == "succeeded"
    assert _events(job_id) == [  # the same Events on both databases
        ("job", None, "queued", "noop job accepted", "test", {}, job_id, True),
        (
            "job",
            "queued",
            "running",
            "claimed by host/1/aa (attempt 1)",
            "host/1/aa",
            {},
            job_id,
            True,
        ),
        ("job", "running", "succeeded", "succeeded", "host/1/aa", {}, job_id, True),
    ]
    assert runner.run_job(job_id) is None  # a second delivery
    assert _job(job_id).state == "succeeded"


def test_finish_by_another_owner_is_refused_and_changes_nothing() -> None:
    job_id = _enqueue()
    assert _claim(job_id) is not None
    with pytest.raises(InvalidTransition), transaction() as session:
        lease.finish(session, job_id=job_id, owner="host/9/zz", state="succeeded")
    job = _job(job_id)
    assert job.state == "running" and job.finished_at is None
    with pytest.raises(NotFound), transaction() as session:
        lease.finish(session, job_id="job_missing", owner="host/1/aa", state="failed")


def test_finish_records_the_outcome_and_one_event() -> None:
    job_id = _enqueue()
    assert _claim(job_id) is not None
    with transaction() as session:
        lease.finish(
            session,
            job_id=job_id,
            owner="host/1/aa",
            state="failed",
            reason="build_failed",
            failure_reason="build_failed",
            failure_diagnostics={"title": "Build failed"},
        )
    job = _job(job_id)
    assert (job.state, job.lease_owner, job.lease_expires_at) == ("failed", None, None)
    assert job.failure_reason == "build_failed" and job.failure_diagnostics == {
        "title": "Build failed"
    }
    assert job.finished_at is not None
    with transaction() as session:
        query = select(func.count()).where(Event.job_id == job_id, Event.to_state == "failed")
        assert session.scalar(query) == 1


def test_the_mark_after_a_send_counts_queued_jobs_only() -> None:
    queued, running = _enqueue(), _enqueue()
    assert _claim(running) is not None
    with transaction() as session:
        dispatch.mark_dispatched(session, job_ids=[queued, running], now=utcnow())
    assert _job(queued).dispatch_count == 1
    assert _job(running).dispatch_count == 0


def test_the_mark_skips_a_job_being_claimed_instead_of_waiting(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite locks the whole database: no row is ever skipped")
    job_id = _enqueue()
    with engine_for(db_url).connect() as claimer:  # a claim in flight holds the row
        claimer.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        with transaction() as session:
            session.execute(text("SET LOCAL lock_timeout = '10s'"))  # a wait fails the test
            dispatch.mark_dispatched(session, job_ids=[job_id], now=utcnow())
        claimer.rollback()
    assert _job(job_id).dispatch_count == 0


def test_enqueue_writes_the_row_the_returned_job_shows(db_url: str) -> None:
    with transaction() as session:
        workspace_id = get_or_create_workspace(session, name="claims").id
        job = queueing.enqueue(
            session, workspace_id=workspace_id, kind="noop", actor="test", serial_key="d:e"
        )
        statements: list[str] = []

        def seen(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(engine_for(db_url), "before_cursor_execute", seen)
        try:
            shown = {column: getattr(job, column) for column in queueing.JOB_COLUMNS}
        finally:
            event.remove(engine_for(db_url), "before_cursor_execute", seen)
    assert statements == []  # every column was loaded: no lazy SELECT
    with transaction() as session:
        stored = session.execute(select(Job.__table__).where(Job.id == job.id)).one()._asdict()
        nulls = session.execute(
            select(Job.result.is_(None), Job.failure_diagnostics.is_(None)).where(Job.id == job.id)
        ).one()
    assert stored == shown
    assert tuple(nulls) == (True, True)  # SQL NULL, not JSON null
    assert _events(job.id)[0][:5] == ("job", None, "queued", "noop job accepted", "test")


def test_run_job_leaves_a_job_not_due_yet_to_the_relay() -> None:
    """The runner's claim (one statement on a Core connection on PostgreSQL) forgets the
    dispatch of a job not due yet, as lease.claim does."""
    job_id = _enqueue(not_before=utcnow() + timedelta(hours=1))
    assert runner.run_job(job_id, owner="host/1/aa") is None
    job = _job(job_id)
    assert job.state == "queued" and job.dispatched_at is None and job.attempts == 0


def test_a_success_after_the_lease_was_lost_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _enqueue()

    def reaped_meanwhile(_ctx: object) -> None:  # the reaper gave the job to another worker
        with transaction() as session:
            session.execute(
                text("UPDATE jobs SET lease_owner = 'host/2/bb' WHERE id = :id"), {"id": job_id}
            )

    monkeypatch.setattr(runner.handlers, "handler_for", lambda _kind: reaped_meanwhile)
    assert runner.run_job(job_id, owner="host/1/aa") is None
    job = _job(job_id)
    assert (job.state, job.lease_owner, job.finished_at) == ("running", "host/2/bb", None)
    assert [event[2] for event in _events(job_id)] == ["queued", "running"]
    assert "could not record succeeded" in caplog.text


def test_dispatch_sends_and_marks_queued_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark after the sends: one statement on a Core connection (db.one_statement)."""
    queued, running = _enqueue(), _enqueue()
    assert _claim(running) is not None
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "_sender", lambda job_id, _queue, _kind: sent.append(job_id))
    jobs = [dispatch.Queued(queued, "rollouts"), dispatch.Queued(running, "rollouts")]
    assert dispatch.dispatch(jobs) == 2
    assert sent == [queued, running]
    assert (_job(queued).dispatch_count, _job(running).dispatch_count) == (1, 0)
