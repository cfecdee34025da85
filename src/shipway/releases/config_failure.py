"""A rollout's failure seen through its config: secrets redacted, config-only failures named.

When a release changes only the config (same version as the serving release) and its
replicas crash or fail their health check, the config is the cause: the failure becomes
``config_rejected`` with the changed names (never values) and what to do. Whatever the
cause, secret values are taken out of the diagnostics (an app may print them as it dies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from shipway.catalog.models import Release, Version
from shipway.config_vars import service as config_vars
from shipway.config_vars.redact import redact
from shipway.crypto import SecretsKeyError
from shipway.jobs.context import JobFailed
from shipway.releases.service import active_release

REPLICA_FAILURES = ("crash_loop", "health_check_failed", "health_check_timeout")


@dataclass(frozen=True)
class ConfigContext:
    """What a rollout knows of its config: the env, its secrets, what changed, and how."""

    env: dict[str, str] = field(repr=False)
    secrets: list[str] = field(repr=False)
    version: int | None
    changed: list[str]
    config_only: bool

    @classmethod
    def of(cls, session: Session, *, release: Release) -> ConfigContext:
        """The config of ``release`` compared with the release serving its environment;
        JobFailed(``secrets_unreadable``) when no configured key opens its secrets."""
        try:
            return cls._of(session, release=release)
        except SecretsKeyError as error:
            raise JobFailed(
                "secrets_unreadable",
                {
                    "title": "The config's secrets cannot be decrypted",
                    "description": f"Config v{release.config_version}: {error.message}",
                    "action": (
                        "Put the key the secrets were encrypted with back in "
                        "SHIPWAY_SECRETS_KEYS (on every worker), then promote again; "
                        "docs/config-and-secrets.md explains rotation."
                    ),
                    "evidence": {"config_version": release.config_version},
                },
            ) from None

    @classmethod
    def _of(cls, session: Session, *, release: Release) -> ConfigContext:
        where: dict[str, Any] = {
            "deployment_id": release.deployment_id,
            "environment": release.environment,
        }
        number = release.config_version
        serving = active_release(session, **where)
        config_only = (
            serving is not None
            and serving.id != release.id
            and serving.version_id == release.version_id
            and serving.config_version != number
        )
        ours = config_vars.version_of(session, **where, number=number) if number else None
        theirs = None
        if serving is not None and serving.config_version:
            theirs = config_vars.version_of(session, **where, number=serving.config_version)
        mine, old = (ours.keys if ours else {}), (theirs.keys if theirs else {})
        changed = sorted(k for k in mine.keys() | old.keys() if mine.get(k) != old.get(k))
        return cls(
            env=config_vars.environment_of(session, **where, number=number),
            secrets=config_vars.secret_values(session, **where, numbers=[number]),
            version=number,
            changed=changed,
            config_only=config_only,
        )

    def clean(self, value: Any) -> Any:
        """``value`` with the secret values redacted."""
        return redact(value, self.secrets)

    def explain(self, failed: JobFailed, version: Version) -> JobFailed:
        """The failure to record: redacted, and ``config_rejected`` if the config caused it."""
        diagnostics: dict[str, Any] = self.clean(failed.diagnostics)
        if not (self.config_only and failed.reason in REPLICA_FAILURES):
            return JobFailed(failed.reason, diagnostics)
        names = ", ".join(self.changed) or "none"
        return JobFailed(
            "config_rejected",
            {
                "title": "The new config broke the app",
                "description": (
                    f"Version {version.version_number} serves fine with its current config, but "
                    f"with config v{self.version} (changed: {names}) its replicas failed: "
                    f"{diagnostics.get('title', failed.reason)}. "
                    f"{diagnostics.get('description', '')}"
                ).strip(),
                "action": (
                    "The previous release keeps serving. Fix the changed vars "
                    "(`shipway config set NAME=VALUE`, or `shipway config unset NAME`): "
                    "that rolls out a new release; the app's output is in the evidence."
                ),
                "evidence": {
                    "cause": failed.reason,
                    "config_version": self.version,
                    "changed": self.changed,
                    **(diagnostics.get("evidence") or {}),
                },
            },
        )
