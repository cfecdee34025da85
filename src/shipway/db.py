"""Database engine, sessions and portable column types (SQLite and PostgreSQL)."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from shipway.config import get_settings


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every shipway table."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Writers queue on the database lock instead of failing on upgrade from a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine configured for shipway's concurrency needs."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    _ping_when_stale(engine)
    return engine


PING_IDLE_SECONDS = 1.0
"""A pooled connection idle longer than this is pinged before use (``pool_pre_ping``)."""


def _ping_when_stale(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it may be dead: idle for more than
    ``PING_IDLE_SECONDS``, or its socket has something to read while no query runs (the
    server said goodbye: a restart or a terminated backend leaves an error message or
    EOF there). ``pool_pre_ping`` pinged every checkout: one more round trip per
    transaction, 3 of a no-op job's 16 (bench/README.md, dispatch). A dead connection
    is replaced and the whole pool dropped, as ``pool_pre_ping`` does."""

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["shipway_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("shipway_idle_since", None)
        if idle_since is None:  # just connected (or reconnected)
            return
        if time.monotonic() - idle_since < PING_IDLE_SECONDS and _quiet(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise InvalidatePoolError() from error
            raise


def _quiet(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket is open with nothing to read (no poll waits)."""
    if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
        return False
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError, AttributeError):  # no socket to look at: ping instead
        return False


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    """One engine per URL per process."""
    return make_engine(url)


def get_engine() -> Engine:
    """The engine of the configured database."""
    return engine_for(get_settings().resolved_database_url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (default: the configured one)."""
    return _session_factory_for(engine or get_engine())


@lru_cache(maxsize=8)
def _session_factory_for(engine: Engine) -> sessionmaker[Session]:
    # One per engine: a sessionmaker builds a Session class, too slow for every job.
    # Map every table before the first flush: a worker or relay process imports only
    # some models, and a foreign key to an unimported table cannot be resolved.
    import shipway.models  # noqa: F401

    return sessionmaker(bind=engine, expire_on_commit=False)


def statement_at_a_time(session: Session) -> None:
    """Commit each of this (new) session's statements on its own on PostgreSQL (autocommit):
    for work that is one statement, it saves the BEGIN and COMMIT round trips and holds
    row locks for the statement alone. SQLite keeps its transaction (and its database
    lock taken at BEGIN)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@contextmanager
def one_statement(engine: Engine | None = None) -> Iterator[Connection]:
    """A Core connection for work that is one statement, with no ORM session: on PostgreSQL
    in autocommit (no BEGIN and COMMIT round trips, row locks held for the statement
    alone), on SQLite in a transaction (its database lock taken at BEGIN). A session, its
    transaction and the pooled connection's switch to autocommit cost a job's runner
    about as much CPU as its statements (bench/README.md, dispatch)."""
    engine = engine or get_engine()
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = session_factory(engine)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()
