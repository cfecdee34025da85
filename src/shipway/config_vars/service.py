"""Set, unset and list config vars; every change is a new ``ConfigVersion``.

Secret values are decrypted only by ``environment_of`` (what a replica gets) and
``secret_values`` (what the rollout redacts from diagnostics); listings and events
carry names, versions and times only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from shipway.catalog.models import Deployment, Environment
from shipway.config_vars.models import ConfigVersion
from shipway.config_vars.names import check_totals, validate_changes
from shipway.deployments.service import ensure_environment, validate_environment_name
from shipway.ids import utcnow
from shipway.states import record_event


@dataclass(frozen=True)
class ConfigChange:
    """Vars to set (readable ``values``, write-only ``secrets``) and names to unset."""

    values: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    unset: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """InvalidInput (nothing written) if a name or value is refused."""
        validate_changes(values=self.values, secrets=self.secrets, unset=self.unset)


def latest(session: Session, *, deployment_id: str, environment: str) -> ConfigVersion | None:
    """The environment's current config (its newest version), if it ever had one."""
    return session.scalars(
        select(ConfigVersion)
        .where(
            ConfigVersion.deployment_id == deployment_id,
            ConfigVersion.environment == environment,
        )
        .order_by(ConfigVersion.number.desc())
        .limit(1)
    ).first()


def version_of(
    session: Session, *, deployment_id: str, environment: str, number: int, secrets: bool = False
) -> ConfigVersion | None:
    """One version of the environment's config (with its secrets loaded if ``secrets``)."""
    query = select(ConfigVersion).where(
        ConfigVersion.deployment_id == deployment_id,
        ConfigVersion.environment == environment,
        ConfigVersion.number == number,
    )
    if secrets:
        query = query.options(undefer(ConfigVersion.secrets))
    return session.scalars(query).first()


def _secrets(row: ConfigVersion | None) -> dict[str, str]:
    if row is None or not row.secrets:
        return {}
    return dict(json.loads(row.secrets))


def apply_change(
    session: Session, *, deployment: Deployment, environment: str, change: ConfigChange, actor: str
) -> ConfigVersion | None:
    """Record ``change`` as a new config version; None when it changes nothing.

    Validates everything first: on bad input nothing is written. The environment row
    is locked so that two changes never take the same version number.
    """
    validate_environment_name(environment)
    change.validate()
    _lock(session, ensure_environment(session, deployment=deployment, name=environment))
    current = latest(session, deployment_id=deployment.id, environment=environment)
    if current is not None:
        current = version_of(
            session,
            deployment_id=deployment.id,
            environment=environment,
            number=current.number,
            secrets=True,
        )
    plain = dict(current.plain) if current else {}
    secrets = _secrets(current)
    keys: dict[str, Any] = dict(current.keys) if current else {}
    number = (current.number if current else 0) + 1
    stamp = {"version": number, "updated_at": utcnow().isoformat(), "updated_by": actor}
    changed: dict[str, list[str]] = {"set": [], "secret": [], "unset": []}
    for name in change.unset:
        if name in plain or name in secrets:
            plain.pop(name, None), secrets.pop(name, None), keys.pop(name, None)
            changed["unset"].append(name)
    for is_secret, given in ((False, change.values), (True, change.secrets)):
        mine, other = (secrets, plain) if is_secret else (plain, secrets)
        for name, value in given.items():
            if mine.get(name) == value and name not in other:
                continue
            other.pop(name, None)
            mine[name] = value
            keys[name] = {"secret": is_secret, **stamp}
            changed["secret" if is_secret else "set"].append(name)
    if not any(changed.values()):
        return None
    check_totals({**plain, **secrets})
    return _insert(
        session,
        deployment=deployment,
        environment=environment,
        number=number,
        plain=plain,
        secrets=secrets,
        keys=keys,
        changes={k: sorted(v) for k, v in changed.items()},
        actor=actor,
        reason="config " + describe(changed),
    )


def restore(
    session: Session, *, deployment: Deployment, environment: str, number: int, actor: str
) -> ConfigVersion | None:
    """Make version ``number`` the current config again (a rollback's): a new version with
    its vars; None if it is the current one already (or does not exist)."""
    current = latest(session, deployment_id=deployment.id, environment=environment)
    if current is None or current.number == number:
        return None
    old = version_of(
        session, deployment_id=deployment.id, environment=environment, number=number, secrets=True
    )
    if old is None:
        return None
    _lock(session, ensure_environment(session, deployment=deployment, name=environment))
    return _insert(
        session,
        deployment=deployment,
        environment=environment,
        number=current.number + 1,
        plain=dict(old.plain),
        secrets=_secrets(old),
        keys=dict(old.keys),
        changes={"restored": number},
        actor=actor,
        reason=f"config v{number} restored",
    )


def describe(changed: dict[str, list[str]]) -> str:
    """``set A, B; secret C; unset D``: names only, never values."""
    parts = [f"{what} {', '.join(sorted(names))}" for what, names in changed.items() if names]
    return "; ".join(parts)


def _lock(session: Session, env: Environment) -> None:
    session.execute(select(Environment.id).where(Environment.id == env.id).with_for_update())


def _insert(
    session: Session,
    *,
    deployment: Deployment,
    environment: str,
    number: int,
    plain: dict[str, str],
    secrets: dict[str, str],
    keys: dict[str, Any],
    changes: dict[str, Any],
    actor: str,
    reason: str,
) -> ConfigVersion:
    row = ConfigVersion(
        workspace_id=deployment.workspace_id,
        deployment_id=deployment.id,
        environment=environment,
        number=number,
        plain=plain,
        secrets=json.dumps(secrets) if secrets else None,
        keys=keys,
        changes=changes,
        created_by=actor,
        created_at=utcnow(),
    )
    session.add(row)
    record_event(
        session,
        workspace_id=deployment.workspace_id,
        subject_type="config",
        subject_id=f"{deployment.id}/{environment}",
        from_state=f"v{number - 1}" if number > 1 else None,
        to_state=f"v{number}",
        reason=reason,
        actor=actor,
        deployment_id=deployment.id,
        data={"environment": environment, "version": number, **changes},
    )
    return row


def environment_of(
    session: Session, *, deployment_id: str, environment: str, number: int | None
) -> dict[str, str]:
    """The variables a replica of a release with config ``number`` gets (secrets decrypted)."""
    if number is None:
        return {}
    row = version_of(
        session, deployment_id=deployment_id, environment=environment, number=number, secrets=True
    )
    return {} if row is None else {**row.plain, **_secrets(row)}


def secret_values(
    session: Session, *, deployment_id: str, environment: str, numbers: list[int | None]
) -> list[str]:
    """Every secret value of these config versions (to redact them from what is recorded)."""
    found: set[str] = set()
    for number in {n for n in numbers if n is not None}:
        row = version_of(
            session,
            deployment_id=deployment_id,
            environment=environment,
            number=number,
            secrets=True,
        )
        found |= {value for value in _secrets(row).values() if value}
    return sorted(found, key=len, reverse=True)


def listing(row: ConfigVersion | None) -> list[dict[str, Any]]:
    """Every var of a version for the API: plain values, and of secrets only that they are set."""
    if row is None:
        return []
    entries = []
    for name in sorted(row.keys):
        meta = row.keys[name]
        secret = bool(meta.get("secret"))
        entries.append(
            {
                "name": name,
                "secret": secret,
                "value": None if secret else row.plain.get(name),
                "version": meta.get("version"),
                "updated_at": meta.get("updated_at"),
                "updated_by": meta.get("updated_by"),
            }
        )
    return entries
