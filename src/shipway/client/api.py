"""A small typed HTTP client of the shipway API (``/api/v1``).

Every method returns the decoded JSON body. Failures raise ``ClientError``: an answer
in the API's error shape ``{"error": {"code", "message", "details"}}`` keeps its
status, code and message; a connection failure has ``status`` ``None``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from shipway import __version__
from shipway.client.sse import SseMessage, parse_sse

__all__ = ["ClientError", "ShipwayClient", "SseMessage", "parse_sse"]

Json = dict[str, Any]
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Streams wait for the server between messages (it pings every 15 s).
STREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=5.0)
UPLOAD_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=300.0, pool=5.0)
RATE_LIMIT_RETRIES = 3  # resends of a request refused by the token's rate limit (429)


def _retry_after(response: httpx.Response) -> float:
    """The 429's Retry-After in seconds (1 when missing or odd), at most 30."""
    value = response.headers.get("retry-after", "1")
    return min(30.0, float(value)) if value.isdigit() else 1.0


@dataclass
class ClientError(Exception):
    """The API refused a request (``status`` 4xx/5xx) or could not be reached (``None``)."""

    status: int | None
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    path: str = ""

    def __str__(self) -> str:
        where = f" ({self.method} {self.path} → {self.status})" if self.status else ""
        return f"{self.code}: {self.message}{where}"

    @property
    def unreachable(self) -> bool:
        """No answer, or a server-side failure (5xx): worth retrying later."""
        return self.status is None or self.status >= 500

    @property
    def not_shipway(self) -> bool:
        """The answer is not in shipway's error shape: another server answered."""
        return self.code.startswith("http_")

    @property
    def route_missing(self) -> bool:
        """The server has no such route (an older API): 405, or FastAPI's bare 404."""
        return self.status == 405 or (self.status == 404 and self.message == "Not Found")


def _error_of(response: httpx.Response, method: str, path: str) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ClientError(
            status=response.status_code,
            code=str(error.get("code") or "error"),
            message=str(error.get("message") or response.reason_phrase),
            details=error.get("details") if isinstance(error.get("details"), dict) else {},
            method=method,
            path=path,
        )
    try:
        text = response.text.strip()[:300]
    except httpx.ResponseNotRead:
        text = ""
    answer = text or response.reason_phrase or "unexpected answer"
    try:
        url = str(response.request.url)
    except RuntimeError:  # a response built without its request
        url = path
    return ClientError(
        status=response.status_code,
        code=f"http_{response.status_code}",
        message=f"{url} answered {response.status_code} {answer!r}, not in "
        "shipway's error shape: is this address the shipway API?",
        method=method,
        path=path,
    )


def api_root(url: str) -> str:
    """The server's root URL: a URL given with the API's ``/api/v1`` prefix (as copied
    from the docs or a browser) works too."""
    return url.strip().rstrip("/").removesuffix("/api/v1").rstrip("/")


def _unreachable(error: httpx.HTTPError, base_url: str, method: str, path: str) -> ClientError:
    kind = type(error).__name__
    return ClientError(
        status=None,
        code="unreachable",
        message=f"cannot reach the API at {base_url}: {kind}: {error}".rstrip(": "),
        method=method,
        path=path,
    )


class ShipwayClient:
    """Calls the API with a bearer token; one method per endpoint the CLI uses.

    ``ShipwayClient(base_url="https://shipway.internal", token="shw_…")``; use it as a
    context manager (or ``close()`` it). Higher-level helpers (publish a folder, promote,
    wait for a job) are in ``shipway.client`` (docs/python-client.md).
    """

    def __init__(
        self, *, base_url: str, token: str | None, http: httpx.Client | None = None
    ) -> None:
        self.base_url = api_root(base_url)
        headers = {"User-Agent": f"shipway-cli/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = http or httpx.Client(base_url=self.base_url, timeout=TIMEOUT)
        self.http.headers.update(headers)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> ShipwayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer, or ``ClientError``."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = self.http.request(
                    method,
                    path,
                    params=clean,
                    json=json_body,
                    headers=headers,
                    files=files,
                    data=data,
                    timeout=timeout or TIMEOUT,
                )
            except httpx.HTTPError as error:
                raise _unreachable(error, self.base_url, method, path) from None
            # 429: the token's rate limit refused it before any work; wait as told, resend
            # (an upload's file was read already, so it is not resent).
            if response.status_code != 429 or files or attempt == RATE_LIMIT_RETRIES:
                break
            time.sleep(_retry_after(response))
        if response.status_code >= 400:
            raise _error_of(response, method, path)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            return response.text

    def _text(self, path: str, params: dict[str, Any] | None = None) -> str:
        try:
            response = self.http.get(path, params=params, headers={"Accept": "text/plain"})
        except httpx.HTTPError as error:
            raise _unreachable(error, self.base_url, "GET", path) from None
        if response.status_code >= 400:
            raise _error_of(response, "GET", path)
        return response.text

    def _stream_lines(
        self, path: str, *, params: dict[str, Any] | None = None, headers: dict[str, str]
    ) -> Iterator[str]:
        try:
            with self.http.stream(
                "GET", path, params=params, headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response, "GET", path)
                yield from response.iter_lines()
        except httpx.HTTPError as error:
            raise _unreachable(error, self.base_url, "GET", path) from None

    # ------------------------------------------------------------------ deployments

    def create_deployment(self, *, body: Json) -> Json:
        """``POST /deployments``."""
        result: Json = self.request("POST", "/api/v1/deployments", json_body=body)
        return result

    def list_deployments(self, *, limit: int = 50, cursor: str | None = None) -> Json:
        """``GET /deployments`` (one page)."""
        params = {"limit": limit, "cursor": cursor}
        result: Json = self.request("GET", "/api/v1/deployments", params=params)
        return result

    def get_deployment(self, *, deployment_id: str) -> Json:
        """``GET /deployments/{id}`` with its environments."""
        result: Json = self.request("GET", f"/api/v1/deployments/{deployment_id}")
        return result

    # ------------------------------------------------------------------ versions

    def publish(
        self,
        *,
        deployment_id: str,
        archive: IO[bytes],
        form: dict[str, str],
        idempotency_key: str,
        filename: str = "source.tar.gz",
        media_type: str = "application/gzip",
    ) -> Json:
        """``POST /deployments/{id}/versions``: upload a source archive (multipart)."""
        result: Json = self.request(
            "POST",
            f"/api/v1/deployments/{deployment_id}/versions",
            files={"source": (filename, archive, media_type)},
            data=form,
            headers={"Idempotency-Key": idempotency_key},
            timeout=UPLOAD_TIMEOUT,
        )
        return result

    def list_versions(
        self,
        *,
        deployment_id: str,
        state: str | None = None,
        environment: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Json:
        """``GET /deployments/{id}/versions`` (one page, newest first)."""
        params = {"state": state, "environment": environment, "limit": limit, "cursor": cursor}
        result: Json = self.request(
            "GET", f"/api/v1/deployments/{deployment_id}/versions", params=params
        )
        return result

    def get_version(self, *, version_id: str, environment: str | None = None) -> Json:
        """``GET /versions/{id}``: the lifecycle shape (carries ``deployment_id``)."""
        params = {"environment": environment}
        result: Json = self.request("GET", f"/api/v1/versions/{version_id}", params=params)
        return result

    def get_deployment_version(
        self, *, deployment_id: str, version_id: str, environment: str | None = None
    ) -> Json:
        """``GET /deployments/{id}/versions/{version_id}``: the full row."""
        result: Json = self.request(
            "GET",
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}",
            params={"environment": environment},
        )
        return result

    def build_log(self, *, deployment_id: str, version_id: str) -> str:
        """The build log so far (plain text)."""
        return self._text(f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log")

    def follow_build_log(self, *, deployment_id: str, version_id: str) -> Iterator[str]:
        """The build log's lines as they are written, until the build ends."""
        return self._stream_lines(
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log",
            params={"follow": 1},
            headers={"Accept": "text/plain"},
        )

    def promote(
        self,
        *,
        deployment_id: str,
        version_id: str,
        environment: str,
        strategy: Json | None,
        supersede: bool,
        idempotency_key: str,
    ) -> Json:
        """``POST …/promote``: ``{"release", "job"}``."""
        body: Json = {"environment": environment, "supersede": supersede}
        if strategy is not None:
            body["strategy"] = strategy
        result: Json = self.request(
            "POST",
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/promote",
            json_body=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        return result

    def rollback(
        self,
        *,
        deployment_id: str,
        environment: str,
        to_version_id: str | None,
        idempotency_key: str,
    ) -> Json:
        """``POST /deployments/{id}/rollback``: ``{"release", "job"}``."""
        body: Json = {"environment": environment}
        if to_version_id:
            body["to_version_id"] = to_version_id
        result: Json = self.request(
            "POST",
            f"/api/v1/deployments/{deployment_id}/rollback",
            json_body=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        return result

    # ------------------------------------------------------------------ jobs and queue

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        deployment_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Json:
        """``GET /jobs`` (one page, newest first)."""
        params = {
            "state": state,
            "kind": kind,
            "deployment_id": deployment_id,
            "limit": limit,
            "cursor": cursor,
        }
        result: Json = self.request("GET", "/api/v1/jobs", params=params)
        return result

    def get_job(self, *, job_id: str) -> Json:
        """``GET /jobs/{id}``."""
        result: Json = self.request("GET", f"/api/v1/jobs/{job_id}")
        return result

    def job_action(self, *, job_id: str, action: str) -> Json:
        """``POST /jobs/{id}/{action}``: cancel, pause, resume, abort, promote-now."""
        result: Json = self.request("POST", f"/api/v1/jobs/{job_id}/{action}")
        return result

    def job_events(self, *, job_id: str, last_event_id: str | None = None) -> Iterator[SseMessage]:
        """``GET /jobs/{id}/events``: the job's server-sent events until it ends."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        return parse_sse(self._stream_lines(f"/api/v1/jobs/{job_id}/events", headers=headers))

    def queue(self) -> Json:
        """``GET /queue``: the operator view."""
        result: Json = self.request("GET", "/api/v1/queue")
        return result
