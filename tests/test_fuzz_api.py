"""Fuzz every operation of the OpenAPI document with schemathesis (in process, PostgreSQL).

Each operation gets a fresh database seeded with a workspace, an admin token, a
deployment with a ready, an archived and a failed version, a queued promote job and a
cancelled one. Generated path ids are sometimes swapped for those real ids, so the
fuzzer reaches real rows and not only 404s. Checks: no server error, every status is
documented, every response matches its documented schema and media type.

Bounded for ``make test``: ``SHIPWAY_FUZZ_EXAMPLES`` examples per operation (default
25; ``make test-fuzz`` runs 200). Jobs the fuzzer enqueues just stay queued: no worker
runs, and no request handler talks to Docker or HAProxy.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shipway.api import create_app
from tests.conftest import TokenFactory, VersionFactory, auth

EXAMPLES = int(os.environ.get("SHIPWAY_FUZZ_EXAMPLES", "25"))
# The bounded run of `make test` draws the same cases every time (no flaky CI); a run
# with SHIPWAY_FUZZ_EXAMPLES set explores new ones on each run.
DERANDOMIZE = "SHIPWAY_FUZZ_EXAMPLES" not in os.environ
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# An event stream (GET /jobs/{id}/events) of a job that never ends is read this long.
STREAM_SECONDS = 1.0

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
# Real ids of the current test's seeded world, read when cases are drawn.
WORLD: dict[str, Any] = {}


@pytest.fixture
def db_url(postgres_server: Any) -> str:
    """Fuzz against PostgreSQL only (the strict database: types, constraints, locks)."""
    from tests.conftest import new_postgres_database

    return new_postgres_database(postgres_server)


@pytest.fixture
def world(client: TestClient, make_token: TokenFactory, make_version: VersionFactory) -> Any:
    """Seed rows for path ids to hit; published to the generation hook through WORLD."""
    token = make_token("admin")
    created = client.post(
        "/api/v1/deployments", json={"name": "site", "kind": "static"}, headers=auth(token)
    )
    assert created.status_code == 201, created.text
    dep = created.json()["id"]
    image = {"runtime_image": "shipway-test/never-run:1"}
    ready = make_version(dep, "ready", **image)
    archived = make_version(dep, "archived", **image)
    failed = make_version(dep, "failed")
    queued = client.post(
        f"/api/v1/deployments/{dep}/versions/{ready}/promote",
        headers=auth(token, **{"Idempotency-Key": "seed-queued"}),
    )
    assert queued.status_code == 202, queued.text
    other = client.post(
        f"/api/v1/deployments/{dep}/versions/{archived}/promote",
        json={"environment": "staging"},
        headers=auth(token, **{"Idempotency-Key": "seed-cancelled"}),
    )
    assert other.status_code == 202, other.text
    cancelled = other.json()["job"]["id"]
    done = client.post(f"/api/v1/jobs/{cancelled}/cancel", headers=auth(token))
    assert done.status_code == 200, done.text
    WORLD.clear()
    WORLD.update(
        token=token,
        deployment_id=[dep],
        version_id=[ready, archived, failed],
        job_id=[queued.json()["job"]["id"], cancelled],
    )
    yield WORLD
    WORLD.clear()


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Keep the generated ids, or swap in real ones (each parameter on its own)."""
    if not path_parameters or not WORLD:
        return st.just(path_parameters)
    choices = {
        name: st.sampled_from([value, *WORLD.get(name, [])])
        for name, value in path_parameters.items()
    }
    return st.fixed_dictionaries(choices)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_operation(case: schemathesis.Case, world: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"timeout": STREAM_SECONDS} if case.path.endswith("/events") else {}
    case.call_and_validate(
        headers={"Authorization": world["token"]["Authorization"]}, checks=CHECKS, **kwargs
    )
