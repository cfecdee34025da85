"""The lease protocol's statements on every job's clock (claim, finish), built once.

Built with bind parameters at import: building a statement and its cache key per call
cost about 0.3 ms of CPU per job (py-spy, bench/README.md, dispatch). On PostgreSQL each
conditional UPDATE also comes as ``*_LOGGED``: the UPDATE in a CTE and the job's Event
inserted from its RETURNING, one statement (one round trip, atomic on its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import (
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import CTE

from shipway.db import UTCDateTime
from shipway.events.models import Event
from shipway.jobs.lines import ahead_of_row_in_line
from shipway.jobs.machine import JOB
from shipway.jobs.models import Job

_JOBS = cast(Table, Job.__table__)
_EVENTS = cast(Table, Event.__table__)
_NOW = bindparam("now", type_=UTCDateTime())
CLAIM = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "queued",
        or_(_JOBS.c.not_before.is_(None), _JOBS.c.not_before <= _NOW),
        or_(_JOBS.c.serial_key.is_(None), ~ahead_of_row_in_line(_NOW)),
    )
    .values(
        state="running",
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires", type_=UTCDateTime()),
        heartbeat_at=_NOW,
        attempts=_JOBS.c.attempts + 1,
        started_at=func.coalesce(_JOBS.c.started_at, _NOW),
        updated_at=_NOW,
    )
    .returning(
        _JOBS.c.kind,
        _JOBS.c.attempts,
        _JOBS.c.params,
        _JOBS.c.serial_key,
        _JOBS.c.workspace_id,
        _JOBS.c.deployment_id,
    )
)
TOO_EARLY = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "queued",
        _JOBS.c.not_before > _NOW,
    )
    .values(dispatched_at=None)
)


FINISH = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "running",
        _JOBS.c.lease_owner == bindparam("owner"),
    )
    .values(
        state=bindparam("to_state"),
        finished_at=_NOW,
        updated_at=_NOW,
        lease_owner=None,
        lease_expires_at=None,
        result=bindparam("to_result"),
        failure_reason=bindparam("to_failure_reason"),
        failure_diagnostics=bindparam("to_failure_diagnostics"),
    )
    .returning(_JOBS.c.workspace_id, _JOBS.c.deployment_id)
)


def with_event(
    change: Update | Insert,
    *,
    from_state: Any,
    to_state: Any,
    reason: Callable[[CTE], Any],
    subject: Callable[[CTE], Any] = lambda _moved: bindparam("job_id"),
    actor: Any = None,
) -> Select[Any]:
    """PostgreSQL: ``change`` (a job's INSERT or conditional UPDATE … RETURNING
    workspace_id, deployment_id) and the job's Event, as ``record_event`` writes it, in
    one statement; its rows are the change's RETURNING (none: nothing changed, no
    Event). The actor is the ``owner`` parameter unless given."""
    moved = change.cte("moved")
    event = insert(_EVENTS).from_select(
        [
            "workspace_id",
            "deployment_id",
            "subject_type",
            "subject_id",
            "from_state",
            "to_state",
            "reason",
            "actor",
            "job_id",
            "data",
            "created_at",
        ],
        select(
            moved.c.workspace_id,
            moved.c.deployment_id,
            literal(JOB.name),
            subject(moved),
            from_state,
            to_state,
            reason(moved),
            bindparam("owner") if actor is None else actor,
            subject(moved),
            literal({}, _EVENTS.c.data.type),
            _NOW,
        ),
    )
    return select(moved).add_cte(event.cte("logged"))


CLAIM_LOGGED = with_event(
    CLAIM,
    from_state=literal("queued"),
    to_state=literal("running"),
    reason=lambda moved: func.concat(
        "claimed by ", bindparam("owner"), " (attempt ", moved.c.attempts, ")"
    ),
)
FINISH_LOGGED = with_event(
    FINISH,
    from_state=literal("running"),
    to_state=bindparam("to_state"),
    reason=lambda _moved: bindparam("to_reason"),
)
NULL_AT_ENQUEUE = frozenset({"result", "failure_diagnostics"})
"""JSON columns a new job leaves NULL: left out of its INSERT (a None parameter of a JSON
column would store JSON ``null``, not SQL NULL)."""
ENQUEUE = insert(_JOBS).values(
    {
        column.name: bindparam(f"v_{column.name}", type_=column.type)
        for column in _JOBS.c
        if column.name not in NULL_AT_ENQUEUE
    }
)
"""A new job's other columns, from ``v_<column>`` parameters (``queueing.enqueue``)."""
ENQUEUE_LOGGED = with_event(
    ENQUEUE.returning(_JOBS.c.id, _JOBS.c.workspace_id, _JOBS.c.deployment_id),
    from_state=null(),
    to_state=literal("queued"),
    reason=lambda _moved: bindparam("event_reason"),
    subject=lambda moved: moved.c.id,
    actor=bindparam("v_actor"),
)
