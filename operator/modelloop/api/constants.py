"""Names that other parts, users and acceptance checks rely on. Change them only with a migration."""

from typing import Final

GROUP: Final = "modelloop.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "modelloop"

RETRAINPOLICY_KIND: Final = "RetrainPolicy"
RETRAINPOLICY_PLURAL: Final = "retrainpolicies"
RETRAINPOLICY_SINGULAR: Final = "retrainpolicy"
RETRAINPOLICY_SHORT: Final = "rp"

MODELVERSION_KIND: Final = "ModelVersion"
MODELVERSION_PLURAL: Final = "modelversions"
MODELVERSION_SINGULAR: Final = "modelversion"
MODELVERSION_SHORT: Final = "mv"

# Annotations a user sets on a RetrainPolicy. The operator never edits them; what it has done
# with a value is remembered in the policy's status.
ANNOTATION_RETRAIN_NOW: Final = f"{GROUP}/retrain-now"
ANNOTATION_ROLLBACK_TO: Final = f"{GROUP}/rollback-to"
ROLLBACK_PREVIOUS: Final = "previous"

# Set by the policy pass on a ModelVersion it owns: its rollout decision about that version (phase,
# message, promotedAt as JSON), which the ModelVersion handler, the only writer of its status, copies there.
ANNOTATION_PHASE_DECISION: Final = f"{GROUP}/phase-decision"

# Set by the reload sidecar on its own Pod: what this replica serves right now.
REVIEW_AUDIENCE: Final = "modelloop"
"""Reviews carry a bearer token minted for this audience: ``kubectl create token SA --audience modelloop``."""
REVIEW_SUBRESOURCE: Final = "feedback"
"""RBAC decides who may review a policy's model: ``create`` on ``retrainpolicies/feedback``."""
ANNOTATION_SERVING_VERSION: Final = f"{GROUP}/serving-version"
ANNOTATION_SERVING_DIGEST: Final = f"{GROUP}/serving-digest"
# Set by the reload sidecar: the manifest digest of status.candidate it holds on disk, verified.
ANNOTATION_PREFETCHED_DIGEST: Final = f"{GROUP}/prefetched-digest"

# Labels the operator puts on what it creates.
LABEL_MODEL: Final = f"{GROUP}/model"
LABEL_POLICY: Final = f"{GROUP}/policy"
LABEL_VERSION: Final = f"{GROUP}/version"
LABEL_COMPONENT: Final = f"{GROUP}/component"  # "train" | "verify"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# Kueue's (sigs.k8s.io/kueue): the LocalQueue a Job is submitted to, its WorkloadPriorityClass, and
# the label Kueue puts on the Workload it creates for a Job (the Job's UID).
KUEUE_LABEL_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"
KUEUE_LABEL_PRIORITY_CLASS: Final = "kueue.x-k8s.io/priority-class"
KUEUE_LABEL_JOB_UID: Final = "kueue.x-k8s.io/job-uid"
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta2"
KUEUE_WORKLOAD_PLURAL: Final = "workloads"
MANAGED_BY: Final = "modelloop"

# Environment the operator sets on training and verification pods (the trainer's contract).
ENV_MODEL: Final = "MODELLOOP_MODEL"
ENV_VERSION: Final = "MODELLOOP_VERSION"
ENV_PARENT_VERSION: Final = "MODELLOOP_PARENT_VERSION"  # empty: train from scratch
ENV_ACTIVE_VERSION: Final = "MODELLOOP_ACTIVE_VERSION"  # verify: the version to beat, may be empty
ENV_BUCKET: Final = "MODELLOOP_BUCKET"
ENV_S3_ENDPOINT: Final = "MODELLOOP_S3_ENDPOINT"  # host:port
ENV_S3_SECURE: Final = "MODELLOOP_S3_SECURE"  # "true" | "false"
ENV_S3_REGION: Final = "MODELLOOP_S3_REGION"
ENV_S3_CA_FILE: Final = "MODELLOOP_S3_CA_FILE"  # PEM CA bundle to verify the endpoint with (TLS only)
S3_CA_DIR: Final = "/etc/modelloop/storage-ca"  # where Jobs mount spec.storage.tls.caBundle
ENV_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"  # from a Secret, never a literal
ENV_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # from a Secret, never a literal
ENV_DATASET: Final = "MODELLOOP_DATASET"  # prefix in the bucket of the base dataset
ENV_PLUGIN: Final = "MODELLOOP_PLUGIN"  # "package.module:Class" implementing the model plug-in
ENV_HYPERPARAMETERS: Final = "MODELLOOP_HYPERPARAMETERS"  # JSON object
ENV_FEEDBACK_THROUGH: Final = "MODELLOOP_FEEDBACK_THROUGH"  # last feedback key included, may be empty
ENV_GATES: Final = "MODELLOOP_GATES"  # verify: JSON of the policy's gates (for the probe sizes)

DEFAULT_PLUGIN: Final = "modelloop_trainer.examples.digits:DigitsPlugin"
