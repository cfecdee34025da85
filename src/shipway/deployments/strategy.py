"""Rollout strategies: all at once (default) or canary steps with analysis.

One definition, used by the promote request, the environment policy and the
rollout job. Validation errors become 422 through pydantic.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class AllAtOnce(BaseModel):
    """Switch all traffic once every new replica is healthy."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["all_at_once"] = "all_at_once"


class CanaryStep(BaseModel):
    """Send ``weight`` percent of new requests to the canary for ``pause_seconds``."""

    model_config = ConfigDict(extra="forbid")
    weight: int = Field(ge=1, le=100, description="Canary share of traffic, percent")
    pause_seconds: float = Field(
        default=60, ge=0, le=86_400, description="How long to hold (and analyse) this step"
    )


class CanaryAnalysis(BaseModel):
    """Judge the canary from the router's own per-server statistics, every interval."""

    model_config = ConfigDict(extra="forbid")
    interval_seconds: float = Field(default=10, ge=0.2, le=3600)
    min_requests: int = Field(
        default=50, ge=1, description="Fewer canary requests in an interval: inconclusive"
    )
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="5xx / requests")
    max_p95_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Latency limit; HAProxy has no percentiles, so it is checked against the "
            "canary's average response time (rtime, last 1024 requests) - see docs/canary.md"
        ),
    )
    failure_limit: int = Field(
        default=2, ge=1, description="Failed intervals (in the whole canary) that abort it"
    )
    max_inconclusive: int | None = Field(
        default=30,
        ge=1,
        description=(
            "Inconclusive intervals (too little traffic) in a row that abort the canary; "
            "null: hold at the current step for as long as it takes (an operator decides)"
        ),
    )


class Canary(BaseModel):
    """Weighted steps with analysis between them; the last step is followed by a full switch."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["canary"]
    steps: list[CanaryStep] = Field(min_length=1, max_length=20)
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)

    @model_validator(mode="after")
    def _weights_increase(self) -> Canary:
        weights = [step.weight for step in self.steps]
        for before, after in pairwise(weights):
            if after <= before:
                raise ValueError(f"step weights must strictly increase, got {weights}")
        return self


Strategy = Annotated[AllAtOnce | Canary, Field(discriminator="type")]
_adapter: TypeAdapter[AllAtOnce | Canary] = TypeAdapter(Strategy)


def parse_strategy(raw: dict[str, Any] | None) -> AllAtOnce | Canary:
    """Validate a stored or submitted strategy; ``None`` means all at once."""
    if not raw:
        return AllAtOnce()
    return _adapter.validate_python(raw)
