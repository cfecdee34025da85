"""The version, release and job state machines (DESIGN.md §2), on SQLite and PostgreSQL.

Exhaustive: every illegal (from, to) pair of every machine is refused and leaves the row
and the audit untouched; every legal pair moves the row and writes exactly one Event. A
hypothesis state machine then drives random sequences against a model.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from shipway.catalog.machines import RELEASE, VERSION
from shipway.catalog.models import Deployment, Release, Version
from shipway.db import make_engine, session_factory, transaction
from shipway.errors import InvalidTransition, NotFound
from shipway.events.models import Event
from shipway.ids import new_id
from shipway.jobs.machine import JOB
from shipway.jobs.models import Job
from shipway.states import Machine, transition
from shipway.workspaces.models import Project, Workspace
from tests.conftest import _migrate, new_postgres_database

MACHINES = {m.name: m for m in (VERSION, RELEASE, JOB)}
ILLEGAL = [
    (m.name, a, b)
    for m in (VERSION, RELEASE, JOB)
    for a in sorted(m.states)
    for b in sorted(m.states)
    if (a, b) not in m.transitions
]
LEGAL = [(m.name, a, b) for m in (VERSION, RELEASE, JOB) for a, b in sorted(m.transitions)]


def test_the_machines_are_the_designed_ones() -> None:
    """Guards the exhaustive lists below against an accidentally shrunk machine."""
    assert VERSION.states == {"created", "building", "ready", "failed", "archived"}
    assert RELEASE.states == {
        "DEPLOYING",
        "ACTIVE",
        "FAILED",
        "UNHEALTHY",
        "DRAINING",
        "RETIRED",
        "ROLLED_BACK",
    }
    assert JOB.states == {"queued", "running", "succeeded", "failed", "cancelled"}
    # One-way: nothing leaves failed/archived; ready only goes to archived.
    assert {b for a, b in VERSION.transitions if a == "ready"} == {"archived"}
    assert not {b for a, b in VERSION.transitions if a in ("failed", "archived")}
    assert not {b for a, b in RELEASE.transitions if a in ("FAILED", "RETIRED", "ROLLED_BACK")}
    assert not {b for a, b in JOB.transitions if a in ("succeeded", "failed", "cancelled")}
    # DRAINING -> ACTIVE is the warm rollback (replicas of the replaced release still run).
    assert ("DRAINING", "ACTIVE") in RELEASE.transitions
    assert len(ILLEGAL) == 20 + 38 + 18
    assert len(LEGAL) == 5 + 11 + 7


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One migrated database per backend for the whole module (each test adds its own rows)."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("states")
        url = f"sqlite:///{folder / 'shipway.db'}"
        _migrate(url, folder)
    else:
        url = new_postgres_database(request.getfixturevalue("postgres_server"))
    eng = make_engine(url)
    yield eng
    eng.dispose()


@dataclass
class Subject:
    """One row under test and the ids around it."""

    id: str
    workspace_id: str
    deployment_id: str


def _tenant(session: Any) -> tuple[Workspace, Deployment]:
    workspace = Workspace(name=f"ws-{secrets.token_hex(4)}")
    session.add(workspace)
    session.flush()
    project = Project(workspace_id=workspace.id, name="default")
    session.add(project)
    session.flush()
    deployment = Deployment(
        id=new_id("dep"),
        workspace_id=workspace.id,
        project_id=project.id,
        name="app",
        kind="static",
        latest_version_number=1,
    )
    session.add(deployment)
    session.flush()
    return workspace, deployment


def _version(session: Any, deployment: Deployment, state: str = "ready") -> Version:
    version = Version(
        id=new_id("ver"),
        deployment_id=deployment.id,
        version_number=session.scalar(
            select(func.coalesce(func.max(Version.version_number), 0) + 1).where(
                Version.deployment_id == deployment.id
            )
        ),
        kind="static",
        state=state,
        workspace_id=deployment.workspace_id,
        project_id=deployment.project_id,
        source_sha256=secrets.token_hex(32),
    )
    session.add(version)
    session.flush()
    return version


def _release(session: Any, deployment: Deployment, status: str, env: str = "production") -> Release:
    version = _version(session, deployment)
    release = Release(
        id=new_id("rel"),
        workspace_id=deployment.workspace_id,
        deployment_id=deployment.id,
        version_id=version.id,
        environment=env,
        status=status,
    )
    session.add(release)
    session.flush()
    return release


def _job(session: Any, deployment: Deployment, state: str) -> Job:
    job = Job(
        id=new_id("job"),
        workspace_id=deployment.workspace_id,
        kind="promote",
        queue="rollouts",
        state=state,
        deployment_id=deployment.id,
        environment="production",
        serial_key=f"{deployment.id}:production",
    )
    session.add(job)
    session.flush()
    return job


def make_subject(engine: Engine, machine: Machine, state: str) -> Subject:
    """A fresh row of ``machine`` sitting in ``state`` (placed directly, not via the machine)."""
    with transaction(engine) as session:
        workspace, deployment = _tenant(session)
        if machine is VERSION:
            row: Any = _version(session, deployment, state)
        elif machine is RELEASE:
            row = _release(session, deployment, state)
        else:
            row = _job(session, deployment, state)
        return Subject(id=row.id, workspace_id=workspace.id, deployment_id=deployment.id)


def row_of(engine: Engine, machine: Machine, subject_id: str) -> dict[str, Any]:
    """Every column of the row, as stored."""
    table = machine.model.__table__
    with engine.connect() as conn:
        return dict(conn.execute(select(table).where(table.c.id == subject_id)).mappings().one())


def events_table(engine: Engine) -> list[dict[str, Any]]:
    """The whole events table, in id order."""
    table = Event.__table__
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]


def events_of(engine: Engine, subject_id: str) -> list[dict[str, Any]]:
    return [e for e in events_table(engine) if e["subject_id"] == subject_id]


# --------------------------------------------------------------------------- exhaustive


@pytest.mark.parametrize(("name", "from_state", "to_state"), ILLEGAL)
def test_illegal_transition_is_refused_and_changes_nothing(
    engine: Engine, name: str, from_state: str, to_state: str
) -> None:
    machine = MACHINES[name]
    subject = make_subject(engine, machine, from_state)
    row_before = row_of(engine, machine, subject.id)
    events_before = events_table(engine)

    # The caller commits its transaction anyway: nothing may have been written.
    with transaction(engine) as session:
        with pytest.raises(InvalidTransition) as refused:
            transition(
                session,
                machine,
                subject_id=subject.id,
                from_state=from_state,
                to_state=to_state,
                reason="should not happen",
                actor="tester",
                job_id="job_x",
                values={"failure_reason": "overwritten"},
            )
        assert refused.value.code == "invalid_transition"
        assert refused.value.details["from_state"] == from_state
        assert refused.value.details["to_state"] == to_state

    assert row_of(engine, machine, subject.id) == row_before
    assert events_table(engine) == events_before


@pytest.mark.parametrize("with_job_id", [True, False], ids=["job_id", "no_job_id"])
@pytest.mark.parametrize(("name", "from_state", "to_state"), LEGAL)
def test_legal_transition_moves_row_and_writes_one_event(
    engine: Engine, name: str, from_state: str, to_state: str, with_job_id: bool
) -> None:
    machine = MACHINES[name]
    subject = make_subject(engine, machine, from_state)
    row_before = row_of(engine, machine, subject.id)
    events_before = events_table(engine)
    job_id = new_id("job") if with_job_id else None

    with transaction(engine) as session:
        transition(
            session,
            machine,
            subject_id=subject.id,
            from_state=from_state,
            to_state=to_state,
            reason="because",
            actor="tester",
            job_id=job_id,
            values={"failure_reason": "probe"},
            data={"n": 1},
        )

    row_after = row_of(engine, machine, subject.id)
    changed = {k for k in row_after if row_after[k] != row_before[k]}
    assert changed == {machine.column, "updated_at", "failure_reason"}
    assert row_after[machine.column] == to_state
    assert row_after["failure_reason"] == "probe"
    assert row_after["updated_at"] >= row_before["updated_at"]

    events_after = events_table(engine)
    assert events_after[: len(events_before)] == events_before
    new = events_after[len(events_before) :]
    assert len(new) == 1
    event = new[0]
    expected_job = job_id if job_id else (subject.id if machine is JOB else None)
    assert event["subject_type"] == machine.name
    assert event["subject_id"] == subject.id
    assert (event["from_state"], event["to_state"]) == (from_state, to_state)
    assert event["actor"] == "tester"
    assert event["reason"] == "because"
    assert event["job_id"] == expected_job
    assert event["workspace_id"] == subject.workspace_id
    assert event["deployment_id"] == subject.deployment_id
    assert event["data"] == {"n": 1}
    assert event["created_at"] is not None


@pytest.mark.parametrize(("name", "from_state", "to_state"), LEGAL)
def test_stale_expected_state_is_refused(
    engine: Engine, name: str, from_state: str, to_state: str
) -> None:
    """A caller that read the row before someone else moved it must not overwrite the move."""
    machine = MACHINES[name]
    subject = make_subject(engine, machine, from_state)
    maker = session_factory(engine)

    stale = maker()
    try:
        if engine.dialect.name == "postgresql":
            # A real interleaving: the stale reader's transaction is open while the row moves.
            stale.begin()
            loaded = stale.get(machine.model, subject.id)
            assert getattr(loaded, machine.column) == from_state
        with transaction(engine) as mover:
            transition(
                mover,
                machine,
                subject_id=subject.id,
                from_state=from_state,
                to_state=to_state,
                actor="first",
            )
        row_moved = row_of(engine, machine, subject.id)
        events_moved = events_table(engine)
        if not stale.in_transaction():
            stale.begin()
        with pytest.raises(InvalidTransition) as refused:
            transition(
                stale,
                machine,
                subject_id=subject.id,
                from_state=from_state,
                to_state=to_state,
                actor="second",
                values={"failure_reason": "overwritten"},
            )
        assert refused.value.details["current_state"] == to_state
        stale.commit()
    finally:
        stale.close()

    assert row_of(engine, machine, subject.id) == row_moved
    assert events_table(engine) == events_moved
    assert [e["actor"] for e in events_of(engine, subject.id)] == ["first"]


@pytest.mark.parametrize("name", ["version", "release", "job"])
def test_unknown_id_is_not_found(engine: Engine, name: str) -> None:
    machine = MACHINES[name]
    from_state, to_state = sorted(machine.transitions)[0]
    events_before = events_table(engine)
    with transaction(engine) as session, pytest.raises(NotFound):
        transition(
            session,
            machine,
            subject_id=f"{name[:3]}_doesnotexist",
            from_state=from_state,
            to_state=to_state,
        )
    assert events_table(engine) == events_before


@pytest.mark.parametrize("name", ["version", "release", "job"])
def test_concurrent_identical_transitions_only_one_wins(engine: Engine, name: str) -> None:
    """Two writers race on the same move: one succeeds, the other is refused (never both)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers with BEGIN IMMEDIATE; no interleaving possible")
    machine = MACHINES[name]
    from_state, to_state = sorted(machine.transitions)[0]
    subject = make_subject(engine, machine, from_state)
    maker = session_factory(engine)
    outcome: dict[str, Any] = {}

    first = maker()
    first.begin()
    transition(
        first, machine, subject_id=subject.id, from_state=from_state, to_state=to_state, actor="a"
    )

    def second() -> None:
        with transaction(engine) as session:
            try:
                transition(
                    session,
                    machine,
                    subject_id=subject.id,
                    from_state=from_state,
                    to_state=to_state,
                    actor="b",
                )
                outcome["b"] = "moved"
            except InvalidTransition as error:
                outcome["b"] = error.details.get("current_state")

    racer = threading.Thread(target=second)
    racer.start()
    racer.join(0.3)
    assert racer.is_alive(), "the second UPDATE must wait on the first one's row lock"
    first.commit()
    first.close()
    racer.join(10)
    assert not racer.is_alive()
    assert outcome["b"] == to_state
    assert [e["actor"] for e in events_of(engine, subject.id)] == ["a"]


def test_second_active_release_is_refused_by_the_database(engine: Engine) -> None:
    with transaction(engine) as session:
        _, deployment = _tenant(session)
        active = _release(session, deployment, "ACTIVE")
        waiting = _release(session, deployment, "DEPLOYING")
        elsewhere = _release(session, deployment, "DEPLOYING", env="staging")
    before = row_of(engine, RELEASE, waiting.id)
    events_before = events_table(engine)
    with pytest.raises(IntegrityError), transaction(engine) as session:
        transition(
            session, RELEASE, subject_id=waiting.id, from_state="DEPLOYING", to_state="ACTIVE"
        )
    assert row_of(engine, RELEASE, waiting.id) == before
    assert events_table(engine) == events_before
    # Another environment of the same deployment may have its own ACTIVE release.
    with transaction(engine) as session:
        transition(
            session, RELEASE, subject_id=elsewhere.id, from_state="DEPLOYING", to_state="ACTIVE"
        )
    # Once the first one drains, the waiting one can become ACTIVE.
    with transaction(engine) as session:
        transition(session, RELEASE, subject_id=active.id, from_state="ACTIVE", to_state="DRAINING")
        transition(
            session, RELEASE, subject_id=waiting.id, from_state="DEPLOYING", to_state="ACTIVE"
        )
    assert row_of(engine, RELEASE, waiting.id)["status"] == "ACTIVE"


def test_second_running_job_of_one_serial_key_is_refused(engine: Engine) -> None:
    with transaction(engine) as session:
        _, deployment = _tenant(session)
        _job(session, deployment, "running")
        queued = _job(session, deployment, "queued")
    with pytest.raises(IntegrityError), transaction(engine) as session:
        transition(session, JOB, subject_id=queued.id, from_state="queued", to_state="running")
    assert row_of(engine, JOB, queued.id)["state"] == "queued"


# --------------------------------------------------------------------------- model-based


class LifecycleMachine(RuleBasedStateMachine):
    """Random transitions on one version, one release and one job, checked against a model."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        with transaction(engine) as session:
            _, deployment = _tenant(session)
            self.deployment_id = deployment.id
            self.ids = {
                "version": _version(session, deployment, "created").id,
                "release": _release(session, deployment, "DEPLOYING").id,
                "job": _job(session, deployment, "queued").id,
            }
        self.model = {"version": "created", "release": "DEPLOYING", "job": "queued"}
        self.moves = 0

    @rule(name=st.sampled_from(["version", "release", "job"]), data=st.data())
    def move(self, name: str, data: st.DataObject) -> None:
        machine = MACHINES[name]
        current = self.model[name]
        to_state = data.draw(st.sampled_from(sorted(machine.states)), label="to")
        stale = data.draw(st.booleans(), label="stale")
        from_state = (
            data.draw(st.sampled_from(sorted(machine.states - {current})), label="from")
            if stale
            else current
        )
        legal = not stale and machine.allows(current, to_state)
        try:
            with transaction(self.engine) as session:
                transition(
                    session,
                    machine,
                    subject_id=self.ids[name],
                    from_state=from_state,
                    to_state=to_state,
                    actor="hypothesis",
                )
        except InvalidTransition:
            assert not legal, f"{name} {current}->{to_state} should have been allowed"
            return
        except IntegrityError:
            # Only the one-ACTIVE index may refuse a legal move; our release is alone.
            raise
        assert legal, f"{name} {from_state}->{to_state} (actually {current}) was allowed"
        self.model[name] = to_state
        self.moves += 1

    @rule(via_machine=st.booleans())
    def second_active_release(self, via_machine: bool) -> None:
        """Another release of the same (deployment, environment) tries to become ACTIVE."""
        session = session_factory(self.engine)()
        try:
            session.begin()
            deployment = session.get(Deployment, self.deployment_id)
            assert deployment is not None
            try:
                if via_machine:
                    other = _release(session, deployment, "DEPLOYING")
                    transition(
                        session,
                        RELEASE,
                        subject_id=other.id,
                        from_state="DEPLOYING",
                        to_state="ACTIVE",
                    )
                    session.flush()
                else:
                    _release(session, deployment, "ACTIVE")
                refused = False
            except IntegrityError:
                refused = True
            assert refused == (self.model["release"] == "ACTIVE")
        finally:
            session.rollback()  # never keep the extra release: the model has only one
            session.close()

    @invariant()
    def database_equals_model(self) -> None:
        with self.engine.connect() as conn:
            for name, subject_id in self.ids.items():
                machine = MACHINES[name]
                table = machine.model.__table__
                state = conn.execute(
                    select(table.c[machine.column]).where(table.c.id == subject_id)
                ).scalar_one()
                assert state == self.model[name], name
            count = conn.execute(
                select(func.count())
                .select_from(Event)
                .where(Event.subject_id.in_(list(self.ids.values())))
            ).scalar_one()
            assert count == self.moves
            actives = conn.execute(
                select(func.count())
                .select_from(Release)
                .where(
                    Release.deployment_id == self.deployment_id,
                    Release.environment == "production",
                    Release.status == "ACTIVE",
                )
            ).scalar_one()
            assert actives == (1 if self.model["release"] == "ACTIVE" else 0)


def test_random_transitions_match_the_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hypothesis.db'}"
    _migrate(url, tmp_path)
    eng = make_engine(url)
    try:
        run_state_machine_as_test(
            # hypothesis takes any factory of a machine; its stub says a class
            lambda: LifecycleMachine(eng),  # type: ignore[arg-type]
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        eng.dispose()


def test_machine_refuses_moves_when_the_raw_row_was_changed_behind_its_back(
    engine: Engine,
) -> None:
    """Even a direct UPDATE elsewhere cannot make the machine overwrite: it re-checks the row."""
    subject = make_subject(engine, VERSION, "building")
    with engine.begin() as conn:
        conn.execute(update(Version).where(Version.id == subject.id).values(state="failed"))
    with transaction(engine) as session, pytest.raises(InvalidTransition) as refused:
        transition(session, VERSION, subject_id=subject.id, from_state="building", to_state="ready")
    assert refused.value.details["current_state"] == "failed"
    assert row_of(engine, VERSION, subject.id)["state"] == "failed"
    assert events_of(engine, subject.id) == []
