"""What a platform team adds to the training and verification pods: labels, scheduling, pull secrets, env, volumes.

The operator owns the rest of the pod (the trainer container, its env contract, the /tmp and
/dev/shm volumes, the labels it selects on). Names it sets itself are refused here, by the API
server, so a clash is an error at ``kubectl apply`` time and never a Job the API server refuses
later (or, worse, one that silently overrides the trainer's contract).

The shapes follow the Kubernetes core/v1 types they become, restricted to what a training pod
needs (volume sources: configMap, secret, emptyDir, persistentVolumeClaim).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, JsonValue

from . import constants as c
from .cel import rule, validations
from .common import ApiModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# [prefix/]name, as Kubernetes checks label and annotation keys.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

RESERVED_PREFIX = f"{c.GROUP}/"
RESERVED_LABELS = (c.LABEL_MANAGED_BY, "job-name", "controller-uid", "batch.kubernetes.io/")
"""Keys the operator selects on, or the Job controller sets on every pod (besides modelloop.dev/...)."""
RESERVED_ENV_PREFIX = "MODELLOOP_"
RESERVED_ENV = (c.ENV_ACCESS_KEY, c.ENV_SECRET_KEY, "JOB_COMPLETION_INDEX")
"""Set by the operator (credentials from the policy's Secret) or by the Job controller (worker index)."""
RESERVED_VOLUMES = ("tmp", "dshm")
RESERVED_MOUNT_PATHS = ("/tmp", "/dev/shm")

MAX_ITEMS = 64
Name = Annotated[str, Field(min_length=1, max_length=253)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
AnnotationValue = Annotated[str, Field(max_length=4096)]
Key = Annotated[str, Field(min_length=1, max_length=316)]


def _quoted(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


_LABEL_KEYS = validations(
    rule(
        f"self.all(k, k.matches('{QUALIFIED_NAME}') && size(k) <= 316)",
        message="label keys are [prefix/]name: a DNS subdomain prefix, a name of up to 63 alphanumerics, '-', '_', '.'",
    ),
    rule(
        f"self.all(k, !k.startsWith('{RESERVED_PREFIX}') && !({_quoted(RESERVED_LABELS)}.exists(r, k == r"
        " || r.endsWith('/') && k.startsWith(r))))",
        message=f"labels under {RESERVED_PREFIX}, {', '.join(RESERVED_LABELS)} are set by the operator or the Job"
        " controller and select the pods: choose another key",
    ),
)
_ANNOTATION_KEYS = validations(
    rule(
        f"self.all(k, k.matches('{QUALIFIED_NAME}') && size(k) <= 316)",
        message="annotation keys are [prefix/]name: a DNS subdomain prefix, a name of alphanumerics, '-', '_', '.'",
    ),
    rule(
        f"self.all(k, !k.startsWith('{RESERVED_PREFIX}'))",
        message=f"annotations under {RESERVED_PREFIX} are reserved for the operator: choose another key",
    ),
)
_LIST_MAP_NAME: dict[str, JsonValue] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


class LocalObjectReference(ApiModel):
    """A Secret of type kubernetes.io/dockerconfigjson in the policy's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")


class KeySelector(ApiModel):
    """One key of a Secret or ConfigMap in the policy's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret or ConfigMap name.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in it.")
    optional: bool | None = Field(default=None, description="Start the pod even if the object or key is missing.")


class FieldSelector(ApiModel):
    """A field of the pod itself (the downward API), e.g. metadata.name or spec.nodeName."""

    field_path: str = Field(
        alias="fieldPath", min_length=1, max_length=256, description="e.g. metadata.name, spec.nodeName, status.podIP."
    )
    api_version: str | None = Field(default=None, alias="apiVersion", max_length=32, description="Defaults to v1.")


class EnvVarSource(ApiModel):
    """Where a variable's value comes from; exactly one."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)].filter(x, x).size() == 1",
                message="valueFrom takes exactly one of secretKeyRef, configMapKeyRef, fieldRef",
            )
        )
    )

    secret_key_ref: KeySelector | None = Field(default=None, alias="secretKeyRef", description="A Secret's key.")
    config_map_key_ref: KeySelector | None = Field(
        default=None, alias="configMapKeyRef", description="A ConfigMap's key."
    )
    field_ref: FieldSelector | None = Field(default=None, alias="fieldRef", description="A field of the pod.")


class EnvVar(ApiModel):
    """An extra environment variable of the trainer container (e.g. an HTTP proxy, NCCL or wandb settings)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!(has(self.value) && has(self.valueFrom))",
                message="set value or valueFrom, not both",
                field_path=".valueFrom",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=ENV_NAME,
        description=f"Variable name; {RESERVED_ENV_PREFIX}*, {', '.join(RESERVED_ENV)} are set by the operator"
        " or the Job controller and refused.",
        json_schema_extra=validations(
            rule(
                f"!self.startsWith('{RESERVED_ENV_PREFIX}') && !({_quoted(RESERVED_ENV)}.exists(r, self == r))",
                message_expression=f"'env ' + self + ' is set by the operator (the trainer contract,"
                f" {RESERVED_ENV_PREFIX}*, and the storage credentials) or the Job controller: choose another name'",
            )
        ),
    )
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, alias="valueFrom", description="Value from a Secret, a ConfigMap or the pod's own fields."
    )


class KeyToPath(ApiModel):
    """Project one key of a Secret or ConfigMap to a file."""

    key: str = Field(min_length=1, max_length=253, description="Key in the object.")
    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[^/]",
        description="Relative file path in the volume; may not start with '/' nor contain '..'.",
        json_schema_extra=validations(rule("!self.contains('..')", message="path must not contain '..'")),
    )
    mode: int | None = Field(default=None, ge=0, le=0o777, description="File mode bits (0-0777).")


class ConfigMapVolume(ApiModel):
    """A ConfigMap's keys as files."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")
    items: list[KeyToPath] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Keys to project; all if empty."
    )
    default_mode: int | None = Field(default=None, alias="defaultMode", ge=0, le=0o777, description="File mode bits.")
    optional: bool | None = Field(default=None, description="Start the pod even if the ConfigMap is missing.")


class SecretVolume(ApiModel):
    """A Secret's keys as files (e.g. a CA bundle, a wandb key)."""

    secret_name: str = Field(
        alias="secretName", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name."
    )
    items: list[KeyToPath] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Keys to project; all if empty."
    )
    default_mode: int | None = Field(default=None, alias="defaultMode", ge=0, le=0o777, description="File mode bits.")
    optional: bool | None = Field(default=None, description="Start the pod even if the Secret is missing.")


class EmptyDirVolume(ApiModel):
    """Scratch space that lives as long as the pod."""

    medium: str | None = Field(default=None, pattern=r"^(|Memory)$", description="'' (node disk) or Memory (tmpfs).")
    size_limit: str | None = Field(
        default=None,
        alias="sizeLimit",
        max_length=64,
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$",
        description="Quantity, e.g. 20Gi.",
    )


class PersistentVolumeClaimVolume(ApiModel):
    """An existing PersistentVolumeClaim in the policy's namespace (e.g. a shared dataset cache)."""

    claim_name: str = Field(
        alias="claimName", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Claim name."
    )
    read_only: bool | None = Field(default=None, alias="readOnly", description="Mount read-only.")


class Volume(ApiModel):
    """An extra volume of the training and verification pods; mount it with volumeMounts."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "[has(self.configMap), has(self.secret), has(self.emptyDir), has(self.persistentVolumeClaim)]"
                ".filter(x, x).size() == 1",
                message="a volume takes exactly one of configMap, secret, emptyDir, persistentVolumeClaim",
            )
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description=f"Volume name; {', '.join(RESERVED_VOLUMES)} are the operator's.",
        json_schema_extra=validations(
            rule(
                f"!({_quoted(RESERVED_VOLUMES)}.exists(r, self == r))",
                message_expression="'volume name ' + self + ' is used by the operator (/tmp and /dev/shm):"
                " choose another name'",
            )
        ),
    )
    config_map: ConfigMapVolume | None = Field(default=None, alias="configMap", description="A ConfigMap as files.")
    secret: SecretVolume | None = Field(default=None, description="A Secret as files.")
    empty_dir: EmptyDirVolume | None = Field(default=None, alias="emptyDir", description="Scratch space.")
    persistent_volume_claim: PersistentVolumeClaimVolume | None = Field(
        default=None, alias="persistentVolumeClaim", description="An existing claim."
    )


class VolumeMount(ApiModel):
    """Where the trainer container sees one of the extra volumes."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="A volume of this template.")
    mount_path: str = Field(
        alias="mountPath",
        min_length=2,
        max_length=1024,
        pattern=r"^/",
        description=f"Absolute path in the container; {', '.join(RESERVED_MOUNT_PATHS)} are the operator's.",
        json_schema_extra=validations(
            rule(
                f"!({_quoted(RESERVED_MOUNT_PATHS)}.exists(r, self == r || self.startsWith(r + '/')))",
                message_expression="'mountPath ' + self + ' is inside a volume the operator mounts"
                " (/tmp, /dev/shm): choose another path'",
            )
        ),
    )
    sub_path: str | None = Field(
        default=None, alias="subPath", max_length=1024, pattern=r"^[^/]", description="Path inside the volume."
    )
    read_only: bool | None = Field(default=None, alias="readOnly", description="Mount read-only.")


class NodeSelectorRequirement(ApiModel):
    """key operator values, against node labels (or fields)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "self.operator in ['Exists', 'DoesNotExist'] ? !has(self.values) || size(self.values) == 0"
                " : has(self.values) && size(self.values) > 0",
                message="In, NotIn, Gt and Lt need values; Exists and DoesNotExist take none",
                field_path=".values",
            ),
        )
    )

    key: Key = Field(description="Label key.")
    operator: str = Field(
        pattern=r"^(In|NotIn|Exists|DoesNotExist|Gt|Lt)$", description="In, NotIn, Exists, DoesNotExist, Gt, Lt."
    )
    values: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Values to compare with."
    )


class NodeSelectorTerm(ApiModel):
    """Requirements that must all hold."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions", max_length=MAX_ITEMS, description="By node labels."
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, alias="matchFields", max_length=MAX_ITEMS, description="By node fields (metadata.name)."
    )


class NodeSelector(ApiModel):
    """Terms of which at least one must hold."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        alias="nodeSelectorTerms", min_length=1, max_length=MAX_ITEMS, description="ORed terms."
    )


class PreferredSchedulingTerm(ApiModel):
    """A node preference with a weight."""

    weight: int = Field(ge=1, le=100, description="1-100; summed per node.")
    preference: NodeSelectorTerm = Field(description="The nodes preferred.")


class NodeAffinity(ApiModel):
    """Which nodes the pods may (required) or should (preferred) run on."""

    required: NodeSelector | None = Field(
        default=None, alias="requiredDuringSchedulingIgnoredDuringExecution", description="Hard constraint."
    )
    preferred: list[PreferredSchedulingTerm] = Field(
        default_factory=list,
        alias="preferredDuringSchedulingIgnoredDuringExecution",
        max_length=MAX_ITEMS,
        description="Soft preferences.",
    )


class LabelSelectorRequirement(ApiModel):
    """key operator values, against pod labels."""

    key: Key = Field(description="Label key.")
    operator: str = Field(pattern=r"^(In|NotIn|Exists|DoesNotExist)$", description="In, NotIn, Exists, DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Values for In and NotIn."
    )


class LabelSelector(ApiModel):
    """Pods selected by labels."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, alias="matchLabels", max_length=MAX_ITEMS, description="Exact label matches."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions", max_length=MAX_ITEMS, description="Set-based requirements."
    )


class PodAffinityTerm(ApiModel):
    """Pods (by labels) in a topology domain (by node label) to run with or away from."""

    label_selector: LabelSelector | None = Field(
        default=None, alias="labelSelector", description="The other pods; none selects no pods."
    )
    namespaces: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=MAX_ITEMS, description="Their namespaces; empty: the policy's."
    )
    topology_key: str = Field(
        alias="topologyKey",
        min_length=1,
        max_length=316,
        description="Node label defining the domain, e.g. kubernetes.io/hostname.",
    )


class WeightedPodAffinityTerm(ApiModel):
    """A pod (anti-)affinity preference with a weight."""

    weight: int = Field(ge=1, le=100, description="1-100; summed per node.")
    pod_affinity_term: PodAffinityTerm = Field(alias="podAffinityTerm", description="The term.")


class PodAffinity(ApiModel):
    """Pod (anti-)affinity: hard terms and weighted preferences."""

    required: list[PodAffinityTerm] = Field(
        default_factory=list,
        alias="requiredDuringSchedulingIgnoredDuringExecution",
        max_length=MAX_ITEMS,
        description="Hard constraints.",
    )
    preferred: list[WeightedPodAffinityTerm] = Field(
        default_factory=list,
        alias="preferredDuringSchedulingIgnoredDuringExecution",
        max_length=MAX_ITEMS,
        description="Soft preferences.",
    )


class Affinity(ApiModel):
    """The Kubernetes pod affinity (core/v1 Affinity)."""

    node_affinity: NodeAffinity | None = Field(default=None, alias="nodeAffinity", description="Node constraints.")
    pod_affinity: PodAffinity | None = Field(default=None, alias="podAffinity", description="Run near these pods.")
    pod_anti_affinity: PodAffinity | None = Field(
        default=None, alias="podAntiAffinity", description="Run away from these pods."
    )


class PodTemplate(ApiModel):
    """Additions to every training and verification pod (the distributed training's workers included)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes)"
                " && self.volumes.exists(v, v.name == m.name))",
                message="every volumeMounts[].name must name one of podTemplate.volumes",
                field_path=".volumeMounts",
            ),
        )
    )

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        description=f"Pod labels (cost allocation, network policies); {RESERVED_PREFIX}*,"
        f" {', '.join(RESERVED_LABELS)} are the operator's or the Job controller's.",
        json_schema_extra=_LABEL_KEYS,
    )
    annotations: dict[str, AnnotationValue] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        description=f"Pod annotations (e.g. a service mesh opt-out); {RESERVED_PREFIX}* is reserved.",
        json_schema_extra=_ANNOTATION_KEYS,
    )
    affinity: Affinity | None = Field(default=None, description="Node and pod (anti-)affinity of the pods.")
    priority_class_name: str | None = Field(
        default=None,
        alias="priorityClassName",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PriorityClass of the pods (must exist when the Job is created).",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        alias="imagePullSecrets",
        max_length=16,
        json_schema_extra=_LIST_MAP_NAME,
        description="Secrets to pull the trainer image from a private registry.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        json_schema_extra=_LIST_MAP_NAME,
        description="Extra environment of the trainer container, after the operator's own.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=_LIST_MAP_NAME,
        description="Extra volumes of the pods.",
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        alias="volumeMounts",
        max_length=16,
        description="Where the trainer container mounts the extra volumes.",
    )
