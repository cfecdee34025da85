"""Config vars and secrets: names, write-only secrets, encryption at rest, rotation, releases.

The API tests run on SQLite and PostgreSQL; rollouts run in-process against the real
Docker engine (as tests/test_api_promote.py does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from shipway.config import get_settings
from shipway.config_vars.names import check_name, check_value
from shipway.config_vars.redact import redact
from tests.conftest import VersionFactory, auth
from tests.test_api_auth import assert_error
from tests.test_api_promote import accepted, audit, promote, run

SECRET = "s3cr3t-Value-0f-the-test-9d1c"


def config_url(deployment: dict[str, Any], env: str = "production") -> str:
    return f"/api/v1/deployments/{deployment['id']}/environments/{env}/config"


def patch(
    client: TestClient, deployment: dict[str, Any], body: Any, env: str = "production"
) -> httpx.Response:
    return client.patch(  # json.dumps escapes what UTF-8 cannot carry (lone surrogates)
        config_url(deployment, env),
        content=json.dumps(body),
        headers=auth(deployment["token"], **{"Content-Type": "application/json"}),
    )


def listed(client: TestClient, deployment: dict[str, Any]) -> dict[str, Any]:
    response = client.get(config_url(deployment), headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    return dict(response.json())


def raw(sql: str) -> list[Any]:
    from shipway.db import transaction

    with transaction() as session:
        return list(session.execute(text(sql)).all())


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("DATABASE_URL", True),
        ("_x1", True),
        ("lower_case", True),
        ("1ABC", False),
        ("A-B", False),
        ("A B", False),
        ("", False),
        ("SHIPWAY_TOKEN", False),
        ("shipway_x", False),
        ("X" * 129, False),
        ("É", False),
    ],
)
def test_names_are_posix_and_not_reserved(name: str, ok: bool) -> None:
    assert (check_name(name) is None) is ok


def test_values_have_a_size_limit_and_no_nul() -> None:
    assert check_value("x" * 32 * 1024) is None
    assert check_value("x" * (32 * 1024 + 1))
    assert check_value("a\x00b")


def test_redact_walks_nested_values_and_leaves_short_ones() -> None:
    found = redact({"logs": [f"url={SECRET}!", "ok"], SECRET: (1, "abc")}, [SECRET, "abc"])
    assert SECRET not in json.dumps(found)
    assert found["logs"][0] == "url=[redacted]!" and found["[redacted]"] == [1, "abc"]
    assert redact("a b c", ["b"]) == "a b c"  # under 4 characters: not redacted


def test_rotation_re_encrypts_with_the_new_key_and_drops_the_old(
    shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipway import crypto
    from shipway.db import get_engine, transaction
    from shipway.domains.models import AcmeAccount

    old, new = crypto.generate_key(), crypto.generate_key()
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", old)
    get_settings.cache_clear()
    with transaction() as session:
        session.add(AcmeAccount(directory_url="https://acme.test/dir", key_pem="PEM-" + SECRET))
    token = raw("SELECT key_pem FROM acme_accounts")[0][0]
    assert SECRET not in token and crypto.looks_encrypted(token)

    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", f"{new},{old}")  # 1. the new key first
    get_settings.cache_clear()
    with get_engine().begin() as connection:  # 2. rotate
        counts = crypto.rotate(connection)
    assert counts["acme_accounts.key_pem"] == 1
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", new)  # 3. drop the old key
    get_settings.cache_clear()
    with transaction() as session:
        assert session.get(AcmeAccount, "https://acme.test/dir").key_pem == "PEM-" + SECRET  # type: ignore[union-attr]
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", old)  # the old key alone opens nothing now
    get_settings.cache_clear()
    with pytest.raises(crypto.SecretsKeyError), transaction() as session:
        session.get(AcmeAccount, "https://acme.test/dir")


def test_embedded_mode_generates_a_private_key_file(shipway_env: dict[str, str]) -> None:
    from shipway import crypto

    assert crypto.decrypt(crypto.encrypt("x")) == "x"
    key_file = Path(shipway_env["SHIPWAY_DATA_DIR"]) / "secrets.key"
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600


# --------------------------------------------------------------------------- API


def test_set_list_unset_with_write_only_secrets(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    assert listed(client, deployment) == {
        "deployment_id": deployment["id"],
        "environment": "production",
        "version": 0,
        "data": [],
    }
    answer = patch(
        client, deployment, {"values": {"GREETING": "hi"}, "secrets": {"API_KEY": SECRET}}
    )
    assert answer.status_code == 200, answer.text  # no release serves yet: nothing to roll out
    body = answer.json()
    assert body["changed"] and body["release_id"] is None and body["version"] == 1
    assert SECRET not in answer.text
    rows = {row["name"]: row for row in listed(client, deployment)["data"]}
    assert rows["GREETING"]["value"] == "hi" and not rows["GREETING"]["secret"]
    assert rows["API_KEY"] == {**rows["API_KEY"], "secret": True, "value": None, "version": 1}
    assert rows["API_KEY"]["updated_at"] and rows["API_KEY"]["updated_by"]

    same = patch(client, deployment, {"secrets": {"API_KEY": SECRET}})
    assert same.status_code == 200 and not same.json()["changed"] and same.json()["version"] == 1

    gone = patch(client, deployment, {"unset": ["GREETING"]})
    assert gone.json()["version"] == 2
    assert [row["name"] for row in gone.json()["data"]] == ["API_KEY"]

    stored = raw("SELECT secrets, plain FROM config_versions ORDER BY number")
    assert all(SECRET not in str(row) for row in stored)  # encrypted at rest
    events = [e for e in audit(client, deployment) if e["subject_type"] == "config"]
    assert [e["to_state"] for e in events] == ["v1", "v2"]
    assert events[0]["reason"] == "config set GREETING; secret API_KEY"
    assert SECRET not in json.dumps(events)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"values": {"1BAD": "x"}}, "invalid_config"),
        ({"values": {"SHIPWAY_X": "x"}}, "invalid_config"),
        ({"secrets": {"OK": "a\u0000b"}}, "invalid_config"),
        ({"values": {"A": "x" * (32 * 1024 + 1)}}, "invalid_config"),
        ({"values": {"A": "1"}, "secrets": {"A": "2"}}, "invalid_config"),
        ({}, "invalid_config"),
        ({"values": {"A": 1}}, "validation_error"),
        ({"values": {"A": "\ud800"}}, "invalid_config"),  # a lone surrogate: not text
        ({"values": {"\udfff": "x"}}, "invalid_config"),
        ({"other": {}}, "validation_error"),
    ],
)
def test_bad_input_is_422_and_writes_nothing(
    client: TestClient, deployment: dict[str, Any], body: dict[str, Any], code: str
) -> None:
    answer = patch(client, deployment, body)
    assert_error(answer, 422, code)
    assert "a\u0000b" not in answer.text
    assert raw("SELECT count(*) FROM config_versions") == [(0,)]


def test_unknown_deployment_and_other_workspace_are_404(
    client: TestClient, deployment: dict[str, Any], make_token: Any
) -> None:
    other = {**deployment, "token": make_token("deployments:write", workspace="other")}
    assert_error(patch(client, other, {"values": {"A": "1"}}), 404)
    assert_error(client.get(config_url(other), headers=auth(other["token"])), 404)
    reader = {**deployment, "token": make_token("deployments:read")}
    assert_error(patch(client, reader, {"values": {"A": "1"}}), 403)


def replica_env(release_id: str) -> dict[str, str]:
    engine = docker.from_env()
    try:
        found = engine.containers.list(all=True, filters={"label": f"shipway.release={release_id}"})
        assert found, release_id
        return dict(item.split("=", 1) for item in found[0].attrs["Config"]["Env"])
    finally:
        engine.close()


def test_config_change_is_a_release_of_the_active_version_and_rollback_restores_it(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1, v2 = make_version(deployment["id"]), make_version(deployment["id"])
    patch(client, deployment, {"values": {"COLOR": "blue"}, "secrets": {"TOKEN": SECRET}})
    first = accepted(promote(client, deployment, v1, "p1"))
    assert first["release"]["config_version"] == 1  # the release records its config
    assert run(first["job"]["id"]) == "succeeded"
    assert replica_env(first["release"]["id"])["TOKEN"] == SECRET  # the replica gets it

    changed = patch(client, deployment, {"values": {"COLOR": "green"}})
    assert changed.status_code == 202, changed.text
    job = changed.json()["job"]
    assert job["kind"] == "promote" and job["version_id"] == v1  # same version, no build
    assert run(job["id"]) == "succeeded"
    second_id = changed.json()["release_id"]
    assert replica_env(second_id)["COLOR"] == "green"
    assert raw(f"SELECT config_version, status FROM releases WHERE id = '{second_id}'") == [
        (2, "ACTIVE")
    ]

    # promote carries a config change atomically
    with_config = promote(
        client, deployment, v2, "p2", body={"config": {"values": {"COLOR": "red"}}}
    )
    assert run(accepted(with_config)["job"]["id"]) == "succeeded"
    assert replica_env(with_config.json()["release"]["id"])["COLOR"] == "red"
    # rollback to v1 returns to v1's config (COLOR=green), made current again
    back = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json={"environment": "production"},
        headers=auth(deployment["token"], **{"Idempotency-Key": "b1"}),
    )
    assert run(accepted(back)["job"]["id"]) == "succeeded"
    assert {r["name"]: r["value"] for r in listed(client, deployment)["data"]}["COLOR"] == "green"
    assert SECRET not in json.dumps(audit(client, deployment))


def test_migration_0009_encrypts_existing_tls_keys_and_downgrade_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command

    from shipway.db import get_engine
    from shipway.migrate import alembic_config, upgrade

    monkeypatch.setenv("SHIPWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'old.db'}")
    monkeypatch.setenv("SHIPWAY_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    upgrade("0008")
    pem = "-----BEGIN PRIVATE KEY-----\n" + SECRET + "\n-----END PRIVATE KEY-----\n"
    with get_engine().begin() as connection:
        connection.execute(
            text("INSERT INTO workspaces (id, name, created_at) VALUES ('ws1', 'w', :now)"),
            {"now": "2026-01-01 00:00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO certificates (hostname, workspace_id, source, status, key_pem, "
                "attempts, updated_at) VALUES ('a.test', 'ws1', 'uploaded', 'issued', :pem, 0, "
                ":now)"
            ),
            {"pem": pem, "now": "2026-01-01 00:00:00"},
        )
        connection.execute(
            text("INSERT INTO acme_accounts VALUES ('https://acme.test/dir', :pem, :now)"),
            {"pem": pem, "now": "2026-01-01 00:00:00"},
        )
    upgrade("head")
    stored = raw("SELECT key_pem FROM certificates UNION ALL SELECT key_pem FROM acme_accounts")
    assert len(stored) == 2 and all(SECRET not in row[0] for row in stored)
    from shipway.db import transaction
    from shipway.domains.models import AcmeAccount, Certificate

    with transaction() as session:
        assert session.get(Certificate, "a.test").key_pem == pem  # type: ignore[union-attr]
        assert session.get(AcmeAccount, "https://acme.test/dir").key_pem == pem  # type: ignore[union-attr]
    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")
    assert raw("SELECT key_pem FROM certificates") == [(pem,)]


def test_a_config_release_follows_the_environment_policy_strategy(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1 = make_version(deployment["id"])
    assert run(accepted(promote(client, deployment, v1, "p1"))["job"]["id"]) == "succeeded"
    canary = {"type": "canary", "steps": [{"weight": 20, "pause_seconds": 5}]}
    policy = client.put(
        f"/api/v1/deployments/{deployment['id']}/environments/production/policy",
        json={"strategy": canary},
        headers=auth(deployment["token"]),
    )
    assert policy.status_code == 200, policy.text
    changed = patch(client, deployment, {"values": {"COLOR": "red"}})
    assert changed.status_code == 202, changed.text
    release_id = changed.json()["release_id"]
    (rollout,) = raw(f"SELECT rollout FROM releases WHERE id = '{release_id}'")[0]
    rollout = json.loads(rollout) if isinstance(rollout, str) else rollout
    assert rollout["strategy"]["type"] == "canary"


def test_a_malformed_key_is_refused_with_a_clear_error(
    shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipway import crypto

    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", "not-a-fernet-key")
    get_settings.cache_clear()
    with pytest.raises(crypto.SecretsKeyError, match="SHIPWAY_SECRETS_KEYS holds a malformed"):
        crypto.encrypt("x")


def test_a_config_change_queued_behind_a_promote_never_brings_the_old_version_back(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1, v2 = make_version(deployment["id"]), make_version(deployment["id"])
    assert run(accepted(promote(client, deployment, v1, "p1"))["job"]["id"]) == "succeeded"
    second = accepted(promote(client, deployment, v2, "p2"))  # queued, not run yet
    assert second["release"]["config_version"] is None
    changed = patch(client, deployment, {"values": {"COLOR": "teal"}})
    assert changed.status_code == 202 and changed.json()["job"]["version_id"] == v1
    assert run(second["job"]["id"]) == "succeeded"  # v2 runs with the config current now
    assert replica_env(second["release"]["id"])["COLOR"] == "teal"
    assert run(changed.json()["job"]["id"]) == "succeeded"
    release_id = changed.json()["release_id"]
    rows = raw(f"SELECT version_id, config_version, status FROM releases WHERE id = '{release_id}'")
    assert rows == [(v2, 1, "ACTIVE")]  # the config release followed v2
    reasons = [e["reason"] for e in audit(client, deployment) if e["subject_type"] == "release"]
    assert any("follows version 2" in reason for reason in reasons), reasons


def test_the_health_monitor_redacts_secrets_from_its_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime

    from shipway.deployments.policy import parse_policy
    from shipway.releases import monitor_rounds
    from shipway.releases.health import Probe
    from shipway.runtime.base import Replica

    monkeypatch.setattr(
        monitor_rounds, "probe", lambda url, timeout_seconds: Probe(500, None, f"key={SECRET}", 1.0)
    )
    replica = Replica("c1", "sw-rel-0", {}, "running", None, 0, 8080, address="127.0.0.1")
    candidate = monitor_rounds.Candidate(
        "rel", "ACTIVE", "/", parse_policy(None), [replica], secrets=[SECRET]
    )
    rounds = monitor_rounds.probe_all([candidate], now=datetime.now(UTC), max_parallel=1)
    assert rounds["rel"]["replicas"][0]["body_excerpt"] == "key=[redacted]"
    assert rounds["rel"]["ok"] is False
    candidate.secrets = None  # no configured key opens them: bodies are left out
    rounds = monitor_rounds.probe_all([candidate], now=datetime.now(UTC), max_parallel=1)
    assert rounds["rel"]["replicas"][0]["body_excerpt"] == ""


def test_a_rollout_whose_secrets_no_key_opens_fails_classified(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shipway import crypto

    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", crypto.generate_key())
    get_settings.cache_clear()
    patch(client, deployment, {"secrets": {"API_KEY": SECRET}})
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", crypto.generate_key())  # the old key dropped
    get_settings.cache_clear()
    first = accepted(promote(client, deployment, make_version(deployment["id"]), "p1"))
    assert run(first["job"]["id"]) == "failed"
    reason, diagnostics = raw(
        f"SELECT failure_reason, failure_diagnostics FROM jobs WHERE id = '{first['job']['id']}'"
    )[0]
    assert reason == "secrets_unreadable"
    assert "SHIPWAY_SECRETS_KEYS" in str(diagnostics) and SECRET not in str(diagnostics)


def test_an_unreadable_tls_key_reads_as_none_and_routing_goes_on(
    shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipway import crypto
    from shipway.db import transaction
    from shipway.domains.models import Certificate
    from shipway.workspaces.models import Workspace

    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", crypto.generate_key())
    get_settings.cache_clear()
    with transaction() as session:
        session.add(Workspace(id="ws_x", name="x"))
        session.flush()
        session.add(
            Certificate(
                hostname="a.test",
                workspace_id="ws_x",
                source="uploaded",
                status="issued",
                fullchain_pem="CHAIN",
                key_pem="KEY-" + SECRET,
                attempts=0,
            )
        )
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", crypto.generate_key())  # the old key dropped
    get_settings.cache_clear()
    with transaction() as session:
        row = session.get(Certificate, "a.test")
        assert row is not None and row.key_pem is None and row.fullchain_pem == "CHAIN"
