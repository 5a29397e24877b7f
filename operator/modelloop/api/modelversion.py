"""ModelVersion: one trained (or training) version of a model, created and owned by a policy."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, field_serializer, model_validator

from .artifacts import FeedbackSnapshot
from .cel import rule, validations
from .common import CONDITIONS_LIST_MAP, MAX_CONDITIONS, ApiModel, Condition
from .retrainpolicy import DNS_LABEL, DNS_SUBDOMAIN, VERSION_REF

MAX_GATES = 32


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


def phase_of(status: Mapping[str, Any]) -> Phase:
    """A ModelVersion's phase from its status; one the operator has not touched yet is Pending."""
    try:
        return Phase(status.get("phase") or Phase.PENDING)
    except ValueError:
        return Phase.PENDING


class ModelVersionSpec(ApiModel):
    """The record of what was trained: written once by the operator, never changed."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "self == oldSelf",
                message="a ModelVersion's spec is immutable: it records what was trained; create a new version instead",
                reason="FieldValueForbidden",
            ),
            rule(
                # The patterns are checked too, but CEL still runs: guard int() against non-numbers.
                f"!has(self.parentVersion) || !self.parentVersion.matches('{VERSION_REF}')"
                f" || !self.version.matches('{VERSION_REF}')"
                " || int(self.parentVersion.substring(1)) < int(self.version.substring(1))",
                message_expression="'parentVersion ' + self.parentVersion + ' must be an earlier version than '"
                " + self.version + ': a version is trained from an older one'",
                field_path=".parentVersion",
            ),
            rule(
                "!has(self.retryOf) || has(self.attempt) && self.attempt >= 2",
                message="retryOf names the attempt this one retries: it needs attempt >= 2",
                field_path=".retryOf",
            ),
        )
    )

    model: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="The policy's spec.model.")
    version: str = Field(max_length=16, pattern=VERSION_REF, description="v1, v2, ... in training order.")
    policy: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="The RetrainPolicy that owns it."
    )
    parent_version: str | None = Field(
        default=None,
        alias="parentVersion",
        max_length=16,
        pattern=VERSION_REF,
        description="The version fine-tuned from; null when trained from scratch.",
    )
    trigger: str = Field(default="", max_length=1024, description="Why this version was trained.")
    training_parameters: dict[str, Any] = Field(
        default_factory=dict, alias="trainingParameters", description="Hyperparameters and image used, as run."
    )
    feedback_snapshot: FeedbackSnapshot = Field(
        default_factory=FeedbackSnapshot, alias="feedbackSnapshot", description="The feedback included in training."
    )
    attempt: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="1 for the training a trigger started, n for its (n-1)th retry (spec.retry of the policy);"
        " absent on versions made before retries existed, which are never retried.",
    )
    retry_of: str | None = Field(
        default=None,
        alias="retryOf",
        max_length=16,
        pattern=VERSION_REF,
        description="The failed or rejected version this attempt retries; trainingParameters holds the adjusted"
        " hyperparameters and trigger says why.",
    )


class TrainingProgress(ApiModel):
    """How far the training Job is, as the trainer last reported it."""

    epoch: int = Field(default=0, ge=0, description="Epochs completed.")
    epochs: int = Field(default=0, ge=0, description="Epochs the training runs in all.")
    loss: float | None = Field(default=None, description="Training loss of the last completed epoch.")
    validation_accuracy: float | None = Field(
        default=None, alias="validationAccuracy", description="Validation accuracy (0-1) after the last epoch."
    )
    summary: str = Field(default="", description="'epoch n/m', for the printer column.")


class VersionMetrics(ApiModel):
    """What the verification Job measured: the numbers the gates judged."""

    validation_accuracy: float | None = Field(
        default=None, alias="validationAccuracy", ge=0, le=1, description="Accuracy (0-1) on the validation split."
    )
    holdout_accuracy: float | None = Field(
        default=None,
        alias="holdoutAccuracy",
        ge=0,
        le=1,
        description="Accuracy (0-1) on the holdout set the active version was scored on too.",
    )
    baseline_holdout_accuracy: float | None = Field(
        default=None,
        alias="baselineHoldoutAccuracy",
        ge=0,
        le=1,
        description="The then-active version's holdout accuracy (0-1), measured in the same Job; null when none was active.",
    )
    macro_f1: float | None = Field(
        default=None, alias="macroF1", ge=0, le=1, description="Macro-averaged F1 (0-1) on the holdout set."
    )
    per_class_accuracy: dict[str, float] = Field(
        default_factory=dict, alias="perClassAccuracy", description="Holdout accuracy (0-1) per class name."
    )
    per_class_precision: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassPrecision",
        description="Holdout precision (0-1) per class name: of the samples predicted as the class, the share truly of it.",
    )
    per_class_recall: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassRecall",
        description="Holdout recall (0-1) per class name: of the class's samples, the share predicted as it.",
    )
    latency_p95_ms: float | None = Field(
        default=None, alias="latencyP95Ms", description="95th percentile of single-request latency in the probe, ms."
    )
    peak_memory_mi_b: float | None = Field(
        default=None, alias="peakMemoryMiB", description="Peak memory of the loaded model in the probe, MiB."
    )
    throughput_rps: float | None = Field(
        default=None, alias="throughputRps", description="Requests per second the probe sustained."
    )
    summary: str = Field(
        default="", description="holdoutAccuracy to 3 decimals (e.g. 0.911), for the printer column; derived."
    )

    def _shown(self) -> str:
        return "" if self.holdout_accuracy is None else f"{self.holdout_accuracy:.3f}"

    @model_validator(mode="after")
    def _derive_summary(self) -> VersionMetrics:
        """Derived from holdoutAccuracy when read and each time the status is written (below), so the
        two never disagree and no writer has to remember it: a printer column cannot round a number."""
        self.summary = self._shown()
        return self

    @field_serializer("summary")
    def _summary(self, _: str) -> str:
        return self._shown()


class GateResult(ApiModel):
    """One verification gate's verdict."""

    name: str = Field(
        description="The gate, as named in the policy's spec.verification.gates (e.g. minHoldoutAccuracy)."
    )
    passed: bool = Field(description="Whether the version passed this gate.")
    value: float | None = Field(default=None, description="What was measured; null when it could not be.")
    threshold: float | None = Field(default=None, description="What the gate required.")
    message: str = Field(default="", description="The verdict in words, e.g. 'holdoutAccuracy 0.84 < 0.88'.")


class ArtifactRef(ApiModel):
    """Where the trained version lives."""

    uri: str = Field(description="s3://<bucket>/<model>/<version>/, the prefix holding the version's files.")
    manifest_digest: str = Field(
        alias="manifestDigest",
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of manifest.json; the sidecar loads nothing whose manifest differs.",
    )
    signature_digest: str | None = Field(
        default=None,
        alias="signatureDigest",
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of model.sig, the operator's OpenSSF model-signing bundle over every file's "
        "digest, the manifest and verification.json; empty while unsigned.",
    )


class ModelVersionStatus(ApiModel):
    """Phase, training progress, metrics, each gate's result, the artifact and the Jobs that made it."""

    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="metadata.generation this status reflects."
    )
    phase: Phase = Field(
        default=Phase.PENDING,
        description="Where the version is: Pending → Training → Verifying → Verified → Promoting → Active → Superseded, or Rejected / Failed / RolledBack.",
    )
    message: str = Field(default="", description="Why the phase is what it is, for people.")
    progress: TrainingProgress = Field(
        default_factory=TrainingProgress, description="Training progress, as the trainer last reported it."
    )
    metrics: VersionMetrics = Field(
        default_factory=VersionMetrics, description="What verification measured; empty until it has run."
    )
    gates: list[GateResult] = Field(
        default_factory=list, max_length=MAX_GATES, description="Each verification gate: value, threshold, passed."
    )
    artifact: ArtifactRef | None = Field(
        default=None, description="Where the trained version lives and its manifest digest."
    )
    training_job: str | None = Field(
        default=None, alias="trainingJob", description="The training Job's name (kubectl logs job/<name>)."
    )
    verification_job: str | None = Field(
        default=None, alias="verificationJob", description="The verification Job's name (kubectl logs job/<name>)."
    )
    training_attempts: int = Field(
        default=0,
        alias="trainingAttempts",
        ge=0,
        description="Training Jobs started for this version (retries included).",
    )
    start_time: datetime | None = Field(default=None, alias="startTime", description="When training started.")
    training_completion_time: datetime | None = Field(
        default=None, alias="trainingCompletionTime", description="When training finished and the manifest was found."
    )
    completion_time: datetime | None = Field(
        default=None,
        alias="completionTime",
        description="When verification decided (Verified or Rejected) or it failed.",
    )
    promoted_at: datetime | None = Field(
        default=None, alias="promotedAt", description="When every serving replica first served this version."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Trained, Verified and Ready (the summary), Kubernetes-style.",
    )
    kopf: dict[str, Any] | None = Field(default=None, description="kopf's own bookkeeping.")
