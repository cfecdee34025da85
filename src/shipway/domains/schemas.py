"""Request and answer bodies of the domain routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DomainCreate(BaseModel):
    """A custom domain to route to the environment (its DNS must point at the router)."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(min_length=1, max_length=253, examples=["www.example.com"])


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


class DomainList(BaseModel):
    """Every hostname of an environment, the generated one first."""

    data: list[DomainRead]
