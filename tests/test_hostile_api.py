"""Hostile requests against every route of the OpenAPI document, plus a promote storm.

The route checks are parametrised over the operations of ``/openapi.json`` (read at
import), so a new route is covered without editing this file; a route with a path
parameter this file does not know fails loudly instead of being skipped. Each refusal
must use the one error shape, with a status the operation documents, and write no row
in any table. The hand-written route table of ``test_api_auth`` checks the same
refusals for the routes that existed when it was written, on both databases.

The storm sends 1,000 concurrent promotes with one Idempotency-Key to a real
``shipway api`` process on PostgreSQL: every answer is the same 202, one job, one release.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shipway.api import create_app
from shipway.config import get_settings
from tests.conftest import VersionFactory, auth, new_postgres_database
from tests.e2e.conftest import wait_for_api
from tests.e2e.helpers import seed_ready_version
from tests.support.processes import Supervisor, child_env, executable
from tests.support.services import Postgres, free_port
from tests.test_api_auth import assert_error, source_archive

SPEC = create_app().openapi()
# /metrics is public by default (SHIPWAY_METRICS_PUBLIC; test_metrics checks its token mode).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
MAX_REQUEST_BYTES = 4096
MAX_UPLOAD_BYTES = 65_536
# The upload route's limit is the archive limit plus 1 MiB for the form (api.BodySizeLimit).
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES + 1024 * 1024
NEVER_RUN_IMAGE = "shipway-test/never-run:1"  # no worker runs: promoted jobs stay queued


@dataclass(frozen=True)
class Operation:
    """One operation of the OpenAPI document."""

    method: str
    path: str
    spec: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def media_type(self) -> str | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        return next(iter(content), None)

    def body_schema(self) -> dict[str, Any]:
        content = self.spec["requestBody"]["content"]
        return dict(content[self.media_type]["schema"])

    def assert_refused(self, response: httpx.Response, status: int, code: str | None) -> None:
        """The error shape, ``status`` (and ``code``), and the operation documents ``status``."""
        assert_error(response, status, code)
        assert str(status) in self.spec["responses"], f"{self}: {status} is not documented"


OPERATIONS = [
    Operation(method.upper(), path, op)
    for path, ops in SPEC["paths"].items()
    for method, op in ops.items()
]
PRIVATE = [op for op in OPERATIONS if (op.method, op.path) not in PUBLIC]
SCOPED = [op for op in PRIVATE if op.path_params]
WRITE_OPS = [op for op in PRIVATE if op.method in WRITES]
JSON_BODIES = [op for op in OPERATIONS if op.media_type == "application/json"]
BODIES = [op for op in OPERATIONS if op.media_type is not None]


def ids(op: Operation) -> str:
    return str(op)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """Workspace acme's rows (a deployment, a ready version, a queued promote) and tokens."""

    client: TestClient
    ids: dict[str, str]
    admin: dict[str, str]
    reader: dict[str, str]
    stranger: dict[str, str]  # admin of workspace globex

    def url(self, op: Operation, path_ids: dict[str, str] | None = None) -> str:
        ids = {**self.ids, **(path_ids or {})}
        unknown = [name for name in op.path_params if name not in ids]
        if unknown:
            pytest.fail(f"{op}: teach test_hostile_api which real id to use for {unknown}")
        return op.path.format(**ids)

    def send(
        self,
        op: Operation,
        token: dict[str, str] | None,
        path_ids: dict[str, str] | None = None,
        key: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """``op`` on acme's rows with ``token`` (none: no Authorization) and a fresh key."""
        headers = auth(token) if token else {}
        if key:
            headers["Idempotency-Key"] = f"hostile-{secrets.token_hex(4)}"
        headers.update(kwargs.pop("headers", {}))
        return self.client.request(op.method, self.url(op, path_ids), headers=headers, **kwargs)


def _token(*scopes: str, workspace: str) -> dict[str, str]:
    from shipway.auth.service import create_token, get_or_create_workspace
    from shipway.db import transaction

    with transaction() as session:
        ws = get_or_create_workspace(session, name=workspace)
        token, secret = create_token(session, workspace_id=ws.id, scopes=list(scopes))
    return {"Authorization": f"Bearer {secret}", "workspace_id": ws.id, "token_id": token.id}


@pytest.fixture(scope="module")
def world(postgres_server: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One seeded PostgreSQL database for the module: the checks below must not change it."""
    env = {
        "SHIPWAY_DATABASE_URL": new_postgres_database(postgres_server),
        "SHIPWAY_DATA_DIR": str(tmp_path_factory.mktemp("hostile")),
        "SHIPWAY_BROKER_URL": "",
        "SHIPWAY_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "SHIPWAY_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE": "0",  # hundreds of requests a second
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        try:
            with TestClient(create_app(), raise_server_exceptions=False) as client:
                admin = _token("admin", workspace="acme")
                created = client.post(
                    "/api/v1/deployments",
                    json={"name": "site", "kind": "static"},
                    headers=auth(admin),
                )
                assert created.status_code == 201, created.text
                dep = created.json()["id"]
                domain = client.post(
                    f"/api/v1/deployments/{dep}/environments/production/domains",
                    json={"hostname": "www.acme.test"},
                    headers=auth(admin),
                )
                assert domain.status_code == 201, domain.text
                # an image that is never run: these tests only read versions
                version = seed_ready_version(dep, image=NEVER_RUN_IMAGE, command="httpd -f -p 8080")
                promoted = client.post(
                    f"/api/v1/deployments/{dep}/versions/{version}/promote",
                    headers=auth(admin, **{"Idempotency-Key": "seed"}),
                )
                assert promoted.status_code == 202, promoted.text
                hook = client.post(
                    "/api/v1/webhooks",
                    json={"url": "https://93.184.216.34/hook", "event_types": ["job.stuck"]},
                    headers=auth(admin),
                )
                assert hook.status_code == 201, hook.text
                # a test delivery the redeliver route can name (no relay sends it)
                test = client.post(
                    f"/api/v1/webhooks/{hook.json()['id']}/test", headers=auth(admin)
                )
                assert test.status_code == 202, test.text
                yield World(
                    client=client,
                    ids={
                        "deployment_id": dep,
                        "version_id": version,
                        "job_id": promoted.json()["job"]["id"],
                        "environment": "production",
                        "hostname": "www.acme.test",
                        # what the token routes act on (these tests never change it)
                        "token_id": _token("deployments:read", workspace="acme")["token_id"],
                        "webhook_id": hook.json()["id"],
                        "delivery_id": test.json()["id"],
                    },
                    admin=admin,
                    reader=_token("deployments:read", workspace="acme"),
                    stranger=_token("admin", workspace="globex"),
                )
        finally:
            get_settings.cache_clear()


def row_counts() -> dict[str, int]:
    """Rows of every table."""
    from shipway.db import transaction
    from shipway.models import Base

    with transaction() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """The test writes no row in any table."""
    before = row_counts()
    yield
    assert row_counts() == before


# --------------------------------------------------------------------------- bodies


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def _types(schema: dict[str, Any]) -> set[str]:
    """JSON types a schema accepts (``any`` when it does not say)."""
    schema = _resolve(schema)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return set().union(*(_types(branch) for branch in branches))
    if "allOf" in schema:
        return set().union(*(_types(branch) for branch in schema["allOf"]))
    if "type" in schema:
        kind = schema["type"]
        return {kind, "integer"} if kind == "number" else {kind}
    return {"object"} if "properties" in schema else {"any"}


def minimal(schema: dict[str, Any]) -> Any:
    """The smallest valid instance of ``schema``: defaults, required properties only."""
    schema = _resolve(schema)
    if "default" in schema:
        return schema["default"]
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return minimal(next(b for b in branches if _resolve(b).get("type") != "null"))
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: minimal(properties[name]) for name in schema.get("required", [])}
    if kind == "string":
        for candidate in ("production", "x", "/"):
            pattern = schema.get("pattern")
            if pattern is None or re.search(pattern, candidate):
                return candidate
        pytest.fail(f"no string matches {schema}: teach test_hostile_api.minimal")
    return {"integer": schema.get("minimum", 1), "number": 1.0, "boolean": False}.get(kind, [])


def valid_request(op: Operation) -> dict[str, Any]:
    """Request kwargs with a valid body (a refusal then comes from auth, scope or ownership)."""
    if op.media_type is None:
        return {}
    if op.media_type == "multipart/form-data":
        return {"files": {"source": ("site.tar.gz", source_archive(), "application/gzip")}}
    return {"json": minimal(op.body_schema())}


def wrong_types(op: Operation) -> list[Any]:
    """JSON bodies that parse but have the wrong type: whole, or one property at a time."""
    schema = _resolve(op.body_schema())
    whole: tuple[Any, ...] = ([], "production", 42)
    bodies: list[Any] = [value for value in whole if "any" not in _types(schema)]
    base = minimal(schema)
    target = _resolve(next((b for b in schema.get("anyOf", []) if "$ref" in b), schema))
    for name, prop in target.get("properties", {}).items():
        accepted = _types(prop)
        wrong: tuple[tuple[Any, str], ...] = (
            ({"wrong": 1}, "object"),
            (["wrong"], "array"),
            ("wrong", "string"),
        )
        for value, kind in wrong:
            if kind not in accepted and "any" not in accepted:
                bodies.append({**(base or {}), name: value})
                break
    if target.get("additionalProperties") is False:
        bodies.append({**(base or {}), "no_such_field": 1})
    return bodies


# --------------------------------------------------------------------------- auth, scope, tenancy


def test_the_document_has_the_routes_we_expect() -> None:
    """Guards the parametrisation: an empty or truncated document would test nothing."""
    paths = {op.path for op in OPERATIONS}
    assert "/api/v1/deployments/{deployment_id}/versions/{version_id}/promote" in paths
    assert len(PRIVATE) >= 20 and len(WRITE_OPS) >= 8 and JSON_BODIES


@pytest.mark.parametrize("op", PRIVATE, ids=ids)
def test_no_token_is_401(world: World, op: Operation, unchanged: None) -> None:
    assert op.spec.get("security"), f"{op} does not document that it needs a token"
    response = world.send(op, None, **valid_request(op))
    op.assert_refused(response, 401, "unauthenticated")
    assert response.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("op", WRITE_OPS, ids=ids)
def test_read_only_token_on_a_write_is_403(world: World, op: Operation, unchanged: None) -> None:
    response = world.send(op, world.reader, **valid_request(op))
    op.assert_refused(response, 403, "insufficient_scope")


@pytest.mark.parametrize("op", SCOPED, ids=ids)
def test_another_workspaces_ids_are_404(world: World, op: Operation, unchanged: None) -> None:
    response = world.send(op, world.stranger, **valid_request(op))
    op.assert_refused(response, 404, "not_found")
    # Indistinguishable from ids that exist nowhere (apart from the ids themselves).
    real = {k: v for k, v in world.ids.items() if k.endswith("_id")}
    ghost = {k: v.split("_")[0] + "_" + "z" * 20 for k, v in real.items()}
    lost = world.send(op, world.stranger, **valid_request(op), path_ids=ghost)
    op.assert_refused(lost, 404, "not_found")

    def blind(text: str, ids: dict[str, str]) -> str:
        for key, value in ids.items():
            text = text.replace(value, f"<{key}>")
        return text

    assert blind(response.text, real) == blind(lost.text, ghost)
    assert "acme" not in response.text


KEYED = [
    op
    for op in OPERATIONS
    if any(p["name"] == "Idempotency-Key" for p in op.spec.get("parameters", []))
]


@pytest.mark.parametrize("op", KEYED, ids=ids)
def test_missing_idempotency_key_is_400(world: World, op: Operation, unchanged: None) -> None:
    header = next(p for p in op.spec["parameters"] if p["name"] == "Idempotency-Key")
    assert header["required"] is True, f"{op} documents Idempotency-Key as optional"
    response = world.send(op, world.admin, key=False, **valid_request(op))
    op.assert_refused(response, 400, "idempotency_key_required")


@pytest.mark.parametrize("path", sorted(SPEC["paths"]))
def test_other_methods_are_405_with_every_allowed_method(world: World, path: str) -> None:
    documented = {method.upper() for method in SPEC["paths"][path]}
    url = path.format(**{name: world.ids.get(name, "x") for name in re.findall(r"{(\w+)}", path)})
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
        response = world.client.request(method, url, headers=auth(world.admin))
        assert_error(response, 405, "method_not_allowed")
        assert set(response.headers["allow"].split(", ")) == documented, (method, path)


@pytest.mark.parametrize("path", sorted(path for _, path in PUBLIC))
def test_public_routes_need_no_token(world: World, path: str) -> None:
    assert world.client.get(path).status_code == 200


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("op", BODIES, ids=ids)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(world: World, op: Operation, chunked: bool, unchanged: None) -> None:
    if op.media_type == "multipart/form-data":
        content_type = "multipart/form-data; boundary=hostile"
        raw = (
            b"--hostile\r\n"
            b'Content-Disposition: form-data; name="source"; filename="big.tar.gz"\r\n'
            b"Content-Type: application/gzip\r\n\r\n"
            + b"\0" * (MAX_UPLOAD_BODY + 1)
            + b"\r\n--hostile--\r\n"
        )
    else:
        content_type = op.media_type or "application/json"
        raw = json.dumps({"pad": "x" * (MAX_REQUEST_BYTES + 1)}).encode()

    def pieces() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(raw), 65_536):
            yield raw[start : start + 65_536]

    response = world.send(
        op,
        world.admin,
        content=pieces() if chunked else raw,
        headers={"Content-Type": content_type},
    )
    op.assert_refused(response, 413, "payload_too_large")


MALFORMED_JSON = [b'{"environment": ', b"{'name': 'x'}", b"{,}", b"\xff\xfe", b'{"a": 1}}', b"nul"]


@pytest.mark.parametrize("op", JSON_BODIES, ids=ids)
def test_malformed_json_is_400(world: World, op: Operation, unchanged: None) -> None:
    for raw in MALFORMED_JSON:
        response = world.send(
            op, world.admin, content=raw, headers={"Content-Type": "application/json"}
        )
        op.assert_refused(response, 400, "malformed_json")


@pytest.mark.parametrize("op", JSON_BODIES, ids=ids)
def test_wrong_types_are_422(world: World, op: Operation, unchanged: None) -> None:
    bodies = wrong_types(op)
    assert bodies
    for body in bodies:
        response = world.send(op, world.admin, json=body)
        op.assert_refused(response, 422, "validation_error")
        assert response.json()["error"]["details"]["errors"], body


@pytest.mark.parametrize("op", [op for op in BODIES if op.media_type == "multipart/form-data"])
def test_malformed_multipart_is_4xx(world: World, op: Operation, unchanged: None) -> None:
    for content_type, raw in [
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nnot a part\r\n"),
        ("multipart/form-data", b"no boundary at all"),
        ("application/json", json.dumps({"source": "not a file"}).encode()),
    ]:
        response = world.send(op, world.admin, content=raw, headers={"Content-Type": content_type})
        assert response.status_code in (400, 415, 422), (content_type, response.text)
        op.assert_refused(response, response.status_code, None)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/deployments?cursor=%00",
        "/api/v1/jobs?deployment_id=%00",
        "/api/v1/deployments/dep%00x",
        "/api/v1/versions/ver%00",
    ],
)
def test_nul_characters_are_refused_not_500(world: World, path: str) -> None:
    """PostgreSQL text cannot hold NUL: found by the fuzzer as a 500 (test_fuzz_api)."""
    response = world.client.get(path, headers=auth(world.admin))
    assert response.status_code in (404, 422), response.text
    assert_error(response, response.status_code)


# --------------------------------------------------------------------------- the storm

STORM = 1000
CLIENTS = 100


async def _storm(base_url: str, path: str, token: dict[str, str]) -> list[tuple[int, Any]]:
    """STORM identical promotes from CLIENTS clients at once, each on its own connection.

    One client per connection, not one shared pool of CLIENTS connections: httpx's pool under
    this much concurrency now and then fails a request with a bare ReadError that the server
    never saw (encode/httpx#3348; uvicorn's trace log showed every connection open until the
    client closed them all), which made this test fail for the client's sake, not shipway's.
    """
    headers = auth(token, **{"Idempotency-Key": "storm"})
    answers: list[tuple[int, Any]] = []

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as http:
            for _ in range(STORM // CLIENTS):
                response = await http.post(
                    path, json={"environment": "production"}, headers=headers
                )
                answers.append((response.status_code, response.json()))

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return answers


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_thousand_identical_promotes_make_one_job(
    shipway_env: dict[str, str],
    deployment: dict[str, Any],
    make_version: VersionFactory,
    tmp_path: Path,
) -> None:
    from shipway.db import transaction
    from shipway.models import IdempotencyRecord, Job, Release

    version_id = make_version(deployment["id"], "ready", runtime_image=NEVER_RUN_IMAGE)
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    try:
        port = free_port()
        api = supervisor.spawn(
            "api",
            [executable("shipway"), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=child_env(shipway_env),
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_for_api(api, base_url)
        path = f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote"
        answers = asyncio.run(_storm(base_url, path, deployment["token"]))
        log = api.log()
    finally:
        supervisor.stop_all()

    assert len(answers) == STORM
    statuses = {status for status, _ in answers}
    assert statuses == {202}, [body for status, body in answers if status != 202][:3]
    first = answers[0][1]
    assert all(body == first for _, body in answers), "a replay differs from the first answer"
    assert "Traceback" not in log
    with transaction() as session:

        def count(model: Any, **where: str) -> int:
            query = select(func.count()).select_from(model).filter_by(**where)
            return session.scalar(query) or 0

        assert count(Job, version_id=version_id) == 1
        assert count(Release, version_id=version_id) == 1
        assert count(IdempotencyRecord, workspace_id=deployment["workspace_id"]) == 1
        assert first["job"]["id"] == session.scalar(
            select(Job.id).where(Job.version_id == version_id)
        )
