"""The PostgreSQL pool pings a connection only when it may be dead (shipway.db).

A connection used a moment ago is handed out without a round trip; one whose backend
was terminated while it sat in the pool is noticed (its socket has the server's
goodbye to read) and replaced, so the next transaction still succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from shipway import db
from tests.conftest import new_postgres_database
from tests.support.processes import wait_until
from tests.support.services import Postgres


@pytest.fixture
def engine(postgres_server: Postgres) -> Iterator[Engine]:
    engine = db.make_engine(new_postgres_database(postgres_server))
    yield engine
    engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_used_just_now_is_not_pinged(engine: Engine, pings: list[Any]) -> None:
    first = _backend_pid(engine)
    for _ in range(5):
        assert _backend_pid(engine) == first
    assert pings == []


def test_a_connection_idle_too_long_is_pinged(
    engine: Engine, pings: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(engine)
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)
    assert _backend_pid(engine) == first
    assert len(pings) == 1


def test_a_terminated_backend_is_replaced_before_use(
    engine: Engine, pings: list[Any], postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 3600.0)  # only the socket tells
    first = _backend_pid(engine)
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text(f"SELECT pg_terminate_backend({first})")).scalar_one()
    finally:
        admin.dispose()
    # Wait for the backend to be gone: its goodbye is then on the pooled socket.
    wait_until(lambda: not _alive(postgres_server, first), timeout=10)
    second = _backend_pid(engine)
    assert second != first
    assert len(pings) == 1


def _alive(postgres_server: Postgres, pid: int) -> bool:
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            return bool(conn.execute(query, {"pid": pid}).scalar_one())
    finally:
        admin.dispose()
