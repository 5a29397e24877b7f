"""RetrainPolicy: what a team puts in git to keep one model retrained, verified and served.

The operator reads ``spec`` and writes only ``status`` (GitOps tools must see no drift).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from .cel import immutable, rule, validations
from .common import CONDITIONS_LIST_MAP, MAX_CONDITIONS, ApiModel, Condition
from .constants import DEFAULT_PLUGIN
from .podtemplate import PodTemplate
from .syntax import CRON_FIELDS, CRON_SHAPE, FIVE_FIELDS, IMAGE_REFERENCE, cron_field_pattern

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
# A relative path inside the bucket: no leading '/', no '..' segment, no empty segment.
BUCKET_PATH = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*/?$"
VERSION_REF = r"^v[1-9][0-9]*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
GPU = "nvidia.com/gpu"

# Bounded so the API server can cost the CEL rules that read them.
Quantity = Annotated[str, Field(min_length=1, max_length=64)]
LabelValue = Annotated[str, Field(max_length=63)]
MAX_RESOURCES = 16
MAX_TRAININGS_PER_DAY = 100


class CredentialsRef(ApiModel):
    """Keys of a Secret in the policy's namespace holding S3 credentials."""

    secret_name: str = Field(
        alias="secretName",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret in the policy's namespace.",
    )
    access_key_key: str = Field(
        default="accessKey",
        alias="accessKeyKey",
        min_length=1,
        max_length=253,
        description="Key in the Secret holding the access key id.",
    )
    secret_key_key: str = Field(
        default="secretKey",
        alias="secretKeyKey",
        min_length=1,
        max_length=253,
        description="Key in the Secret holding the secret access key.",
    )


class CABundleRef(ApiModel):
    """A PEM bundle of CA certificates in a ConfigMap of the policy's namespace (for example one
    that cert-manager's trust-manager writes), trusted to sign the object store's certificate."""

    config_map: str = Field(
        alias="configMap",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="ConfigMap in the policy's namespace holding the bundle.",
    )
    key: str = Field(
        default="ca.crt",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the ConfigMap whose value is the PEM bundle (one or more CA certificates).",
    )


class StorageTLS(ApiModel):
    """How the operator, trainer, verifier and sidecar check the object store's certificate."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.caBundle) || self.enabled",
                message="caBundle is only used over TLS: set enabled to true or remove caBundle",
                field_path=".caBundle",
            )
        )
    )

    enabled: bool = Field(
        default=True,
        description="Reach the endpoint over HTTPS and verify its certificate (always verified, never skipped).",
    )
    ca_bundle: CABundleRef | None = Field(
        default=None,
        alias="caBundle",
        description=(
            "CA certificates to verify the endpoint with, for a store whose certificate a private CA signed;"
            " when absent, the system's public CAs are used."
        ),
    )


class StorageSpec(ApiModel):
    """The S3-compatible object store holding datasets, feedback and every version's artifacts."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.verifierCredentials)"
                " || self.verifierCredentials.secretName != self.trainerCredentials.secretName",
                message=(
                    "verifierCredentials names the trainer's Secret: give the verifier its own identity"
                    " (docs/storage/verifier-policy.json) or remove verifierCredentials"
                ),
                field_path=".verifierCredentials",
            )
        )
    )

    endpoint: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="S3 endpoint host[:port], without scheme.",
    )
    secure: bool | None = Field(
        default=None,
        description=(
            "Deprecated: use tls, which wins when both are set. Kept so that policies stored before tls"
            " existed keep their scheme (the old default stored secure: false: plain HTTP)."
        ),
    )
    tls: StorageTLS | None = Field(
        default=None,
        description=(
            "TLS to the endpoint, with an optional CA bundle for a private CA. On by default (absent, and"
            " secure unset, means HTTPS verified against the system CAs); enabled: false for plain HTTP to"
            " a store inside the namespace's trust boundary only."
        ),
    )
    region: str | None = Field(default=None, max_length=63, description="S3 region, where the store needs one.")
    bucket: str = Field(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket holding versions (<model>/<version>/), feedback and checkpoints.",
    )
    trainer_credentials: CredentialsRef = Field(
        alias="trainerCredentials",
        description=(
            "Read-write credentials for the model's prefix, mounted into training pods (and verification pods"
            " when verifierCredentials is absent); the operator reads the bucket with them."
        ),
    )
    verifier_credentials: CredentialsRef | None = Field(
        default=None,
        alias="verifierCredentials",
        description=(
            "Credentials of a separate verifier identity, mounted into verification pods instead of"
            " trainerCredentials: read the model's prefix and dataset, write only"
            " <model>/<version>/verification.json (docs/storage/verifier-policy.json), so the identity that"
            " trains cannot write the results its version is judged on. Absent: verification runs with"
            " trainerCredentials."
        ),
    )

    @property
    def use_tls(self) -> bool:
        """Whether clients speak HTTPS: ``tls.enabled`` when ``tls`` is present, else the older ``secure``,
        else yes (TLS by default; policies stored before ``tls`` existed carry ``secure: false``)."""
        if self.tls is not None:
            return self.tls.enabled
        return True if self.secure is None else self.secure

    @property
    def ca_bundle(self) -> CABundleRef | None:
        return self.tls.ca_bundle if self.tls is not None and self.tls.enabled else None


class DatasetSpec(ApiModel):
    """The base dataset the model is trained on (feedback is added to it)."""

    path: str = Field(
        min_length=1, max_length=1024, pattern=BUCKET_PATH, description="Prefix in the bucket of the base dataset."
    )


class FeedbackTrigger(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.urgentSamples) || !has(self.minSamples) || self.urgentSamples >= self.minSamples",
                message="urgentSamples must be >= minSamples: the urgent threshold is the one that skips minInterval",
                field_path=".urgentSamples",
            )
        )
    )

    min_samples: int = Field(
        default=100,
        alias="minSamples",
        ge=1,
        le=10_000_000,
        description="Corrections since the last training needed to retrain (with minInterval).",
    )
    urgent_samples: int | None = Field(
        default=None,
        alias="urgentSamples",
        ge=1,
        le=10_000_000,
        description="Corrections that trigger a retrain regardless of minInterval.",
    )
    min_interval: str = Field(
        default="168h",
        alias="minInterval",
        pattern=DURATION,
        description="Minimum time between two trainings started by feedback, e.g. 168h.",
    )
    late_arrival_window: str = Field(
        default="6h",
        alias="lateArrivalWindow",
        pattern=DURATION,
        description="How long after its key's time a feedback batch may be uploaded (a serving pod's spool"
        " draining after an object-store outage) and still be counted; each check lists this much of the"
        " bucket's feedback. Later batches are still trained on, just not counted toward the trigger.",
    )


class TriggerSpec(ApiModel):
    """When to retrain. The annotation modelloop.dev/retrain-now=<new value> also starts one at once."""

    feedback: FeedbackTrigger = Field(
        default_factory=FeedbackTrigger, description="Retrain when enough corrections have accumulated."
    )
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description="Cron expression (5 fields, UTC, or @daily/@weekly/...); retrains on schedule if any feedback is"
        " pending. The API server checks each field's range (minute 0-59, hour 0-23, day 1-31, month 1-12,"
        " weekday 0-7) and refuses a step of 0.",
        json_schema_extra=validations(
            rule(
                f"self.matches('{CRON_SHAPE}')",
                message_expression="'schedule ' + self + ' is not a 5-field cron expression"
                ' (minute hour day-of-month month day-of-week, e.g. "0 3 * * 1") or @daily/@weekly/...\'',
            ),
            *(
                rule(
                    f"!self.matches('{FIVE_FIELDS}') || self.matches('{cron_field_pattern(i)}')",
                    message_expression=f"'schedule \"' + self + '\": the {f.name} field ({f.ordinal}) takes {f.allowed},"
                    " as N, N-M or *, optionally /STEP, comma-separated'",
                )
                for i, f in enumerate(CRON_FIELDS)
            ),
        ),
    )
    check_interval_seconds: int = Field(
        default=30,
        alias="checkIntervalSeconds",
        ge=5,
        le=3600,
        description="How often the operator counts new feedback.",
    )
    max_trainings_per_day: int | None = Field(
        default=None,
        alias="maxTrainingsPerDay",
        ge=1,
        le=MAX_TRAININGS_PER_DAY,
        description="At most this many trainings start in any rolling 24 h (retries and retrain-now included),"
        " so a flood of reviews cannot drive unbounded GPU spend; a due training then waits, with"
        " Training=False reason BudgetExhausted saying when the next may start. Unset: no budget.",
    )


class LearningRateSchedule(ApiModel):
    """How the learning rate changes over the epochs; a pure function of the epoch, so a resumed run
    continues exactly where it stopped."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.stepEpochs) || self.type == 'step'",
                message="stepEpochs only applies to type: step",
                field_path=".stepEpochs",
            ),
            rule(
                "!has(self.gamma) || self.type == 'step'",
                message="gamma only applies to type: step",
                field_path=".gamma",
            ),
            rule(
                "!has(self.minLearningRate) || self.type == 'cosine'",
                message="minLearningRate only applies to type: cosine",
                field_path=".minLearningRate",
            ),
        )
    )

    type: Literal["none", "cosine", "step"] = Field(
        default="none",
        description="none: constant; cosine: from learningRate down to minLearningRate over the epochs; step: "
        "multiplied by gamma every stepEpochs epochs.",
    )
    step_epochs: int | None = Field(
        default=None, alias="stepEpochs", ge=1, le=10_000, description="type step: epochs between decays (default 10)."
    )
    gamma: float | None = Field(
        default=None, gt=0, lt=1, description="type step: the factor applied at each decay (default 0.1)."
    )
    min_learning_rate: float | None = Field(
        default=None,
        alias="minLearningRate",
        ge=0,
        le=10,
        description="type cosine: the learning rate reached at the last epoch (default 0); must be below learningRate.",
    )


class Hyperparameters(ApiModel):
    """Training hyperparameters, handed to the trainer as JSON (camelCase keys)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.momentum) || !has(self.optimizer) || self.optimizer == 'sgd'",
                message="momentum only applies to optimizer: sgd",
                field_path=".momentum",
            ),
            rule(
                "!has(self.freezeBackbone) || !self.freezeBackbone || !has(self.frozenLayers)",
                message="set freezeBackbone or frozenLayers, not both (freezeBackbone: true is frozenLayers: 5)",
                field_path=".frozenLayers",
            ),
            rule(
                "!has(self.learningRateSchedule) || !has(self.learningRateSchedule.minLearningRate)"
                " || !has(self.learningRate) || self.learningRateSchedule.minLearningRate < self.learningRate",
                message="learningRateSchedule.minLearningRate must be below learningRate: cosine decays from one to"
                " the other",
                field_path=".learningRateSchedule",
            ),
        )
    )

    epochs: int = Field(default=20, ge=1, le=10_000, description="Maximum epochs; early stopping may end sooner.")
    batch_size: int = Field(
        default=64, alias="batchSize", ge=1, le=65_536, description="Global batch size (split across workers)."
    )
    learning_rate: float = Field(
        default=1e-3, alias="learningRate", gt=0, le=10, description="Optimizer learning rate."
    )
    early_stopping_patience: int = Field(
        default=5,
        alias="earlyStoppingPatience",
        ge=0,
        le=1000,
        description="Epochs without validation-loss improvement before stopping; 0 disables.",
    )
    checkpoint_interval: int = Field(
        default=1, alias="checkpointInterval", ge=1, le=1000, description="Epochs between checkpoints."
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Random seed for the split, augmentation and initialisation."
    )
    validation_fraction: float = Field(
        default=0.2,
        alias="validationFraction",
        gt=0,
        lt=1,
        description="Share of the training data held out for validation.",
    )
    augment: bool = Field(default=True, description="Apply the plug-in's data augmentation.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        default="adam",
        description="adam (the default), adamw (Adam with decoupled weight decay: the usual choice for fine-tuning "
        "a pretrained CNN) or sgd (with momentum).",
    )
    momentum: float | None = Field(
        default=None, ge=0, lt=1, description="optimizer sgd: momentum (default 0.9); Nesterov is not used."
    )
    weight_decay: float = Field(
        default=0.0,
        alias="weightDecay",
        ge=0,
        le=1,
        description="L2 penalty (adam, sgd) or decoupled weight decay (adamw) on the trained parameters.",
    )
    learning_rate_schedule: LearningRateSchedule = Field(
        default_factory=LearningRateSchedule,
        alias="learningRateSchedule",
        description="How the learning rate changes over the epochs (none, cosine or step).",
    )
    image_size: int | None = Field(
        default=None,
        alias="imageSize",
        ge=32,
        le=1024,
        description="Image plug-ins: the square side in pixels images are resized to, for training and "
        "verification (the laundry example: default 224; ResNet downsamples 32x). The trained size is written into "
        "the version's manifest (preprocessing) and serving pods decode that version's inputs at it. Other "
        "plug-ins ignore it.",
    )
    freeze_backbone: bool | None = Field(
        default=None,
        alias="freezeBackbone",
        description="Image plug-ins: train only the classification head (transfer learning on little data); "
        "frozen layers keep their batch-norm statistics too. Other plug-ins ignore it.",
    )
    base_weights: str | None = Field(
        default=None,
        alias="baseWeights",
        min_length=1,
        max_length=1024,
        pattern=BUCKET_PATH,
        description="Image plug-ins: bucket key of the starting weights for the first version (transfer learning; "
        "a safetensors state dict with torchvision's names, e.g. ImageNet weights converted offline). Later "
        "versions start from their parent. Other plug-ins ignore it.",
    )
    frozen_layers: int | None = Field(
        default=None,
        alias="frozenLayers",
        ge=0,
        le=5,
        description="Image plug-ins (ResNet): backbone stages kept frozen, counted from the input: 0 none, 1 the "
        "stem (conv1, bn1), 2-5 also layer1..layer4 (5 is freezeBackbone). Other plug-ins ignore it.",
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, checked the way the API server checks a Pod's (so the Job is not refused later)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'",
                message="a toleration without a key must use operator Exists (it then tolerates every taint)",
                field_path=".key",
            ),
            rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                message="a toleration with operator Exists matches any value: leave value empty",
                field_path=".value",
            ),
            rule(
                "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
                message="tolerationSeconds only applies to effect NoExecute",
                field_path=".tolerationSeconds",
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=316, description="Taint key; empty with operator Exists tolerates every taint."
    )
    operator: str | None = Field(default=None, pattern=r"^(Exists|Equal)$", description="Equal (default) or Exists.")
    value: str | None = Field(default=None, max_length=63, description="Taint value to match with operator Equal.")
    effect: str | None = Field(
        default=None,
        pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$",
        description="Taint effect to match; empty matches all.",
    )
    toleration_seconds: int | None = Field(
        default=None,
        alias="tolerationSeconds",
        description="With NoExecute: how long the pod stays after the taint appears.",
    )


_QUANTITIES = validations(
    rule(
        "self.all(k, isQuantity(self[k]))",
        message="every value must be a Kubernetes quantity, like 500m, 2 or 8Gi",
    )
)


class Resources(ApiModel):
    """Container resources. GPUs are an extended resource: whole numbers, never overcommitted."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                f"!has(self.limits) || !('{GPU}' in self.limits) || self.limits['{GPU}'].matches('^[0-9]+$')",
                message=f"limits['{GPU}'] must be a whole number of GPUs",
                field_path=".limits",
            ),
            rule(
                f"!has(self.requests) || !('{GPU}' in self.requests)"
                f" || has(self.limits) && '{GPU}' in self.limits && self.requests['{GPU}'] == self.limits['{GPU}']",
                message=f"{GPU} cannot be overcommitted: set it in limits (the request then defaults to the limit)",
                field_path=".requests",
            ),
            rule(
                "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
                " || !isQuantity(self.requests[k]) || !isQuantity(self.limits[k])"
                " || quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0)",
                message="a request must not exceed the limit of the same resource",
                field_path=".requests",
            ),
        )
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="e.g. cpu: '2', memory: 8Gi",
        json_schema_extra=_QUANTITIES,
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="e.g. nvidia.com/gpu: '1'",
        json_schema_extra=_QUANTITIES,
    )


class TrainingSpec(ApiModel):
    """The training Job: image, resources, scheduling, retries and hyperparameters."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.workers) || self.workers <= 1 || !has(self.hyperparameters)"
                " || !has(self.hyperparameters.batchSize) || self.hyperparameters.batchSize >= self.workers",
                message="workers must not exceed hyperparameters.batchSize: the global batch is split across the workers",
                field_path=".workers",
            ),
            rule(
                "!has(self.workloadPriorityClass) || has(self.queueName)",
                message="workloadPriorityClass needs queueName: only Kueue reads it",
                field_path=".workloadPriorityClass",
            ),
            rule(
                f"!has(self.gpusPerWorker) || self.gpusPerWorker == 0 || !has(self.resources)"
                f" || (!has(self.resources.limits) || !('{GPU}' in self.resources.limits))"
                f" && (!has(self.resources.requests) || !('{GPU}' in self.resources.requests))",
                message=f"set GPUs in one place: gpusPerWorker or resources.limits['{GPU}'], not both",
                field_path=".gpusPerWorker",
            ),
        )
    )

    image: str = Field(
        min_length=1,
        max_length=512,
        description="Trainer image (also runs verification), an OCI reference such as ghcr.io/team/trainer:1.2;"
        " runs `command + [train|verify] + args`.",
        json_schema_extra=validations(
            rule(
                f"self.matches('{IMAGE_REFERENCE}')",
                message_expression="'image ' + self + ' is not an image reference: expected"
                " [registry[:port]/]path[:tag][@sha256:digest] with a lowercase path,"
                " e.g. ghcr.io/team/trainer:1.2'",
            )
        ),
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        alias="imagePullPolicy",
        pattern=r"^(Always|IfNotPresent|Never)$",
        description="Pull policy of the training and verification pods.",
    )
    command: list[str] = Field(
        default_factory=lambda: ["modelloop-trainer"],
        min_length=1,
        max_length=64,
        description="Entrypoint; the verb (train or verify) is appended.",
    )
    args: list[str] = Field(
        default_factory=list, max_length=256, description="Extra arguments after the verb (train/verify)."
    )
    plugin: str = Field(
        default=DEFAULT_PLUGIN,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="module:Class implementing the model plug-in.",
    )
    resources: Resources = Field(default_factory=Resources, description="Resources of each training pod.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        alias="nodeSelector",
        max_length=64,
        description="Node labels the training pods must run on (e.g. a GPU pool).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Taints the training pods tolerate (GPU, spot nodes)."
    )
    service_account_name: str | None = Field(
        default=None,
        alias="serviceAccountName",
        pattern=DNS_SUBDOMAIN,
        description="ServiceAccount of the training pods; none needs API access.",
    )
    pod_template: PodTemplate = Field(
        default_factory=PodTemplate,
        alias="podTemplate",
        description="Labels, annotations, affinity, priorityClassName, imagePullSecrets, extra env and volumes"
        " of the training and verification pods (every worker of a distributed training).",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Passed to the trainer as MODELLOOP_HYPERPARAMETERS."
    )
    backoff_limit: int = Field(
        default=3,
        alias="backoffLimit",
        ge=0,
        le=100,
        description="Retries of a failed or preempted training pod; each resumes from the last checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        alias="activeDeadlineSeconds",
        ge=1,
        description="Wall-clock limit of the training Job, retries included.",
    )
    workers: int = Field(
        default=1, ge=1, le=256, description="Pods for distributed training (torchrun, one Indexed Job)."
    )
    gpus_per_worker: int = Field(
        default=0,
        alias="gpusPerWorker",
        ge=0,
        le=16,
        description="nvidia.com/gpu per pod (sets the limit); use this or resources.limits, not both.",
    )
    queue_name: str | None = Field(
        default=None,
        alias="queueName",
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue (in the policy's namespace) that admits the training and verification Jobs:"
        " they are created suspended with the kueue.x-k8s.io/queue-name label and Kueue unsuspends them on"
        " admission (and suspends them again to preempt). While a Job waits the version shows condition"
        " Queued=True. Unset: the Jobs start at once, without Kueue.",
    )
    workload_priority_class: str | None = Field(
        default=None,
        alias="workloadPriorityClass",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Kueue WorkloadPriorityClass of the Jobs (label kueue.x-k8s.io/priority-class): orders them"
        " in the queue and lets a higher one preempt a lower one's running training, which checkpoints on"
        " SIGTERM and resumes when admitted again. Needs queueName.",
    )


CLASS_NAME = r"^[A-Za-z0-9][-A-Za-z0-9_.:]*$"
MAX_CLASS_GATES = 64


class ClassGate(ApiModel):
    """Floors for one named class on the holdout: recall (its samples found) and/or precision (its
    predictions right). For a rare, costly class ("defect") overall accuracy hides what matters."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.minRecall) || has(self.minPrecision)",
                message="a perClass gate needs minRecall, minPrecision or both: otherwise it checks nothing",
            )
        )
    )

    class_: str = Field(
        alias="class",
        min_length=1,
        max_length=63,
        pattern=CLASS_NAME,
        description="The class name, as the model's plug-in declares it (e.g. defect). A name the model does not "
        "have fails the gate, saying which classes it has.",
    )
    min_recall: float | None = Field(
        default=None,
        alias="minRecall",
        ge=0,
        le=1,
        description="Floor for the class's holdout recall: of its samples, the share predicted as it.",
    )
    min_precision: float | None = Field(
        default=None,
        alias="minPrecision",
        ge=0,
        le=1,
        description="Floor for the class's holdout precision: of the samples predicted as it, the share truly of it.",
    )


class GateSpec(ApiModel):
    """Every gate a candidate must pass before promotion; a null gate is off."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.minValidationAccuracy) || has(self.minHoldoutAccuracy) || has(self.minClassAccuracy)"
                " || has(self.perClass) && size(self.perClass) > 0"
                " || !has(self.mustBeatActive) || self.mustBeatActive",
                message="at least one accuracy gate must stay on (minValidationAccuracy, minHoldoutAccuracy,"
                " minClassAccuracy, perClass or mustBeatActive): otherwise any trained model would be promoted",
            ),
            rule(
                "!has(self.beatMargin) || self.beatMargin == 0.0 || !has(self.mustBeatActive) || self.mustBeatActive",
                message="beatMargin only applies with mustBeatActive: true",
                field_path=".beatMargin",
            ),
            rule(
                "!has(self.minHoldoutAccuracy) || !has(self.beatMargin) || !has(self.mustBeatActive)"
                " || !self.mustBeatActive || self.minHoldoutAccuracy + self.beatMargin <= 1.0",
                message="minHoldoutAccuracy + beatMargin must not exceed 1:"
                " no candidate could ever beat an active version that passed the holdout gate",
                field_path=".beatMargin",
            ),
        )
    )

    min_validation_accuracy: float | None = Field(
        default=0.90,
        alias="minValidationAccuracy",
        ge=0,
        le=1,
        description="Floor for validation accuracy; null turns the gate off.",
    )
    min_holdout_accuracy: float | None = Field(
        default=0.88,
        alias="minHoldoutAccuracy",
        ge=0,
        le=1,
        description="Floor for holdout accuracy; null turns the gate off.",
    )
    must_beat_active: bool = Field(
        default=True,
        alias="mustBeatActive",
        description="The candidate's holdout accuracy must exceed the active version's (plus beatMargin).",
    )
    beat_margin: float = Field(
        default=0.0,
        alias="beatMargin",
        ge=-1,
        le=1,
        description="Holdout accuracy the candidate must exceed the active version by.",
    )
    min_class_accuracy: float | None = Field(
        default=None, alias="minClassAccuracy", ge=0, le=1, description="Floor for every class's holdout accuracy."
    )
    per_class: list[ClassGate] = Field(
        default_factory=list,
        alias="perClass",
        max_length=MAX_CLASS_GATES,
        description="Recall and precision floors for named classes, e.g. [{class: defect, minRecall: 0.8}]; each "
        "reported as its own gate (recall[defect], precision[defect]) in the ModelVersion's status.gates.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["class"]},
    )
    max_latency_p95_ms: float | None = Field(
        default=200,
        alias="maxLatencyP95Ms",
        gt=0,
        description="Ceiling for p95 inference latency (ms); null turns the gate off.",
    )
    max_memory_mi_b: float | None = Field(
        default=2048, alias="maxMemoryMiB", gt=0, description="Ceiling for peak memory (MiB); null turns the gate off."
    )
    min_throughput_rps: float | None = Field(
        default=50,
        alias="minThroughputRps",
        ge=0,
        description="Floor for throughput (requests/s); null turns the gate off.",
    )


class VerificationSpec(ApiModel):
    """The verification Job (same image, verb verify) and the gates its results must pass."""

    gates: GateSpec = Field(
        default_factory=GateSpec, description="Every gate must pass for a version to become Verified."
    )
    resources: Resources = Field(default_factory=Resources)
    active_deadline_seconds: int = Field(
        default=1800, alias="activeDeadlineSeconds", ge=1, description="Wall-clock limit of the verification Job."
    )


class PublicKeyRef(ApiModel):
    """A PEM public key in a ConfigMap or a Secret of the policy's namespace (exactly one of the two)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.configMapName) != has(self.secretName)",
                message="set exactly one of configMapName and secretName: where the public key (PEM) is",
            )
        )
    )

    config_map_name: str | None = Field(
        default=None,
        alias="configMapName",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="ConfigMap in the policy's namespace holding the public key.",
    )
    secret_name: str | None = Field(
        default=None,
        alias="secretName",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret in the policy's namespace holding the public key.",
    )
    key: str = Field(
        default="signing.pub",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the ConfigMap or Secret whose value is the PEM public key (EC P-256, P-384 or P-521).",
    )


class SignatureSpec(ApiModel):
    """Serve only versions the operator signed (OpenSSF model signing) with the key pair named here."""

    public_key: PublicKeyRef = Field(
        alias="publicKey",
        description="The operator's public key. The serving Deployment mounts it into the reload sidecar "
        "(MODELLOOP_SIGNING_PUBLIC_KEY); the sidecar refuses a version whose model.sig is missing or "
        "does not verify with it.",
    )


class ServingSpec(ApiModel):
    """Where verified versions are served; the reload sidecar in each pod hot-swaps them."""

    deployment: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Deployment in this namespace whose pods run the reload sidecar.",
    )
    rollout_timeout: str = Field(
        default="10m",
        alias="rolloutTimeout",
        pattern=DURATION,
        description="How long the serving pods may take to load a new version before RolloutComplete turns False.",
    )
    feedback_credentials: CredentialsRef | None = Field(
        default=None,
        alias="feedbackCredentials",
        description="Read + feedback-write credentials for serving pods (documentation; mounted by the Deployment).",
    )
    signature: SignatureSpec | None = Field(
        default=None,
        description="Require the operator's signature on every version before it is promoted and before a "
        "sidecar loads it. The operator signs verified versions with its private key (a Secret in the "
        "operator's namespace, never this one); promotion waits for the signature.",
    )


class AutoRollbackSpec(ApiModel):
    """After a promotion, keep watching: roll back to the previous version when reviews show the active
    one worse than it was, or below a declared floor (decide/rollback.py)."""

    enabled: bool = Field(
        default=True,
        description="On by default: the active version is rolled back when reviews prove it worse than the "
        "previous version was by more than `margin` (or below `minLiveAccuracy` when set). Never back to a "
        "version that was itself rolled back.",
    )
    min_live_accuracy: float | None = Field(
        default=None,
        alias="minLiveAccuracy",
        ge=0,
        le=1,
        description="An absolute floor: roll back when the active version's live accuracy falls below it. "
        "Unset by default: a floor depends on the model, so only the comparison with the previous version acts.",
    )
    min_reviews: int = Field(
        default=50,
        alias="minReviews",
        ge=1,
        description="Reviews of the active version (and, for the comparison, of the previous one while it "
        "served) needed before live accuracy is trusted.",
    )
    margin: float = Field(
        default=0.05,
        ge=0,
        le=0.5,
        description="How much worse (absolute accuracy, 0-0.5) than the previous version's live accuracy the "
        "active one may be before it is rolled back.",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Error rate of the comparison: the chance of rolling back a version that is not worse by "
        "more than `margin` (one-sided two-proportion z-test).",
    )


class ShadowRolloutSpec(ApiModel):
    """The shadow stage: a verified candidate scores live inputs beside the active version, reviews label
    both answers, and McNemar's exact test with a non-inferiority margin decides (decide/paired.py)."""

    enabled: bool = Field(
        default=True,
        description="Hold a verified candidate in the shadow stage until the paired review test promotes or "
        "rejects it (on by default: the first stage of every rollout). The first version, with no active one "
        "to compare with, is promoted at once. Off: a verified version is promoted at once (the paired tally "
        "is still kept in status.shadow while the candidate is scored in the shadow).",
    )
    min_reviews: int = Field(
        default=200,
        alias="minReviews",
        ge=1,
        le=1_000_000,
        description="Reviewed shadow-scored requests needed before the paired test may promote or reject.",
    )
    margin: float = Field(
        default=0.02,
        ge=0,
        le=0.5,
        description="How much lower the candidate's live accuracy may be than the active version's and still "
        "be promoted (0.02: two percentage points). 0 asks McNemar's test for 'no worse' with no allowance, "
        "which identical models never pass.",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        le=0.5,
        description="Error rate of the test: the probability of promoting a candidate worse than the margin, "
        "over all looks (halved each time the reviews double past minReviews).",
    )
    max_duration: str = Field(
        default="7d",
        alias="maxDuration",
        pattern=DURATION,
        max_length=32,
        description="How long the shadow stage may collect reviews; a candidate not proven within the margin "
        "by then is rejected (never promoted without evidence).",
        json_schema_extra=validations(
            rule(
                "!self.matches('^(0+(\\\\.0+)?(ms|s|m|h|d))+$')",
                message="maxDuration must be longer than zero (for example 7d or 36h)",
            )
        ),
    )


MAX_CANARY_STEPS = 10
CanaryPercent = Annotated[
    int, Field(ge=1, le=99, description="Percent of requests the candidate answers (promotion is the step to 100).")
]


class CanaryRolloutSpec(ApiModel):
    """The canary stage (after the shadow stage, before promotion): the candidate answers a declared share of
    requests; reviews of each version's own answers decide each step (decide/canary.py)."""

    enabled: bool = Field(
        default=False,
        description="Serve a candidate that passed the shadow stage (or was verified, when the shadow stage is "
        "off) to steps[0] percent of requests, then each next step, and promote it after the last; roll it back "
        "(Rejected) when its reviewed live accuracy is worse than the active version's by more than "
        "rollout.shadow.margin, or when a step runs past maxStepDuration undecided.",
    )
    steps: list[CanaryPercent] = Field(
        default_factory=lambda: [10, 50],
        min_length=1,
        max_length=MAX_CANARY_STEPS,
        description="Percent of requests the candidate answers at each step, strictly increasing, each in "
        "1-99 (100 is promotion). Requests carrying a routing key (header X-Modelloop-Routing-Key) are "
        "split by its hash, so a key keeps its version within a step and across the steps.",
        json_schema_extra=validations(
            rule(
                "[1, 2, 3, 4, 5, 6, 7, 8, 9].all(i, i >= self.size() || self[i] > self[i - 1])",
                message="canary steps must be strictly increasing (for example [10, 50])",
            ),
        ),
    )
    min_reviews_per_step: int = Field(
        default=100,
        alias="minReviewsPerStep",
        ge=1,
        le=1_000_000,
        description="Reviews of each version's own answers (the candidate's, and the active version's in the "
        "same step, the comparison) needed before a step may move on or roll the candidate back.",
    )
    max_step_duration: str = Field(
        default="1d",
        alias="maxStepDuration",
        pattern=DURATION,
        max_length=32,
        description="How long one step may collect reviews; a step still undecided then rolls the candidate "
        "back (Rejected, reason CanaryTimedOut): users are not left on an unproven version.",
        json_schema_extra=validations(
            rule(
                "!self.matches('^(0+(\\\\.0+)?(ms|s|m|h|d))+$')",
                message="maxStepDuration must be longer than zero (for example 1d or 6h)",
            )
        ),
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"canary steps must be strictly increasing (for example [10, 50]), got {steps}")
        return steps


class RolloutSpec(ApiModel):
    """How a verified version reaches every replica: decided by live reviews."""

    shadow: ShadowRolloutSpec = Field(
        default_factory=ShadowRolloutSpec,
        description="The shadow stage: the candidate scores the same live inputs off the response path; the "
        "paired review tally decides promotion.",
    )
    canary: CanaryRolloutSpec = Field(
        default_factory=CanaryRolloutSpec,
        description="The canary stage: the candidate answers a growing share of requests; per-version live "
        "accuracy from reviews decides each step (margin and alpha are rollout.shadow's).",
    )


class RetentionSpec(ApiModel):
    """Old versions are pruned; the active and previous versions are always kept."""

    keep_versions: int = Field(
        default=10,
        alias="keepVersions",
        ge=2,
        le=10_000,
        description="Versions kept; the active and the previous one are never deleted.",
    )


class RetrySpec(ApiModel):
    """Retrain after a failed or rejected training, each attempt with adjusted hyperparameters; then stop and alert.

    Attempt n (n >= 2) trains with ``learningRate * learningRateFactor**(n-1)`` and
    ``epochs + extraEpochs*(n-1)`` (kept within the hyperparameters' own bounds). After the last
    attempt fails or is rejected the policy sets ``RetriesExhausted=True`` and waits for a person
    or the next trigger, which starts again at attempt 1.
    """

    max_attempts: int = Field(
        default=3,
        alias="maxAttempts",
        ge=1,
        le=10,
        description="Trainings per trigger, the first included: 3 means up to 2 retries; 1 turns retries off.",
    )
    learning_rate_factor: float = Field(
        default=0.5,
        alias="learningRateFactor",
        gt=0,
        le=10,
        description="Each retry multiplies the learning rate by this (0.5 halves it); capped at learningRate 10.",
    )
    extra_epochs: int = Field(
        default=10,
        alias="extraEpochs",
        ge=0,
        le=1000,
        description="Epochs each retry adds to hyperparameters.epochs; capped at 10000.",
    )


class RetrainPolicySpec(ApiModel):
    """What to retrain, from which data, when, how, which gates a new version must pass, and where it is served."""

    model: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Model name; the bucket prefix of all its versions. Immutable: versions already trained live under it.",
        json_schema_extra=immutable("spec.model"),
    )
    suspend: bool = Field(default=False, description="Stop starting new trainings (running ones finish).")
    storage: StorageSpec
    dataset: DatasetSpec
    triggers: TriggerSpec = Field(
        default_factory=TriggerSpec,
        description="When to retrain: feedback thresholds, a schedule, or the retrain-now annotation.",
    )
    training: TrainingSpec
    verification: VerificationSpec = Field(
        default_factory=VerificationSpec, description="Gates a new version must pass before it is promoted."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Where verified versions are hot-swapped in.")
    auto_rollback: AutoRollbackSpec = Field(
        default_factory=AutoRollbackSpec,
        alias="autoRollback",
        description="Roll back automatically when live accuracy drops.",
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How a verified version is rolled out: the shadow stage's review count, margin, error rate "
        "and time limit.",
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec, description="How many versions to keep in the bucket and the cluster."
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        description="Retry a failed or rejected training with adjusted hyperparameters, up to maxAttempts.",
    )


class DesiredVersion(ApiModel):
    """What serving pods should load. The reload sidecar watches exactly this."""

    version: str = Field(pattern=VERSION_REF, description="Version the serving pods must load.")
    artifact_uri: str = Field(
        alias="artifactURI", max_length=1024, pattern=r"^s3://", description="s3://<bucket>/<model>/<version>/"
    )
    manifest_digest: str = Field(
        alias="manifestDigest",
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of the version's manifest.json; pods report it when serving.",
    )
    since: datetime | None = Field(default=None, description="When this version became the desired one.")
    reason: str | None = Field(default=None, description="Promotion, Rollback or AutoRollback.")


class CandidateVersion(ApiModel):
    """The version under verification. Serving sidecars may download it ahead of promotion, so that
    promoting it is a local load and a swap; nothing serves it until it becomes ``status.desired``."""

    version: str = Field(pattern=VERSION_REF, description="Version being verified (or verified, not yet promoted).")
    artifact_uri: str = Field(
        alias="artifactURI", max_length=1024, pattern=r"^s3://", description="s3://<bucket>/<model>/<version>/"
    )
    manifest_digest: str = Field(
        alias="manifestDigest",
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of the version's manifest.json; a prefetched copy must match it.",
    )
    canary_percent: int | None = Field(
        default=None,
        alias="canaryPercent",
        ge=0,
        le=99,
        description="Percent of requests the serving pods answer with this version (the canary stage's step); "
        "absent or 0: it answers nobody (scored in the shadow only).",
    )


class RolloutStatus(ApiModel):
    """How many serving replicas run the desired version."""

    updated: int = Field(default=0, ge=0, description="Replicas serving the desired digest.")
    total: int = Field(default=0, ge=0, description="Replicas of the serving Deployment.")
    summary: str = Field(default="", description="updated/total, for the printer column.")
    started_at: datetime | None = Field(
        default=None, alias="startedAt", description="When the serving pods were told to load the desired version."
    )
    completed_at: datetime | None = Field(
        default=None, alias="completedAt", description="When every replica served it; null while rolling out."
    )


class QuarantinedObject(ApiModel):
    """A feedback object that is not counted (nor trained on): malformed or oversized."""

    key: str = Field(max_length=1024, description="Object key in the bucket.")
    reason: str = Field(max_length=1024, description="Why it is not counted.")
    at: datetime | None = Field(default=None, description="When the operator found it.")


MAX_QUARANTINED = 20


class FeedbackStatus(ApiModel):
    """Feedback counted since the last training, and what the counting has seen (see modelloop.decide.feedback)."""

    cursor: str = Field(
        default="", description="Highest feedback key counted: the feedback bound of the next training."
    )
    seen_through: datetime | None = Field(
        default=None,
        alias="seenThrough",
        description="Every feedback object uploaded by then (the object store's clock) has been counted or quarantined.",
    )
    recent_keys: list[str] = Field(
        default_factory=list,
        alias="recentKeys",
        max_length=5000,
        description="Keys counted that were uploaded after seenThrough, so they are not counted twice.",
    )
    quarantined: list[QuarantinedObject] = Field(
        default_factory=list,
        max_length=MAX_QUARANTINED,
        description=f"The last {MAX_QUARANTINED} feedback objects skipped as malformed or oversized;"
        " fix or delete them (they are not read again).",
    )
    quarantined_total: int = Field(
        default=0, alias="quarantinedTotal", ge=0, description="Feedback objects skipped since the policy was created."
    )
    pending_corrections: int = Field(
        default=0,
        alias="pendingCorrections",
        ge=0,
        description="Corrections since the last training: what the feedback trigger counts.",
    )
    pending_reviews: int = Field(
        default=0,
        alias="pendingReviews",
        ge=0,
        description="Reviews (confirmations and corrections) since the last training.",
    )
    last_counted_at: datetime | None = Field(
        default=None, alias="lastCountedAt", description="When the operator last listed new feedback in the bucket."
    )


class LiveAccuracy(ApiModel):
    """A version's accuracy as measured by reviews of its live answers."""

    version: str | None = Field(default=None, description="The version measured.")
    reviews: int = Field(default=0, ge=0, description="Reviewed predictions of that version while it was active.")
    correct: int = Field(default=0, ge=0, description="Of those, the ones reviewers confirmed.")
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="correct / reviews (0-1); what autoRollback judges."
    )


class ShadowStatus(ApiModel):
    """The paired review tally of the candidate scored in the shadow beside the active version."""

    version: str | None = Field(default=None, description="The candidate being tallied (status.candidate).")
    active_version: str | None = Field(
        default=None, alias="activeVersion", description="The active version it is compared with."
    )
    since: datetime | None = Field(default=None, description="When tallying this candidate began.")
    both_right: int = Field(default=0, alias="bothRight", ge=0, description="Reviews that found both models right.")
    only_active: int = Field(
        default=0, alias="onlyActive", ge=0, description="Reviews that found only the active version right."
    )
    only_candidate: int = Field(
        default=0, alias="onlyCandidate", ge=0, description="Reviews that found only the candidate right."
    )
    both_wrong: int = Field(default=0, alias="bothWrong", ge=0, description="Reviews that found both models wrong.")
    verdict: str | None = Field(
        default=None, description="The paired test's last verdict: Promote, Reject or Collect (when the stage gates)."
    )
    message: str | None = Field(default=None, max_length=2048, description="Why, with the live accuracies.")


class CanaryStatus(ApiModel):
    """The canary stage of a candidate: its step, and the reviews of each version's own answers in that step."""

    version: str | None = Field(default=None, description="The candidate in the canary stage.")
    active_version: str | None = Field(
        default=None, alias="activeVersion", description="The active version answering the other requests."
    )
    step: int = Field(default=0, ge=0, description="Index into spec.rollout.canary.steps of the current step.")
    percent: int = Field(
        default=0, ge=0, le=99, description="Percent of requests the candidate answers now (0 once decided)."
    )
    step_started_at: datetime | None = Field(
        default=None,
        alias="stepStartedAt",
        description="When the current step began (maxStepDuration counts from here).",
    )
    candidate_reviews: int = Field(
        default=0, alias="candidateReviews", ge=0, description="Reviews in this step of answers the candidate gave."
    )
    candidate_correct: int = Field(
        default=0, alias="candidateCorrect", ge=0, description="Of those, the ones the reviewer confirmed."
    )
    active_reviews: int = Field(
        default=0, alias="activeReviews", ge=0, description="Reviews in this step of answers the active version gave."
    )
    active_correct: int = Field(
        default=0, alias="activeCorrect", ge=0, description="Of those, the ones the reviewer confirmed."
    )
    verdict: str | None = Field(
        default=None, description="The last decision: Collect, Step, Promote or Reject (decide/canary.py)."
    )
    reason: str | None = Field(default=None, max_length=128, description="The decision's reason, CamelCase.")
    message: str | None = Field(default=None, max_length=2048, description="Why, with both live accuracies.")


class HandledRequests(ApiModel):
    """Annotation values already acted on, so each is handled once (metadata is never edited)."""

    retrain_now: str | None = Field(
        default=None, alias="retrainNow", description="Last modelloop.dev/retrain-now value acted on."
    )
    rollback_to: str | None = Field(
        default=None, alias="rollbackTo", description="Last modelloop.dev/rollback-to value acted on (or refused)."
    )


class RetrainPolicyStatus(ApiModel):
    """Versions (active, previous, desired), rollout progress, pending feedback and conditions."""

    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="metadata.generation this status reflects."
    )
    active_version: str | None = Field(default=None, alias="activeVersion", description="Version serving traffic.")
    previous_version: str | None = Field(
        default=None,
        alias="previousVersion",
        description="Version served before; `rollback-to: previous` returns to it.",
    )
    latest_version: str | None = Field(
        default=None, alias="latestVersion", description="Highest version number created."
    )
    training_version: str | None = Field(
        default=None, alias="trainingVersion", description="The version in flight, if any."
    )
    desired: DesiredVersion | None = None
    candidate: CandidateVersion | None = Field(
        default=None,
        description="The version under verification; serving sidecars may download it ahead of promotion."
        " Cleared once it is promoted, rejected or failed.",
    )
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)
    shadow: ShadowStatus | None = Field(
        default=None,
        description="The candidate's paired review tally: reviews of requests both models answered (the active "
        "one to the client, the candidate in the shadow). Absent while no candidate is scored.",
    )
    canary: CanaryStatus | None = Field(
        default=None,
        description="The candidate's canary stage: its step and each version's reviewed live accuracy in it. "
        "Kept after the decision as its evidence; absent until a candidate enters the stage.",
    )
    feedback: FeedbackStatus = Field(default_factory=FeedbackStatus)
    live_accuracy: LiveAccuracy = Field(
        default_factory=LiveAccuracy, alias="liveAccuracy", description="Accuracy of the active version from reviews."
    )
    previous_live_accuracy: LiveAccuracy | None = Field(
        default=None,
        alias="previousLiveAccuracy",
        description="The previous version's live accuracy over the time it served, kept when it was replaced: "
        "what autoRollback compares the active version with.",
    )
    last_training_time: datetime | None = Field(
        default=None,
        alias="lastTrainingTime",
        description="When the last training started (minInterval counts from here).",
    )
    training_starts: list[datetime] = Field(
        default_factory=list,
        alias="trainingStarts",
        max_length=MAX_TRAININGS_PER_DAY,
        description="When the trainings of the last 24 h started: what triggers.maxTrainingsPerDay counts.",
    )
    last_schedule_time: datetime | None = Field(
        default=None, alias="lastScheduleTime", description="Last cron fire time of triggers.schedule handled."
    )
    handled: HandledRequests = Field(default_factory=HandledRequests, description="Annotation values already acted on.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Ready (the summary), Training, FeedbackReadable, RolloutComplete, RolledBack, Kubernetes-style.",
    )
    kopf: dict[str, Any] | None = Field(default=None, description="kopf's own bookkeeping.")
