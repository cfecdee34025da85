"""The state machines of DESIGN.md §2, enforced in one place.

Every transition is a conditional UPDATE (``… WHERE state = :expected``) plus an
Event row, both in the caller's transaction. A transition that does not apply
raises :class:`InvalidTransition` and leaves the row unchanged.

The machines themselves live with their records: VERSION and RELEASE in
``shipway.catalog.machines``, JOB in ``shipway.jobs.machine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn, cast

from sqlalchemy import Table, insert, update
from sqlalchemy.orm import Session

from shipway.db import Base
from shipway.errors import InvalidTransition, NotFound
from shipway.events.models import Event
from shipway.ids import utcnow

# A declarative class's __table__ is a Table (typed as the wider FromClause).
_EVENTS = cast(Table, Event.__table__)
# Built once: constructing an INSERT and its cache key per call cost about 0.2 ms of CPU.
_INSERT_EVENT = insert(_EVENTS)


@dataclass(frozen=True)
class Machine:
    """A state machine: which column holds the state and which moves are legal."""

    name: str
    model: type[Base]
    column: str
    transitions: frozenset[tuple[str, str]]
    # Events of this machine name their subject as the job (the job machine's own rows).
    subject_is_job: bool = False

    @property
    def states(self) -> frozenset[str]:
        """Every state named by the machine."""
        return frozenset(s for pair in self.transitions for s in pair)

    def allows(self, from_state: str, to_state: str) -> bool:
        """Whether ``from_state → to_state`` is legal."""
        return (from_state, to_state) in self.transitions


def record_event(
    session: Session,
    *,
    workspace_id: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    reason: str = "",
    actor: str = "",
    deployment_id: str | None = None,
    job_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one Event row in the caller's transaction.

    A plain INSERT on the session's connection, written at once: an audit row is never
    read back or changed, so the unit of work (and its RETURNING of the new id) is
    skipped. Event ids still follow the order of the calls. Pending ORM changes are
    flushed first, as an ORM statement would (the workspace row may be new).
    """
    session.flush()
    session.execute(
        _INSERT_EVENT,
        {
            "workspace_id": workspace_id,
            "deployment_id": deployment_id,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "from_state": from_state,
            "to_state": to_state,
            "reason": reason,
            "actor": actor,
            "job_id": job_id,
            "data": data or {},
            "created_at": utcnow(),
        },
    )


def transition(
    session: Session,
    machine: Machine,
    *,
    subject_id: str,
    from_state: str,
    to_state: str,
    reason: str = "",
    actor: str = "",
    job_id: str | None = None,
    values: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    where: tuple[Any, ...] = (),
) -> None:
    """Move one row from ``from_state`` to ``to_state`` (conditional UPDATE + Event).

    ``values`` are further columns set in the same UPDATE; ``where`` adds
    conditions (for example "lease expired") to the same UPDATE. Raises
    :class:`InvalidTransition` if the move is illegal or the row is no longer in
    ``from_state``, :class:`NotFound` if the row does not exist.
    """
    model: Any = machine.model
    if not machine.allows(from_state, to_state):
        raise InvalidTransition(
            f"{machine.name} cannot go from {from_state} to {to_state}",
            machine=machine.name,
            subject_id=subject_id,
            from_state=from_state,
            to_state=to_state,
        )
    column = getattr(model, machine.column)
    changes: dict[str, Any] = {machine.column: to_state, "updated_at": utcnow(), **(values or {})}
    result = session.execute(
        update(model)
        .where(model.id == subject_id, column == from_state, *where)
        .values(**changes)
        .returning(model.workspace_id, model.deployment_id)
        .execution_options(synchronize_session=False)
    )
    row = result.first()
    if row is None:
        refuse(session, machine, subject_id=subject_id, from_state=from_state, to_state=to_state)
    workspace_id, deployment_id = row[0], row[1]
    record_event(
        session,
        workspace_id=workspace_id,
        subject_type=machine.name,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        actor=actor,
        deployment_id=deployment_id,
        job_id=job_id if job_id is not None else (subject_id if machine.subject_is_job else None),
        data=data,
    )
    # Keep any already-loaded object in the session consistent with the database.
    loaded = session.identity_map.get(session.identity_key(model, subject_id))
    if loaded is not None:
        session.refresh(loaded)


def refuse(
    session: Session, machine: Machine, *, subject_id: str, from_state: str, to_state: str
) -> NoReturn:
    """Say why a conditional UPDATE moved nothing: :class:`NotFound`, or
    :class:`InvalidTransition` naming the row's current state."""
    current = session.get(machine.model, subject_id, populate_existing=True)
    if current is None:
        raise NotFound(f"{machine.name} {subject_id} not found", subject_id=subject_id)
    raise InvalidTransition(
        f"{machine.name} {subject_id} is {getattr(current, machine.column)}, not {from_state}",
        machine=machine.name,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        current_state=getattr(current, machine.column),
    )
