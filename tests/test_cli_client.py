"""The operator/CI command line client (``shipway deployments|publish|promote|queue|…``).

Fast tests run the CLI in-process (typer's CliRunner) against no server, a port with
nothing listening, or a tiny stub answering 503. The end-to-end test starts a real
``shipway api`` and ``shipway worker`` (PostgreSQL, Redis, Docker, HAProxy) and runs
``.venv/bin/shipway`` as a subprocess, the way CI would: publish follows a real build
to ``ready``, a broken Dockerfile exits 1 with the diagnosis, promote and rollback
follow their rollouts to ACTIVE, and every ``--json`` output parses.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from typer.testing import CliRunner

from shipway.cli import app
from shipway.client.api import parse_sse
from shipway.client.commands.promote import parse_canary
from shipway.client.common import UsageError
from shipway.client.config import load_config, save_config
from shipway.client.pack import pack_folder
from tests.e2e import conftest as e2e
from tests.support.processes import executable

BASE_IMAGE = "shipway/busybox:local"
stack = e2e.stack  # the e2e fixture: PostgreSQL, Redis, and a process supervisor


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No client settings from the outside world; the config file lives in tmp."""
    for name in ("SHIPWAY_TOKEN", "SHIPWAY_API_URL", "SHIPWAY_CLI_POLL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHIPWAY_CONFIG", str(path))
    return path


def free_port() -> int:
    """A TCP port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- fast


def test_no_token_is_a_usage_error(cli_env: Path) -> None:
    result = CliRunner().invoke(app, ["deployments", "list"])
    assert result.exit_code == 2, result.output
    assert "no API token" in result.stderr and "shipway login" in result.stderr


def test_unreachable_api_exits_4(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPWAY_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SHIPWAY_TOKEN", "sw_nothing")
    for args in (["deployments", "list"], ["queue", "--json"], ["jobs", "show", "job_x"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 4, (args, result.output)
        assert "cannot reach the API" in result.stderr
        assert result.stdout == ""


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"error": {"code": "database_unavailable", "message": "db down", "details": {}}}
        ).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_server_error_exits_4_with_the_api_message(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SHIPWAY_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("SHIPWAY_TOKEN", "sw_x")
        result = CliRunner().invoke(app, ["jobs", "list"])
    finally:
        server.shutdown()
    assert result.exit_code == 4, result.output
    assert "database_unavailable" in result.stderr and "db down" in result.stderr


class _OtherService(BaseHTTPRequestHandler):
    """Some other web server (Go's default 404), remembering the paths asked."""

    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_another_service_is_named_with_its_url_and_api_v1_urls_work(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("SHIPWAY_TOKEN", "sw_x")
    try:
        results = []
        for url in (root, f"{root}/api/v1", f"{root}/api/v1/"):  # as copied from the docs
            monkeypatch.setenv("SHIPWAY_API_URL", url)
            results.append(CliRunner().invoke(app, ["jobs", "list"]))
    finally:
        server.shutdown()
    assert _OtherService.paths and all(
        path.startswith("/api/v1/jobs") for path in _OtherService.paths
    ), _OtherService.paths  # never /api/v1/api/v1/...
    for result in results:
        assert result.exit_code == 3, result.output  # an API error, not unreachable
        assert f"{root}/api/v1/jobs" in result.stderr  # the URL that answered
        assert "404 page not found" in result.stderr and "SHIPWAY_API_URL" in result.stderr
        assert "does not support it" not in result.stderr


def test_bad_canary_spec_is_a_usage_error(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPWAY_TOKEN", "sw_x")
    result = CliRunner().invoke(app, ["promote", "ver_x", "--canary", "ten:30"])
    assert result.exit_code == 2, result.output
    assert "WEIGHT[:PAUSE_SECONDS]" in result.stderr
    result = CliRunner().invoke(app, ["promote", "ver_x", "--max-error-rate", "0.1"])
    assert result.exit_code == 2 and "need --canary" in result.stderr
    result = CliRunner().invoke(app, ["promote"])  # click's own usage error
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 2 and "--deployment" in result.stderr
    result = CliRunner().invoke(app, ["publish", "/nonexistent", "-d", "dep_x"])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_canary_steps_become_a_strategy() -> None:
    assert parse_canary("10:30, 50:60,90") == {
        "type": "canary",
        "steps": [
            {"weight": 10, "pause_seconds": 30.0},
            {"weight": 50, "pause_seconds": 60.0},
            {"weight": 90},
        ],
    }
    strategy = parse_canary("25:5", analysis_interval=2, max_error_rate=0.05, min_requests=10)
    assert strategy["analysis"] == {
        "interval_seconds": 2,
        "max_error_rate": 0.05,
        "min_requests": 10,
    }
    with pytest.raises(UsageError):
        parse_canary("150:10")


def test_login_writes_a_private_config_and_env_wins(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["login", "--url", url, "--token", 'sw_"quoted"'])
    assert result.exit_code == 4, result.output  # verifies first: nothing listens
    assert not cli_env.exists()

    args = ["login", "--url", url + "/", "--token", 'sw_"quoted"', "--no-verify"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(cli_env.stat().st_mode) == 0o600
    config = load_config()
    assert (config.url, config.token) == (url, 'sw_"quoted"')

    monkeypatch.setenv("SHIPWAY_TOKEN", "sw_env")
    monkeypatch.setenv("SHIPWAY_API_URL", "http://example.invalid:1")
    config = load_config()
    assert (config.url, config.token, config.source) == (
        "http://example.invalid:1",
        "sw_env",
        "SHIPWAY_TOKEN",
    )
    save_config(url="http://a", token="b", path=cli_env)
    monkeypatch.delenv("SHIPWAY_TOKEN")
    assert load_config().token == "b"


def test_pack_skips_git_and_shipwayignore(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / ".git" / "objects").mkdir(parents=True)
    (site / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (site / "node_modules" / "x").mkdir(parents=True)
    (site / "node_modules" / "x" / "index.js").write_text("x")
    (site / "css").mkdir()
    (site / "css" / "site.css").write_text("h1 {}")
    (site / "css" / "site.css.map").write_text("{}")
    (site / "index.html").write_text("<h1>hi</h1>")
    (site / "secret.env").write_text("TOKEN=1")
    (site / ".shipwayignore").write_text("# build output\nnode_modules/\n*.map\n/secret.env\n")
    packed = pack_folder(site)
    with tarfile.open(fileobj=packed.file, mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["css", "css/site.css", "index.html"]
    assert packed.files == 2 and packed.size > 0
    time.sleep(1.1)  # gzip headers carry seconds: the same folder must give the same bytes
    assert pack_folder(site).sha256 == packed.sha256


def test_sse_parser_reads_events_ids_and_skips_pings() -> None:
    lines = [
        ": ping",
        "event: phase",
        "id: 3.0",
        'data: {"to_state": "build"}',
        "",
        "event: log",
        "id: 3.10",
        'data: {"line": "Step 1/2"}',
        "",
    ]
    messages = list(parse_sse(iter(lines)))
    assert [(m.event, m.id, m.data) for m in messages] == [
        ("phase", "3.0", {"to_state": "build"}),
        ("log", "3.10", {"line": "Step 1/2"}),
    ]


# --------------------------------------------------------------------------- end to end


class Running:
    """A CLI command still running: its stderr lines as they come."""

    def __init__(self, process: subprocess.Popen[str], stream: str = "stderr") -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.followed = process.stderr if stream == "stderr" else process.stdout
        self.other = process.stdout if stream == "stderr" else process.stderr
        self.reader = threading.Thread(target=self._read, args=(self.followed,), daemon=True)
        self.reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(
        self, match: Callable[[str], bool], *, timeout: float = 60, seen: bool = False
    ) -> str:
        """The first stderr line matching (``seen``: also among lines already read)."""
        if seen:
            for earlier in self.seen:
                if match(earlier):
                    return earlier
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match(line):
                return line
        raise AssertionError("no matching line in:\n" + "\n".join(self.seen))

    def finish(self, *, timeout: float) -> tuple[str, str]:
        """Wait for the exit; the other stream's output, and all of the followed one."""
        assert self.other is not None
        try:
            self.process.wait(timeout=timeout)  # a command that never ends fails here
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        other = self.other.read()
        self.reader.join(timeout=5)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        return other, "\n".join(self.seen)


@dataclass
class Outcome:
    """How a CLI command ended."""

    returncode: int
    stdout: str
    stderr: str


class Cli:
    """Runs the CLI with the client's environment: in-process (CliRunner), or as a
    subprocess of ``.venv/bin/shipway`` (``process=True``) the way CI would."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, token: str | None = None, process: bool = False, **env: str
    ) -> Outcome:
        """Run one command to its end."""
        full = {**self.env, **({"SHIPWAY_TOKEN": token} if token else {}), **env}
        if not process:
            result = CliRunner().invoke(app, list(args), env=full)
            return Outcome(result.exit_code, result.stdout, result.stderr)
        done = subprocess.run(
            [executable("shipway"), *args],
            env=full,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Outcome(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, stream: str = "stderr") -> Running:
        """Start a command as a subprocess without waiting for it; follow ``stream``."""
        process = subprocess.Popen(
            [executable("shipway"), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return Running(process, stream)

    def json(self, *args: str, process: bool = False, **env: str) -> Any:
        """Run a ``--json`` command that must succeed; its parsed stdout."""
        done = self(*args, "--json", process=process, **env)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout)


@pytest.fixture
def engine_cleanup() -> Iterator[list[str]]:
    """Deployment ids whose images (built by publish) are removed at the end."""
    deployments: list[str] = []
    yield deployments
    client = docker.from_env()
    try:
        for deployment_id in deployments:
            selector = {"label": f"shipway.deployment={deployment_id}"}
            for container in client.containers.list(all=True, filters=selector):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            for image in client.images.list(filters=selector):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.images.remove(image.id, force=True)
    finally:
        client.close()


@pytest.mark.e2e
def test_cli_against_a_real_api_and_worker(
    stack: e2e.Stack, tmp_path: Path, engine_cleanup: list[str]
) -> None:
    from tests.e2e.helpers import api_token

    try:
        docker.from_env().images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing: run `make provision`")
    api = stack.start_api()
    stack.start_worker("cli")
    token = api_token("deployments:write", "admin", workspace="cli")
    env = {
        **stack.env,
        "SHIPWAY_API_URL": api.base_url,
        "SHIPWAY_TOKEN": token,
        "SHIPWAY_CONFIG": str(tmp_path / "none.toml"),
        "COLUMNS": "200",
    }
    cli = Cli(env)

    # Bad token: 401 with the API's message, exit 3.
    denied = cli("deployments", "list", token="sw_not-a-token")
    assert denied.returncode == 3, (denied.stdout, denied.stderr)
    assert "401" in denied.stderr and "unauthenticated" in denied.stderr

    # Deployments.
    site = cli.json("deployments", "create", "cli-site", "--kind", "static")
    engine_cleanup.append(site["id"])
    assert site["kind"] == "static" and site["environments"][0]["name"] == "production"
    listed = cli.json("deployments", "list")
    assert [d["id"] for d in listed["data"]] == [site["id"]] and listed["next_cursor"] is None
    assert cli.json("deployments", "show", site["id"])["name"] == "cli-site"
    shown = cli("deployments", "show", site["id"])
    assert shown.returncode == 0 and "production" in shown.stdout

    # Publish a static site: follows the real build to ready, printing the log.
    folder = tmp_path / "site"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "index.html").write_text("<h1>hello from the cli</h1>\n")
    published = cli("publish", str(folder), "--deployment", site["id"], process=True)
    assert published.returncode == 0, (published.stdout, published.stderr)
    assert "Idempotency-Key: cli-" in published.stderr
    assert "==> phase build" in published.stdout
    assert "shipway: build succeeded" in published.stdout  # the build log, live
    assert "is ready" in published.stdout
    versions = cli.json("versions", "list", site["id"])["data"]
    assert [v["state"] for v in versions] == ["ready"]
    v1 = versions[0]["id"]

    # The same with --json: stdout is one JSON document, progress on stderr.
    (folder / "index.html").write_text("<h1>v2</h1>\n")
    second = cli.json(
        "publish", str(folder), "-d", site["id"], "--idempotency-key", "ci-v2", process=True
    )
    v2 = second["version"]["id"]
    assert second["version"]["state"] == "ready" and second["job"]["state"] == "succeeded"
    assert second["version"]["version_number"] == 2
    again = cli.json("publish", str(folder), "-d", site["id"], "--idempotency-key", "ci-v2")
    assert again["version"]["id"] == v2  # the key replays the first answer

    # Build log.
    log = cli("logs", v1)
    assert log.returncode == 0 and "shipway: build succeeded" in log.stdout
    followed = cli("logs", v1, "--follow", "--deployment", site["id"])
    assert followed.returncode == 0 and "shipway: build succeeded" in followed.stdout

    # Promote v1: follows the phases to ACTIVE.
    promoted = cli("promote", v1, "--env", "production", process=True)
    assert promoted.returncode == 0, (promoted.stdout, promoted.stderr)
    assert "==> phase health_check" in promoted.stdout
    assert "is ACTIVE" in promoted.stdout
    shown = cli.json("versions", "show", v1)
    assert shown["status"] == "ACTIVE" and shown["releases"][0]["environment"] == "production"

    # Promote v2 as a canary (JSON on stdout, live steps on stderr); pause it, then promote
    # it at once from another command; the first one follows it to ACTIVE.
    canary = cli.start(
        "promote", v2, "-d", site["id"], "--canary", "20:60,50:60", "--min-requests", "1", "--json"
    )
    step = canary.wait_for(lambda line: line.startswith("canary ") and "weight 20%" in line)
    job_id = canary.wait_for(lambda line: "job job_" in line, seen=True).split("job ")[-1]
    job_id = job_id.split(",")[0].strip()
    assert "step 1/2" in step
    assert cli.json("jobs", "pause", job_id)["paused"] is True
    canary.wait_for(lambda line: "PAUSED" in line)
    assert cli("jobs", "promote-now", job_id).returncode == 0
    stdout, stderr = canary.finish(timeout=60)
    assert canary.process.returncode == 0, (stdout, stderr)
    result = json.loads(stdout)
    assert result["release"]["status"] == "ACTIVE" and result["job"]["state"] == "succeeded"
    assert result["release"]["rollout"]["canary"]["state"] == "completed"
    assert "promote now requested" in stderr and "is ACTIVE" in stderr

    # Roll back to v1's retained image.
    back = cli.json("rollback", "--to", v1)
    assert back["job"]["kind"] == "rollback" and back["job"]["state"] == "succeeded"
    assert back["release"]["status"] == "ACTIVE" and back["release"]["version_id"] == v1
    assert cli.json("versions", "show", v2)["status"] == "ROLLED_BACK"

    # Jobs.
    jobs = cli.json("jobs", "list", "--deployment", site["id"])["data"]
    kinds = {j["kind"] for j in jobs}
    assert {"publish", "promote", "rollback"} <= kinds
    # --json keeps the page's cursor: the rest of the list is one call away.
    first = cli.json("jobs", "list", "--deployment", site["id"], "--limit", "1")
    assert len(first["data"]) == 1 and first["next_cursor"]
    rest = cli.json("jobs", "list", "-d", site["id"], "--cursor", first["next_cursor"])
    assert [j["id"] for j in first["data"] + rest["data"]] == [j["id"] for j in jobs]
    assert rest["next_cursor"] is None
    job_id = back["job"]["id"]
    assert cli.json("jobs", "show", job_id)["id"] == job_id
    table = cli("jobs", "list")
    assert table.returncode == 0 and job_id in table.stdout
    # Following an ended job by polling (the fallback) ends at once.
    polled = cli("jobs", "show", job_id, "--follow", SHIPWAY_CLI_POLL="1")
    assert polled.returncode == 0 and "succeeded" in polled.stdout
    # An ended job cannot be cancelled (409), and canary actions refuse too: exit 3.
    refused = cli("jobs", "cancel", job_id)
    assert refused.returncode == 3 and "409" in refused.stderr
    paused = cli("jobs", "pause", job_id)
    assert paused.returncode == 3 and paused.stderr.strip()

    # A broken Dockerfile: exit 1 with the diagnosis printed.
    broken = cli.json("deployments", "create", "cli-broken", "--kind", "container")
    engine_cleanup.append(broken["id"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo about-to-fail && false\n")
    failed = cli("publish", str(bad), "-d", broken["id"], process=True)
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "build_failed" in failed.stdout
    assert "What to do:" in failed.stdout and "Evidence:" in failed.stdout
    assert "about-to-fail" in failed.stdout

    # Queue: JSON parses; the table shows the sections; --watch refreshes until Ctrl-C.
    view = cli.json("queue")
    assert {q["name"] for q in view["queues"]} == {"builds", "rollouts"}
    assert view["workers"] and any(w["alive"] for w in view["workers"])
    assert any(f["failure_reason"] == "build_failed" for f in view["failures_last_hour"])
    table = cli("queue")
    assert table.returncode == 0 and "Queues" in table.stdout and "build_failed" in table.stdout
    watcher = cli.start("queue", "--watch", "--interval", "0.3", stream="stdout")
    for _ in range(2):  # piped: one snapshot per refresh
        watcher.wait_for(lambda line: line.startswith("Queues"))
    watcher.process.send_signal(signal.SIGINT)
    stderr, _ = watcher.finish(timeout=10)
    assert watcher.process.returncode == 130, stderr
    assert "interrupted" in stderr

    # Unknown ids are the API's 404, exit 3.
    missing = cli("versions", "show", "ver_missing")
    assert missing.returncode == 3 and "404" in missing.stderr
    assert os.environ.get("SHIPWAY_TOKEN") is None  # the test never leaked its token
