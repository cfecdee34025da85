"""Clients of a real API and worker: a generated client, the Python library, CI pipelines.

One ``shipway api`` and one ``shipway worker`` (PostgreSQL, Redis, Docker, HAProxy)
serve the three tests of this module:

- openapi-python-client generates a client from the running server's /openapi.json
  (into a tmp folder, with the generator from its own virtualenv, as
  ``scripts/provision.sh`` makes it); that client publishes a static site, waits for
  the build, promotes and rolls back;
- ``shipway.client`` used the way docs/python-client.md shows: publish a folder and a
  tar.gz, wait, follow events, promote, roll back, errors as ``ClientError``/``JobFailed``;
- the shell steps of examples/ci/ (the GitHub Actions workflow and the GitLab CI file
  both run examples/ci/deploy.sh) run for real in a git repository made here: a good
  commit reaches staging and production; a broken build fails with its diagnosis.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import yaml

from tests.e2e.conftest import running_stack
from tests.support.processes import executable
from tests.support.services import Postgres

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "shipway/busybox:local"
GENERATOR_VENV = ROOT / ".scratch" / "openapi-client-venv"
GENERATOR_SPEC = "openapi-python-client>=0.21,<0.30"
GENERATED = "shipway_generated_client"

pytestmark = pytest.mark.e2e


@dataclass
class Server:
    """The shared API + worker, a token of its workspace, and the children's environment."""

    base_url: str
    token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(postgres_server: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.e2e.helpers import api_token

    try:
        docker.from_env().images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing: run `make provision`")
    failures: list[bool] = []
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        running_stack(
            postgres_server,
            tmp_path_factory.mktemp("clients"),
            monkeypatch,
            failed=lambda: bool(failures),
        ) as stack,
    ):
        api = stack.start_api()
        stack.start_worker("clients")
        token = api_token("deployments:write", workspace="clients")
        yield Server(base_url=api.base_url, token=token, env=stack.env)


def site_archive(text: str) -> bytes:
    """A static site (``index.html``) as tar.gz bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------- generated client


def generator() -> str:
    """The openapi-python-client executable of its own virtualenv (made once, cached)."""
    script = GENERATOR_VENV / "bin" / "openapi-python-client"
    if not script.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(GENERATOR_VENV)], check=True)
            subprocess.run(
                [str(GENERATOR_VENV / "bin" / "pip"), "install", "-q", GENERATOR_SPEC],
                check=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"openapi-python-client cannot be installed here: {error}")
    return str(script)


def generate_client(base_url: str, into: Path) -> Any:
    """Generate a client package from the server's /openapi.json and import it."""
    spec = into / "openapi.json"
    spec.write_bytes(httpx.get(f"{base_url}/openapi.json", timeout=10).content)
    (into / "config.yml").write_text("post_hooks: []\n")
    done = subprocess.run(
        [
            generator(),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(into / GENERATED),
            "--config",
            str(into / "config.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module(GENERATED)
    finally:
        sys.path.remove(str(into))


def test_a_generated_client_publishes_promotes_and_rolls_back(
    server: Server, tmp_path: Path
) -> None:
    package = generate_client(server.base_url, tmp_path)

    def module(name: str) -> Any:
        return importlib.import_module(f"{GENERATED}.{name}")

    models, types = module("models"), module("types")
    create = module("api.deployments.create_deployment")
    publish, promote = module("api.versions.publish_version"), module("api.versions.promote")
    rollback, get_job = module("api.versions.rollback"), module("api.jobs.get_job")
    lifecycle_of = module("api.versions.get_version_lifecycle")
    client = package.AuthenticatedClient(base_url=server.base_url, token=server.token)

    def wait(job_id: str) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = str(getattr((job := get_job.sync(job_id, client=client)).state, "value", ""))
            if state in ("succeeded", "failed", "cancelled"):
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end: {job}")

    deployment = create.sync(
        client=client, body=models.DeploymentCreate.from_dict({"name": "gen", "kind": "static"})
    )
    assert isinstance(deployment, models.DeploymentRead), deployment

    def publish_site(text: str, key: str) -> str:
        body = models.BodyPublishVersion(
            source=types.File(payload=io.BytesIO(site_archive(text)), file_name="site.tar.gz"),
            git_branch="main",
            git_hash="abc123",
            is_dirty=False,
        )
        answer = publish.sync_detailed(deployment.id, client=client, body=body, idempotency_key=key)
        assert answer.status_code == 202, answer.content
        assert wait(answer.parsed.job.id) == "succeeded"
        return str(answer.parsed.version.id)

    v1 = publish_site("<h1>one</h1>", "gen-v1")
    v2 = publish_site("<h1>two</h1>", "gen-v2")
    shown = lifecycle_of.sync(v1, client=client)
    assert shown.git_branch == "main" and shown.git_hash == "abc123", shown

    for version_id, key in ((v1, "gen-p1"), (v2, "gen-p2")):
        promoted = promote.sync(
            deployment.id,
            version_id,
            client=client,
            body=models.PromoteRequest.from_dict({"environment": "production"}),
            idempotency_key=key,
        )
        assert isinstance(promoted, models.PromoteResponse), promoted
        assert wait(promoted.job.id) == "succeeded"

    back = rollback.sync(
        deployment.id,
        client=client,
        body=models.RollbackRequest.from_dict({"environment": "production"}),
        idempotency_key="gen-rb",
    )
    assert isinstance(back, models.PromoteResponse), back
    assert wait(back.job.id) == "succeeded"
    lifecycle = lifecycle_of.sync(v1, client=client, environment="production")
    assert str(getattr(lifecycle.status, "value", lifecycle.status)) == "ACTIVE"
    # Errors come back in the API's shape, typed.
    missing = lifecycle_of.sync("ver_missing", client=client)
    assert isinstance(missing, models.ErrorResponse) and missing.error.code == "not_found"


# --------------------------------------------------------------------------- the library


def test_the_python_library_as_documented(server: Server, tmp_path: Path) -> None:
    from shipway.client import (
        ClientError,
        JobFailed,
        ShipwayClient,
        Update,
        canary_strategy,
        promote,
        publish,
        rollback,
        wait_for_job,
    )

    with ShipwayClient(base_url=server.base_url, token=server.token) as client:
        site = client.create_deployment(body={"name": "lib", "kind": "static"})
        folder = tmp_path / "site"
        folder.mkdir()
        (folder / "index.html").write_text("<h1>from a folder</h1>\n")
        accepted = publish(
            client, deployment_id=site["id"], source=folder, metadata={"git_branch": "main"}
        )
        seen: list[Update] = []
        end = wait_for_job(client, job_id=accepted["job"]["id"], on_update=seen.append, check=True)
        assert end["state"] == "succeeded" and {u.kind for u in seen} >= {"phase", "log"}
        v1 = accepted["version"]["id"]
        assert client.get_version(version_id=v1)["state"] == "ready"

        archive = tmp_path / "site.tar.gz"
        archive.write_bytes(site_archive("<h1>from a tar.gz</h1>"))
        v2_accepted = publish(client, deployment_id=site["id"], source=archive, git=False)
        wait_for_job(client, job_id=v2_accepted["job"]["id"], check=True)
        v2 = v2_accepted["version"]["id"]

        first = promote(client, version_id=v1, environment="production")
        wait_for_job(client, job_id=first["job"]["id"], check=True)
        # A canary over an active release: promoted at once from the job's controls.
        strategy = canary_strategy([(20, 60)], min_requests=1)
        canary = promote(client, version_id=v2, canary=strategy)
        events = client.job_events(job_id=canary["job"]["id"])
        for message in events:
            if message.event == "progress" and "canary" in str(message.data):
                client.job_action(job_id=canary["job"]["id"], action="promote-now")
                break
        wait_for_job(client, job_id=canary["job"]["id"], check=True)
        assert client.get_version(version_id=v2, environment="production")["status"] == "ACTIVE"

        back = rollback(client, deployment_id=site["id"], environment="production")
        wait_for_job(client, job_id=back["job"]["id"], check=True)
        assert client.get_version(version_id=v1, environment="production")["status"] == "ACTIVE"

        with pytest.raises(ClientError) as refused:
            client.get_job(job_id="job_missing")
        assert refused.value.status == 404 and refused.value.code == "not_found"
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN false\n")
        app = client.create_deployment(body={"name": "lib-broken", "kind": "container"})
        bad = publish(client, deployment_id=app["id"], source=broken)
        with pytest.raises(JobFailed) as failed:
            wait_for_job(client, job_id=bad["job"]["id"], check=True)
        assert failed.value.end["failure_reason"] == "build_failed"
        assert "build_failed" in str(failed.value)


# --------------------------------------------------------------------------- CI pipelines


def pipeline_env() -> dict[str, str]:
    """What both CI files give deploy.sh (their env/variables), checked to agree."""
    github = yaml.safe_load((ROOT / "examples/ci/github/workflows/shipway.yml").read_text())
    gitlab = yaml.safe_load((ROOT / "examples/ci/gitlab/.gitlab-ci.yml").read_text())
    job = github["jobs"]["deploy"]
    assert any(step.get("run") == "bash ci/deploy.sh" for step in job["steps"])
    assert gitlab["deploy"]["script"] == ["bash ci/deploy.sh"]
    shared = {k: v for k, v in gitlab["deploy"]["variables"].items() if not v.startswith("$")}
    assert {k: job["env"][k] for k in shared} == shared
    return shared


def git_repo(path: Path, files: dict[str, str], message: str) -> str:
    """Commit ``files`` under ``site/`` in a git repository at ``path``; the commit hash."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "CI Bot", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "CI Bot", "GIT_COMMITTER_EMAIL": "ci@example.com"}  # fmt: skip
    if not (path / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    for name, text in files.items():
        (path / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (path / "site" / name).write_text(text)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", message], check=True, env=env)
    head = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "--detach"], check=True, env=env)
    return head


def run_pipeline(
    server: Server, repo: Path, deployment_id: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    ci = repo / "ci"
    ci.mkdir(exist_ok=True)
    (ci / "deploy.sh").write_bytes((ROOT / "examples/ci/deploy.sh").read_bytes())
    env = {
        **server.env,
        **pipeline_env(),
        "PATH": f"{Path(executable('shipway')).parent}{os.pathsep}{os.environ['PATH']}",
        "SHIPWAY_API_URL": server.base_url,
        "SHIPWAY_TOKEN": server.token,
        "SHIPWAY_DEPLOYMENT": deployment_id,
        "SHIPWAY_GIT_BRANCH": "main",
        "SHIPWAY_CONFIG": str(repo / "no-config.toml"),
        "COLUMNS": "200",
        **settings,
    }
    return subprocess.run(
        ["bash", "ci/deploy.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


@contextlib.contextmanager
def visitors(url: str) -> Iterator[None]:
    """Requests to ``url`` in a loop (a canary is judged on real traffic)."""
    stop = threading.Event()

    def visit() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    http.get(url)
                stop.wait(0.05)

    thread = threading.Thread(target=visit, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def test_the_ci_pipeline_steps_deploy_and_fail_with_the_diagnosis(
    server: Server, tmp_path: Path
) -> None:
    from shipway.client import ShipwayClient

    with ShipwayClient(base_url=server.base_url, token=server.token) as client:
        body = {"name": "ci-site", "kind": "static", "environments": ["staging", "production"]}
        site = client.create_deployment(body=body)
        repo = tmp_path / "repo"
        commit = git_repo(repo, {"index.html": "<h1>ci</h1>\n"}, "First page")
        done = run_pipeline(server, repo, site["id"])
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "==> staging" in done.stderr and "production: release rel_" in done.stderr
        version_id = (repo / "shipway-out" / "version").read_text().strip()
        version = client.get_deployment_version(deployment_id=site["id"], version_id=version_id)
        assert version["git_hash"] == commit and version["git_branch"] == "main"
        assert version["git_message"] == "First page" and version["author_name"] == "CI Bot"
        for env in ("staging", "production"):
            shown = client.get_version(version_id=version_id, environment=env)
            assert shown["status"] == "ACTIVE", (env, shown)

        # The next commit walks the production canary while visitors keep coming.
        environments = client.get_deployment(deployment_id=site["id"])["environments"]
        url = next(e["public_url"] for e in environments if e["name"] == "production")
        git_repo(repo, {"index.html": "<h1>ci, take two</h1>\n"}, "Second page")
        with visitors(url):
            done = run_pipeline(
                server,
                repo,
                site["id"],
                CANARY_STEPS="50:1",
                CANARY_OPTIONS="--analysis-interval 0.5 --min-requests 2",
            )
        assert done.returncode == 0, (done.stdout, done.stderr)
        production = json.loads((repo / "shipway-out" / "production.json").read_text())
        assert production["release"]["status"] == "ACTIVE"
        assert production["release"]["rollout"]["canary"]["state"] == "completed"
        assert "weight 50%" in done.stderr
        assert httpx.get(url, timeout=5).text.strip() == "<h1>ci, take two</h1>"

        body = {"name": "ci-app", "kind": "container", "environments": ["staging", "production"]}
        app = client.create_deployment(body=body)
        git_repo(
            repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo broken-step && false\n"}, "Oops"
        )
        failed = run_pipeline(server, repo, app["id"])
        assert failed.returncode == 1, (failed.stdout, failed.stderr)
        assert "build_failed" in failed.stderr and "What to do:" in failed.stderr
        assert "broken-step" in failed.stderr
        assert "shipway: publish failed: the diagnosis is printed above" in failed.stderr
        assert "==> staging" not in failed.stderr


def test_git_metadata_of_a_detached_checkout_names_no_branch(tmp_path: Path) -> None:
    from shipway.client import git_metadata

    commit = git_repo(tmp_path, {"index.html": "<h1>x</h1>\n"}, "Detached")  # checks out --detach
    found = git_metadata(tmp_path / "site")
    assert found["git_hash"] == commit and "git_branch" not in found
    assert found["git_message"] == "Detached" and found["is_dirty"] == "false"
