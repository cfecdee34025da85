"""Request and answer bodies of the domain routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DomainCreate(BaseModel):
    """A custom domain to route to the environment (its DNS must point at the router)."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(min_length=1, max_length=253, examples=["www.example.com"])


class CertificateRead(BaseModel):
    """A hostname's certificate: where it comes from, its state and validity (never the key)."""

    model_config = ConfigDict(from_attributes=True)

    source: Literal["acme", "uploaded"]
    status: Literal["pending", "issued", "failed"] = Field(
        description="pending: being issued; issued: served (a later renewal failure keeps it); "
        "failed: no certificate yet, next_attempt_at says when it is tried again"
    )
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    next_attempt_at: datetime | None = Field(description="Next issuance or renewal attempt")
    failure_reason: str | None = Field(
        description="acme_challenge_failed, acme_rate_limited, acme_unreachable, "
        "acme_domain_rejected, acme_timeout, acme_error, router_install_failed"
    )
    failure_diagnostics: dict[str, str] | None = Field(description="{title, description, action}")


class CertificateUpload(BaseModel):
    """The owner's certificate (PEM chain, leaf first) and its unencrypted PEM private key."""

    model_config = ConfigDict(extra="forbid")

    certificate: str = Field(min_length=1, max_length=65536)
    private_key: str = Field(min_length=1, max_length=65536, repr=False)


class DomainRead(BaseModel):
    """A hostname routed to one environment."""

    model_config = ConfigDict(from_attributes=True)

    hostname: str
    kind: Literal["generated", "custom"] = Field(
        description="generated: shipway's name under the apps domain; custom: a user's domain"
    )
    deployment_id: str
    environment: str
    created_by: str
    created_at: datetime
    certificate: CertificateRead | None = Field(
        default=None, description="null: no certificate (plain HTTP only)"
    )


class DomainList(BaseModel):
    """Every hostname of an environment, the generated one first."""

    data: list[DomainRead]


class CertificateAttention(BaseModel):
    """A hostname whose certificate needs an operator's eye: its last issuance or renewal
    failed, or it expires soon."""

    hostname: str
    deployment_id: str
    environment: str
    why: Literal["failing", "expiring"]
    certificate: CertificateRead
