"""Shared fixtures: real PostgreSQL and Redis servers, per-test databases, API clients."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from shipway.config import get_settings
from tests.support.services import Postgres, Redis, start_postgres, start_redis

# A suite started in the background by a non-interactive shell (`make test &`, CI
# wrappers) inherits SIGINT as ignored, and so would every process it starts: a
# Python child then never turns Ctrl-C into KeyboardInterrupt, and the tests that
# interrupt a CLI (`queue --watch`, followed jobs) would wait forever. Handled here,
# SIGINT is reset to its default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def features_loaded() -> None:
    """Every job kind and periodic task registered, jobs sent through Celery (as the entry
    points do), for tests that run or dispatch jobs in-process without building the app."""
    from shipway.bootstrap import load_features
    from workers.celery_app import send_job

    load_features(sender=send_job)


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A scratch folder every service user can traverse (pytest's tmp is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="shipway-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _migrate(url: str, data_dir: Path) -> None:
    from shipway.db import engine_for
    from shipway.migrate import upgrade

    old = dict(os.environ)
    os.environ.update(SHIPWAY_DATABASE_URL=url, SHIPWAY_DATA_DIR=str(data_dir))
    get_settings.cache_clear()
    try:
        upgrade()
        engine_for(url).dispose()
    finally:
        os.environ.clear()
        os.environ.update(old)
        get_settings.cache_clear()


# PostgreSQL's data on a tmpfs when it has this much room (else in the scratch folder).
PG_TMPFS_MIN_FREE = 4 << 30


def _postgres_folder(scratch: Path) -> Path:
    """Where the session's PostgreSQL keeps its data: /dev/shm when it is a tmpfs with
    room, else the scratch folder. Each test clones a database of about 9 MB: on this
    machine's disk a clone took 125 ms and a drop 67 ms at load 5, on the tmpfs 30-45 ms
    and 9 ms; left on disk, the session's clones (about 4 GB) took over a minute to delete
    at its end."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and shutil.disk_usage(shm).free >= PG_TMPFS_MIN_FREE:
            folder = Path(tempfile.mkdtemp(prefix="shipway-test-pg-", dir=shm))
            folder.chmod(0o755)
            return folder
    return scratch / "pg"


@pytest.fixture(scope="session")
def postgres_server(scratch: Path) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session, with a migrated template database."""
    folder = _postgres_folder(scratch)
    pg = start_postgres(folder)
    try:
        admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE shipway_template"))
        _migrate(pg.url("shipway_template"), scratch)
        admin.dispose()
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(scratch: Path) -> Iterator[Redis]:
    """One Redis server for the session."""
    redis = start_redis(scratch / "redis")
    yield redis
    redis.stop()


def new_postgres_database(pg: Postgres) -> str:
    """A fresh database cloned from the migrated template; returns its URL."""
    from shipway.db import engine_for

    name = f"t_{secrets.token_hex(6)}"
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE shipway_template"))
    admin.dispose()
    url = pg.url(name)
    engine_for(url)  # warm the pool
    return url


def drop_postgres_database(pg: Postgres, url: str) -> None:
    """Drop a test's database (its connections closed first, any left forced out): the
    session's disk holds only the databases of running tests. A failure leaves it to the
    end of the session."""
    from shipway.db import engine_for

    engine_for(url).dispose()
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    except SQLAlchemyError:
        pass
    finally:
        admin.dispose()


@contextlib.contextmanager
def postgres_database(pg: Postgres) -> Iterator[str]:
    """A fresh migrated database for the ``with`` block, dropped after it."""
    url = new_postgres_database(pg)
    try:
        yield url
    finally:
        drop_postgres_database(pg, url)


@pytest.fixture(scope="session")
def sqlite_template(scratch: Path) -> Path:
    """A migrated SQLite database that each test copies: a migration per test took
    0.4-0.6 s at load 6, a copy about a millisecond."""
    path = scratch / "sqlite-template" / "shipway.db"
    path.parent.mkdir()
    _migrate(f"sqlite:///{path}", path.parent)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    return path


def new_sqlite_database(template: Path, folder: Path) -> str:
    """A copy of the migrated template in ``folder``; returns its URL."""
    path = folder / "shipway.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite in tmp_path, or a new PostgreSQL database
    (dropped after the test)."""
    if request.param == "sqlite":
        yield new_sqlite_database(request.getfixturevalue("sqlite_template"), tmp_path)
        return
    with postgres_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def shipway_env(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Environment variables pointing shipway at the test database (filesystem broker)."""
    router_dir = Path(tempfile.mkdtemp(prefix="swr-"))  # short: unix socket paths are limited
    env = {
        "SHIPWAY_DATABASE_URL": db_url,
        "SHIPWAY_DATA_DIR": str(tmp_path / "data"),
        "SHIPWAY_BROKER_URL": "",
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "0",
        "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
        "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
        # Tests poll as fast as they like; test_api_tokens turns the token rate limit on.
        "SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    clean_up_rollouts(db_url, router_dir)
    get_settings.cache_clear()


def clean_up_rollouts(db_url: str, router_dir: Path) -> None:
    """Stop a test's HAProxy and remove the containers of its releases."""
    from shipway.db import engine_for
    from shipway.router.haproxy import HAProxyRouter

    if (router_dir / "haproxy.pid").exists():
        HAProxyRouter(router_dir).stop()
    with engine_for(db_url).connect() as conn:
        release_ids = [row[0] for row in conn.execute(text("SELECT id FROM releases"))]
    if release_ids:
        from shipway.releases.replicas import tear_down
        from shipway.runtime import get_runtime

        for release_id in release_ids:
            tear_down(runtime=get_runtime(), release_id=release_id, stop_timeout_seconds=0)
    shutil.rmtree(router_dir, ignore_errors=True)


STATIC_IMAGE = "shipway-test/static:1"


@pytest.fixture(scope="session")
def static_image(scratch: Path) -> str:
    """A tiny image serving /index.html and /healthz with busybox httpd on port 8080."""
    from shipway.runtime.docker_runtime import DockerRuntime

    context = scratch / "static-image"
    (context / "site").mkdir(parents=True)
    (context / "site" / "index.html").write_text("test site\n")
    (context / "site" / "healthz").write_text("ok\n")
    (context / "Dockerfile").write_text(
        "FROM shipway/busybox:local\nCOPY site/ /srv/www/\nEXPOSE 8080\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]\n'
    )
    outcome = DockerRuntime().build_image(
        context=context, tag=STATIC_IMAGE, labels={}, timeout_seconds=120, on_line=lambda _: None
    )
    assert outcome.ok, outcome
    return STATIC_IMAGE


@pytest.fixture
def client(shipway_env: dict[str, str]) -> Iterator[TestClient]:
    """An in-process API client against the test database."""
    from shipway.api import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture
def make_token(shipway_env: dict[str, str]) -> TokenFactory:
    """Create a workspace (if missing) and a token; returns headers and ids."""
    from shipway.auth.service import create_token, get_or_create_workspace
    from shipway.db import transaction

    def factory(
        *scopes: str, workspace: str = "acme", external_workspace_id: str | None = None
    ) -> dict[str, str]:
        with transaction() as session:
            ws = get_or_create_workspace(
                session, name=workspace, external_workspace_id=external_workspace_id
            )
            token, secret = create_token(
                session, workspace_id=ws.id, scopes=list(scopes or ("deployments:write",))
            )
        return {
            "Authorization": f"Bearer {secret}",
            "workspace_id": ws.id,
            "token_id": token.id,
        }

    return factory


def auth(token: dict[str, str], **extra: str) -> dict[str, str]:
    """Only the HTTP headers of a token (plus extras such as Idempotency-Key)."""
    return {"Authorization": token["Authorization"], **extra}


VersionFactory = Callable[..., str]


@pytest.fixture
def make_version(shipway_env: dict[str, str], request: pytest.FixtureRequest) -> VersionFactory:
    """Record a version of a deployment and walk it to ``state`` through the state machine."""
    from shipway.catalog.machines import VERSION
    from shipway.catalog.models import Deployment
    from shipway.db import transaction
    from shipway.states import transition
    from shipway.versions.service import create_version

    paths = {
        "created": [],
        "building": ["building"],
        "ready": ["building", "ready"],
        "failed": ["building", "failed"],
        "archived": ["building", "ready", "archived"],
    }

    def factory(deployment_id: str, state: str = "ready", **provenance: Any) -> str:
        image = provenance.pop("runtime_image", None)
        if image is None and state in ("ready", "archived"):
            image = request.getfixturevalue("static_image")
        with transaction() as session:
            deployment = session.get(Deployment, deployment_id)
            assert deployment is not None
            version = create_version(
                session,
                deployment=deployment,
                actor="test",
                source_sha256=secrets.token_hex(32),
                external_user_id=provenance.pop("external_user_id", None),
                provenance=provenance,
            )
            current = "created"
            for step in paths[state]:
                values = (
                    {
                        "artifact_sha256": "sha256:" + secrets.token_hex(32),
                        "runtime_image": image,
                        "runtime_port": 8080,
                        "runtime_command": "httpd -f -p 8080 -h /srv/www",
                    }
                    if step == "ready"
                    else {}
                )
                transition(
                    session,
                    VERSION,
                    subject_id=version.id,
                    from_state=current,
                    to_state=step,
                    actor="test",
                    values=values,
                )
                current = step
            return version.id

    return factory


@pytest.fixture
def deployment(client: TestClient, make_token: TokenFactory) -> dict[str, Any]:
    """A static deployment in workspace 'acme', with a write token."""
    token = make_token("deployments:write")
    response = client.post(
        "/api/v1/deployments", json={"name": "site", "kind": "static"}, headers=auth(token)
    )
    assert response.status_code == 201, response.text
    return {**response.json(), "token": token}
