"""Building blocks shared by both kinds: the Kubernetes condition and camelCase model base."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error (the API server
    prunes them anyway, so accepting them here would hide typos in tests)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=None)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The Kubernetes condition schema (metav1.Condition)."""

    type: str = Field(
        description="Condition type, e.g. Ready, Training, Verified; one entry per type.",
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the status, stable enough to alert or script on.",
    )
    message: str = Field(default="", max_length=32768, description="What happened and what to do, for people.")
    last_transition_time: datetime = Field(
        alias="lastTransitionTime", description="When status last changed (not when the condition was last checked)."
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", ge=0, description="metadata.generation the condition was set for."
    )


MAX_CONDITIONS = 32

# Conditions are a map keyed by type (as in metav1.Condition): server-side apply merges them per type.
CONDITIONS_LIST_MAP: dict[str, JsonValue] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class SecretKeyRef(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret in the policy's namespace.",
    )
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret.")
