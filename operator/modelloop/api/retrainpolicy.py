"""RetrainPolicy: what a team puts in git to keep one model retrained, verified and served.

The operator reads ``spec`` and writes only ``status`` (GitOps tools must see no drift).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from .common import ApiModel, Condition, SecretKeyRef
from .constants import DEFAULT_PLUGIN

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
# A relative path inside the bucket: no leading '/', no '..' segment, no empty segment.
BUCKET_PATH = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*/?$"
VERSION_REF = r"^v[1-9][0-9]*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class CredentialsRef(ApiModel):
    """Keys of a Secret in the policy's namespace holding S3 credentials."""

    secret_name: str = Field(alias="secretName", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    access_key_key: str = Field(default="accessKey", alias="accessKeyKey", min_length=1, max_length=253)
    secret_key_key: str = Field(default="secretKey", alias="secretKeyKey", min_length=1, max_length=253)


class StorageSpec(ApiModel):
    endpoint: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$", description="S3 endpoint host[:port], without scheme.")
    secure: bool = Field(default=False, description="Use HTTPS to reach the endpoint.")
    region: str | None = Field(default=None, max_length=63)
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    trainer_credentials: CredentialsRef = Field(alias="trainerCredentials", description="Read-write credentials, mounted only into training and verification pods.")


class DatasetSpec(ApiModel):
    path: str = Field(min_length=1, max_length=1024, pattern=BUCKET_PATH, description="Prefix in the bucket of the base dataset.")


class FeedbackTrigger(ApiModel):
    min_samples: int = Field(default=100, alias="minSamples", ge=1, le=10_000_000, description="Corrections since the last training needed to retrain (with minInterval).")
    urgent_samples: int | None = Field(default=None, alias="urgentSamples", ge=1, le=10_000_000, description="Corrections that trigger a retrain regardless of minInterval.")
    min_interval: str = Field(default="168h", alias="minInterval", pattern=DURATION, description="Minimum time between two trainings started by feedback, e.g. 168h.")


class TriggerSpec(ApiModel):
    feedback: FeedbackTrigger = Field(default_factory=FeedbackTrigger)
    schedule: str | None = Field(default=None, max_length=128, description="Cron expression (5 fields, UTC); retrains on schedule if any feedback is pending.")
    check_interval_seconds: int = Field(default=30, alias="checkIntervalSeconds", ge=5, le=3600, description="How often the operator counts new feedback.")


class Hyperparameters(ApiModel):
    epochs: int = Field(default=20, ge=1, le=10_000)
    batch_size: int = Field(default=64, alias="batchSize", ge=1, le=65_536)
    learning_rate: float = Field(default=1e-3, alias="learningRate", gt=0, le=10)
    early_stopping_patience: int = Field(default=5, alias="earlyStoppingPatience", ge=0, le=1000)
    checkpoint_interval: int = Field(default=1, alias="checkpointInterval", ge=1, le=1000, description="Epochs between checkpoints.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    validation_fraction: float = Field(default=0.2, alias="validationFraction", gt=0, lt=1)
    augment: bool = Field(default=True)


class Toleration(ApiModel):
    key: str | None = Field(default=None, max_length=316)
    operator: str | None = Field(default=None, pattern=r"^(Exists|Equal)$")
    value: str | None = Field(default=None, max_length=63)
    effect: str | None = Field(default=None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")


class Resources(ApiModel):
    requests: dict[str, str] = Field(default_factory=dict, description="e.g. cpu: '2', memory: 8Gi")
    limits: dict[str, str] = Field(default_factory=dict, description="e.g. nvidia.com/gpu: '1'")


class TrainingSpec(ApiModel):
    image: str = Field(min_length=1, max_length=512)
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy", pattern=r"^(Always|IfNotPresent|Never)$")
    command: list[str] = Field(default_factory=lambda: ["modelloop-trainer"], max_length=64)
    args: list[str] = Field(default_factory=list, max_length=256, description="Extra arguments after the verb (train/verify).")
    plugin: str = Field(default=DEFAULT_PLUGIN, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", description="module:Class implementing the model plug-in.")
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    service_account_name: str | None = Field(default=None, alias="serviceAccountName", pattern=DNS_SUBDOMAIN)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    backoff_limit: int = Field(default=3, alias="backoffLimit", ge=0, le=100, description="Retries of a failed or preempted training pod; each resumes from the last checkpoint.")
    active_deadline_seconds: int | None = Field(default=None, alias="activeDeadlineSeconds", ge=1)
    workers: int = Field(default=1, ge=1, le=256, description="Pods for distributed training (torchrun, one Indexed Job).")
    gpus_per_worker: int = Field(default=0, alias="gpusPerWorker", ge=0, le=16, description="nvidia.com/gpu per pod; overrides resources.limits.")


class GateSpec(ApiModel):
    min_validation_accuracy: float | None = Field(default=0.90, alias="minValidationAccuracy", ge=0, le=1)
    min_holdout_accuracy: float | None = Field(default=0.88, alias="minHoldoutAccuracy", ge=0, le=1)
    must_beat_active: bool = Field(default=True, alias="mustBeatActive")
    beat_margin: float = Field(default=0.0, alias="beatMargin", ge=-1, le=1, description="Holdout accuracy the candidate must exceed the active version by.")
    min_class_accuracy: float | None = Field(default=None, alias="minClassAccuracy", ge=0, le=1, description="Floor for every class's holdout accuracy.")
    max_latency_p95_ms: float | None = Field(default=200, alias="maxLatencyP95Ms", gt=0)
    max_memory_mi_b: float | None = Field(default=2048, alias="maxMemoryMiB", gt=0)
    min_throughput_rps: float | None = Field(default=50, alias="minThroughputRps", ge=0)


class VerificationSpec(ApiModel):
    gates: GateSpec = Field(default_factory=GateSpec)
    resources: Resources = Field(default_factory=Resources)
    active_deadline_seconds: int = Field(default=1800, alias="activeDeadlineSeconds", ge=1)


class ServingSpec(ApiModel):
    deployment: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="Deployment in this namespace whose pods run the reload sidecar.")
    rollout_timeout: str = Field(default="10m", alias="rolloutTimeout", pattern=DURATION)
    feedback_credentials: CredentialsRef | None = Field(default=None, alias="feedbackCredentials", description="Read + feedback-write credentials for serving pods (documentation; mounted by the Deployment).")


class AutoRollbackSpec(ApiModel):
    enabled: bool = False
    min_live_accuracy: float = Field(default=0.80, alias="minLiveAccuracy", ge=0, le=1)
    min_reviews: int = Field(default=50, alias="minReviews", ge=1)


class RetentionSpec(ApiModel):
    keep_versions: int = Field(default=10, alias="keepVersions", ge=2, le=10_000, description="Versions kept; the active and the previous one are never deleted.")


class RetrainPolicySpec(ApiModel):
    model: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Model name; the bucket prefix of all its versions.")
    suspend: bool = Field(default=False, description="Stop starting new trainings (running ones finish).")
    storage: StorageSpec
    dataset: DatasetSpec
    triggers: TriggerSpec = Field(default_factory=TriggerSpec)
    training: TrainingSpec
    verification: VerificationSpec = Field(default_factory=VerificationSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    auto_rollback: AutoRollbackSpec = Field(default_factory=AutoRollbackSpec, alias="autoRollback")
    retention: RetentionSpec = Field(default_factory=RetentionSpec)


class DesiredVersion(ApiModel):
    """What serving pods should load. The reload sidecar watches exactly this."""

    version: str = Field(pattern=VERSION_REF)
    artifact_uri: str = Field(alias="artifactURI")
    manifest_digest: str = Field(alias="manifestDigest", pattern=r"^sha256:[0-9a-f]{64}$")
    since: datetime | None = None
    reason: str | None = Field(default=None, description="Promotion, Rollback or AutoRollback.")


class RolloutStatus(ApiModel):
    updated: int = Field(default=0, ge=0, description="Replicas serving the desired digest.")
    total: int = Field(default=0, ge=0)
    summary: str = Field(default="", description="updated/total, for the printer column.")
    started_at: datetime | None = Field(default=None, alias="startedAt")
    completed_at: datetime | None = Field(default=None, alias="completedAt")


class FeedbackStatus(ApiModel):
    cursor: str = Field(default="", description="Last feedback object counted.")
    pending_corrections: int = Field(default=0, alias="pendingCorrections", ge=0)
    pending_reviews: int = Field(default=0, alias="pendingReviews", ge=0)
    last_counted_at: datetime | None = Field(default=None, alias="lastCountedAt")


class LiveAccuracy(ApiModel):
    version: str | None = None
    reviews: int = Field(default=0, ge=0)
    correct: int = Field(default=0, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)


class HandledRequests(ApiModel):
    """Annotation values already acted on, so each is handled once (metadata is never edited)."""

    retrain_now: str | None = Field(default=None, alias="retrainNow")
    rollback_to: str | None = Field(default=None, alias="rollbackTo")


class RetrainPolicyStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    active_version: str | None = Field(default=None, alias="activeVersion")
    previous_version: str | None = Field(default=None, alias="previousVersion")
    latest_version: str | None = Field(default=None, alias="latestVersion", description="Highest version number created.")
    training_version: str | None = Field(default=None, alias="trainingVersion", description="The version in flight, if any.")
    desired: DesiredVersion | None = None
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)
    feedback: FeedbackStatus = Field(default_factory=FeedbackStatus)
    live_accuracy: LiveAccuracy = Field(default_factory=LiveAccuracy, alias="liveAccuracy")
    last_training_time: datetime | None = Field(default=None, alias="lastTrainingTime")
    last_schedule_time: datetime | None = Field(default=None, alias="lastScheduleTime")
    handled: HandledRequests = Field(default_factory=HandledRequests)
    conditions: list[Condition] = Field(default_factory=list)
    kopf: dict[str, Any] | None = Field(default=None, description="kopf's own bookkeeping.")
