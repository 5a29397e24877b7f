"""ModelVersion: one trained (or training) version of a model, created and owned by a policy."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .artifacts import FeedbackSnapshot
from .common import ApiModel, Condition
from .retrainpolicy import DNS_LABEL, VERSION_REF


class Phase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    VERIFYING = "Verifying"
    VERIFIED = "Verified"
    REJECTED = "Rejected"
    PROMOTING = "Promoting"
    ACTIVE = "Active"
    SUPERSEDED = "Superseded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


TERMINAL_FAILURES = frozenset({Phase.REJECTED, Phase.FAILED})
IN_FLIGHT = frozenset({Phase.PENDING, Phase.TRAINING, Phase.VERIFYING})
PROMOTABLE = frozenset({Phase.VERIFIED, Phase.PROMOTING, Phase.ACTIVE, Phase.SUPERSEDED, Phase.ROLLED_BACK})


class ModelVersionSpec(ApiModel):
    model: str = Field(max_length=63, pattern=DNS_LABEL)
    version: str = Field(pattern=VERSION_REF)
    policy: str = Field(max_length=253)
    parent_version: str | None = Field(default=None, alias="parentVersion", pattern=VERSION_REF)
    trigger: str = Field(default="", max_length=1024, description="Why this version was trained.")
    training_parameters: dict[str, Any] = Field(default_factory=dict, alias="trainingParameters")
    feedback_snapshot: FeedbackSnapshot = Field(default_factory=FeedbackSnapshot, alias="feedbackSnapshot")


class TrainingProgress(ApiModel):
    epoch: int = Field(default=0, ge=0)
    epochs: int = Field(default=0, ge=0)
    loss: float | None = None
    validation_accuracy: float | None = Field(default=None, alias="validationAccuracy")
    summary: str = Field(default="", description="'epoch n/m', for the printer column.")


class VersionMetrics(ApiModel):
    validation_accuracy: float | None = Field(default=None, alias="validationAccuracy", ge=0, le=1)
    holdout_accuracy: float | None = Field(default=None, alias="holdoutAccuracy", ge=0, le=1)
    baseline_holdout_accuracy: float | None = Field(default=None, alias="baselineHoldoutAccuracy", ge=0, le=1)
    macro_f1: float | None = Field(default=None, alias="macroF1", ge=0, le=1)
    per_class_accuracy: dict[str, float] = Field(default_factory=dict, alias="perClassAccuracy")
    latency_p95_ms: float | None = Field(default=None, alias="latencyP95Ms")
    peak_memory_mi_b: float | None = Field(default=None, alias="peakMemoryMiB")
    throughput_rps: float | None = Field(default=None, alias="throughputRps")


class GateResult(ApiModel):
    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    message: str = ""


class ArtifactRef(ApiModel):
    uri: str
    manifest_digest: str = Field(alias="manifestDigest", pattern=r"^sha256:[0-9a-f]{64}$")


class ModelVersionStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    phase: Phase = Phase.PENDING
    message: str = ""
    progress: TrainingProgress = Field(default_factory=TrainingProgress)
    metrics: VersionMetrics = Field(default_factory=VersionMetrics)
    gates: list[GateResult] = Field(default_factory=list)
    artifact: ArtifactRef | None = None
    training_job: str | None = Field(default=None, alias="trainingJob")
    verification_job: str | None = Field(default=None, alias="verificationJob")
    training_attempts: int = Field(default=0, alias="trainingAttempts", ge=0)
    start_time: datetime | None = Field(default=None, alias="startTime")
    training_completion_time: datetime | None = Field(default=None, alias="trainingCompletionTime")
    completion_time: datetime | None = Field(default=None, alias="completionTime")
    promoted_at: datetime | None = Field(default=None, alias="promotedAt")
    conditions: list[Condition] = Field(default_factory=list)
    kopf: dict[str, Any] | None = None
