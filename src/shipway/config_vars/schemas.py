"""Request and answer bodies of the config routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shipway.config_vars.models import ConfigVersion
from shipway.config_vars.names import MAX_NAME_LENGTH, MAX_VALUE_BYTES, MAX_VARS
from shipway.config_vars.service import ConfigChange, listing
from shipway.jobs.schemas import JobRead


class ConfigPatch(BaseModel):
    """Vars to set and names to unset; one change, one config version, one release."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_VARS,
        description="Readable vars to set: NAME → value",
        examples=[{"GREETING": "hello"}],
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_VARS,
        description="Secret vars to set (write-only: encrypted at rest, never answered back)",
        examples=[{"DATABASE_URL": "postgres://…"}],
    )
    unset: list[str] = Field(default_factory=list, max_length=MAX_VARS, description="Names")

    def __repr__(self) -> str:  # never the secrets
        return f"ConfigPatch(values={sorted(self.values)}, secrets={sorted(self.secrets)})"

    def change(self) -> ConfigChange:
        """The service's view of the request."""
        return ConfigChange(values=self.values, secrets=self.secrets, unset=self.unset)


class ConfigVarRead(BaseModel):
    """One var: a plain one with its value; a secret only says it is set."""

    name: str = Field(max_length=MAX_NAME_LENGTH)
    secret: bool
    value: str | None = Field(
        description=f"The value (at most {MAX_VALUE_BYTES} bytes); null for a secret"
    )
    version: int | None = Field(description="The config version that last set it")
    updated_at: datetime | None
    updated_by: str | None


class ConfigRead(BaseModel):
    """An environment's current config."""

    deployment_id: str
    environment: str
    version: int = Field(description="The current config version (0: never set)")
    data: list[ConfigVarRead]

    @classmethod
    def of(cls, row: ConfigVersion | None, *, deployment_id: str, environment: str) -> ConfigRead:
        """The answer for a config version (names, plain values; of secrets only metadata)."""
        return cls(
            deployment_id=deployment_id,
            environment=environment,
            version=row.number if row is not None else 0,
            data=[ConfigVarRead(**entry) for entry in listing(row)],
        )


class ConfigChanged(ConfigRead):
    """Answer of a change: the new config and, if the environment serves a release, the
    release that rolls it out (no rebuild) and its job."""

    changed: bool = Field(description="False when the change set what was there already")
    release_id: str | None
    job: JobRead | None
