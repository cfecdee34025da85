"""Fuzz every operation of the OpenAPI document with schemathesis (in process, PostgreSQL).

Each operation gets a fresh database seeded with a workspace, an admin token, a
deployment with a ready, an archived and a failed version, a queued promote job and a
cancelled one. Generated path ids are sometimes swapped for those real ids, so the
fuzzer reaches real rows and not only 404s. Checks: no server error, every status is
documented, every response matches its documented schema, media type and headers,
required headers (Authorization, Idempotency-Key) are enforced, unsupported methods
are 405 with a truthful Allow header, and no route ignores authentication.

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
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from shipway.api import create_app
from tests.conftest import TokenFactory, VersionFactory, auth

EXAMPLES = int(os.environ.get("SHIPWAY_FUZZ_EXAMPLES", "25"))
# The bounded run of `make test` draws the same cases every time (no flaky CI); a run
# with SHIPWAY_FUZZ_EXAMPLES set explores new ones on each run.
DERANDOMIZE = "SHIPWAY_FUZZ_EXAMPLES" not in os.environ
# Not positive_data_acceptance / negative_data_rejection: shipway validates more than
# JSON Schema says (opaque cursors, canary steps that must increase, null in a multipart
# form) and ignores unknown query parameters, so those two report refusals by design.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
]
# An event stream (GET /jobs/{id}/events) of a job that never ends is read this long.
STREAM_SECONDS = 1.0

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
# Operations answering with server-sent events (read for STREAM_SECONDS at most).
STREAMS = {
    (method.upper(), path)
    for path, operations in schema.raw_schema["paths"].items()
    for method, operation in operations.items()
    for status, response in operation.get("responses", {}).items()
    if status.startswith("2") and "text/event-stream" in response.get("content", {})
}
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
    streams = (case.method.upper(), case.path) in STREAMS
    kwargs: dict[str, Any] = {"timeout": STREAM_SECONDS} if streams else {}
    case.call_and_validate(
        headers={"Authorization": world["token"]["Authorization"]}, checks=CHECKS, **kwargs
    )
