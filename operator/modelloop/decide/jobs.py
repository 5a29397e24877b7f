"""The training and verification Jobs (and the rendezvous Service) a ModelVersion needs.

Names are deterministic (``<policy>-<version>-train|verify``) so a retried or restarted
handler finds the Job it already created (409 = done). Credentials reach the pod only as
secretKeyRef (the verifier's, where the policy names them, for the verification Job); the trainer
gets no Kubernetes API access (no token mounted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from modelloop.api import constants as c
from modelloop.api.podtemplate import PodTemplate
from modelloop.api.retrainpolicy import CredentialsRef, Hyperparameters, RetrainPolicySpec

Verb = Literal["train", "verify"]
TORCHRUN_PORT = 29500
CA_VOLUME = "modelloop-storage-ca"  # spec.storage.tls.caBundle, mounted read-only at S3_CA_DIR


def job_name(policy: str, version: str, verb: Verb) -> str:
    return f"{policy}-{version}-{verb}"


def labels(policy: str, model: str, version: str, verb: Verb) -> dict[str, str]:
    return {
        c.LABEL_POLICY: policy,
        c.LABEL_MODEL: model,
        c.LABEL_VERSION: version,
        c.LABEL_COMPONENT: verb,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }


def credentials_for(spec: RetrainPolicySpec, verb: Verb) -> CredentialsRef:
    """The verifier identity, where the policy names one, writes the results a version is judged on."""
    if verb == "verify" and spec.storage.verifier_credentials is not None:
        return spec.storage.verifier_credentials
    return spec.storage.trainer_credentials


def _env(
    spec: RetrainPolicySpec,
    version: str,
    hyperparameters: Hyperparameters,
    extra: dict[str, str],
    creds: CredentialsRef,
) -> list[dict[str, Any]]:
    plain = {
        c.ENV_MODEL: spec.model,
        c.ENV_VERSION: version,
        c.ENV_BUCKET: spec.storage.bucket,
        c.ENV_S3_ENDPOINT: spec.storage.endpoint,
        c.ENV_S3_SECURE: "true" if spec.storage.use_tls else "false",
        c.ENV_DATASET: spec.dataset.path,
        c.ENV_PLUGIN: spec.training.plugin,
        c.ENV_HYPERPARAMETERS: json.dumps(hyperparameters.model_dump(by_alias=True, exclude_none=True), sort_keys=True),
        **({c.ENV_S3_REGION: spec.storage.region} if spec.storage.region else {}),
        **({c.ENV_S3_CA_FILE: f"{c.S3_CA_DIR}/{spec.storage.ca_bundle.key}"} if spec.storage.ca_bundle else {}),
        **extra,
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    for name, key in ((c.ENV_ACCESS_KEY, creds.access_key_key), (c.ENV_SECRET_KEY, creds.secret_key_key)):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": creds.secret_name, "key": key}}})
    return env


def _resources(spec: RetrainPolicySpec, verb: Verb) -> dict[str, Any]:
    res = spec.training.resources if verb == "train" else spec.verification.resources
    requests = dict(res.requests)
    limits = dict(res.limits)
    gpus = spec.training.gpus_per_worker
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
        requests["nvidia.com/gpu"] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _dump(items: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [x.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for x in items]


def _pod_metadata(own: dict[str, str], template: PodTemplate) -> dict[str, Any]:
    """The operator's labels win: the CRD refuses the reserved keys, this keeps a stale object from selecting wrong."""
    meta: dict[str, Any] = {"labels": {**template.labels, **own}}
    if template.annotations:
        meta["annotations"] = dict(template.annotations)
    return meta


def _apply_template(pod_spec: dict[str, Any], template: PodTemplate) -> None:
    if template.affinity is not None:
        pod_spec["affinity"] = template.affinity.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _dump(template.image_pull_secrets)


def build_job(
    *,
    policy: str,
    spec: RetrainPolicySpec,
    version: str,
    verb: Verb,
    parent_version: str | None,
    active_version: str | None,
    feedback_through: str,
    hyperparameters: Hyperparameters | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job body (owner reference added by the caller with kopf.adopt).

    ``hyperparameters``: a retry's adjusted ones, as its ModelVersion records them; else the spec's.
    """
    name = job_name(policy, version, verb)
    lbl = labels(policy, spec.model, version, verb)
    t = spec.training
    workers = t.workers if verb == "train" else 1
    extra = {c.ENV_PARENT_VERSION: parent_version or "", c.ENV_FEEDBACK_THROUGH: feedback_through}
    if verb == "verify":
        extra[c.ENV_ACTIVE_VERSION] = active_version or ""
        extra[c.ENV_GATES] = json.dumps(spec.verification.gates.model_dump(by_alias=True), sort_keys=True)
    command = [*t.command, verb, *t.args]
    if workers > 1:
        nproc = str(t.gpus_per_worker or 1)
        command = [
            "torchrun",
            f"--nnodes={workers}",
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--nproc-per-node={nproc}",
            f"--master-addr={name}-0.{name}",
            f"--master-port={TORCHRUN_PORT}",
            "--no-python",
            *command,
        ]
    container: dict[str, Any] = {
        "name": "trainer",
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "command": command,
        "env": _env(spec, version, hyperparameters or t.hyperparameters, extra, credentials_for(spec, verb))
        + _dump(t.pod_template.env),
        "resources": _resources(spec, verb),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *_dump(t.pod_template.volume_mounts)],
    }
    if workers > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": TORCHRUN_PORT}]
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *_dump(t.pod_template.volumes)],
    }
    if (bundle := spec.storage.ca_bundle) is not None:
        pod_spec["volumes"].append(
            {
                "name": CA_VOLUME,
                "configMap": {"name": bundle.config_map, "items": [{"key": bundle.key, "path": bundle.key}]},
            }
        )
        container["volumeMounts"].append({"name": CA_VOLUME, "mountPath": c.S3_CA_DIR, "readOnly": True})
    if workers > 1:
        pod_spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        pod_spec["subdomain"] = name
    if t.node_selector:
        pod_spec["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod_spec["tolerations"] = [x.model_dump(by_alias=True, exclude_none=True) for x in t.tolerations]
    if t.service_account_name:
        pod_spec["serviceAccountName"] = t.service_account_name
    _apply_template(pod_spec, t.pod_template)
    job_spec: dict[str, Any] = {
        "backoffLimit": t.backoff_limit if verb == "train" else 1,
        "template": {"metadata": _pod_metadata(lbl, t.pod_template), "spec": pod_spec},
        # Exit code 2 is a usage/config error from the trainer: retrying cannot fix it.
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
    }
    deadline = t.active_deadline_seconds if verb == "train" else spec.verification.active_deadline_seconds
    if deadline:
        job_spec["activeDeadlineSeconds"] = deadline
    if workers > 1:
        job_spec.update(completionMode="Indexed", completions=workers, parallelism=workers)
    job_labels = dict(lbl)
    if t.queue_name:
        # Created suspended: Kueue unsuspends it on admission (and suspends it to preempt). Without
        # Kueue's webhook nothing else would stop the Job from starting before it is admitted.
        job_labels[c.KUEUE_LABEL_QUEUE_NAME] = t.queue_name
        if t.workload_priority_class:
            job_labels[c.KUEUE_LABEL_PRIORITY_CLASS] = t.workload_priority_class
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": job_labels},
        "spec": job_spec,
    }


def build_rendezvous_service(policy: str, spec: RetrainPolicySpec, version: str) -> dict[str, Any]:
    """Headless Service giving each worker of an Indexed Job a stable DNS name for torchrun."""
    name = job_name(policy, version, "train")
    lbl = labels(policy, spec.model, version, "train")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": lbl},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_POLICY: policy, c.LABEL_VERSION: version, c.LABEL_COMPONENT: "train"},
            "ports": [{"name": "rendezvous", "port": TORCHRUN_PORT}],
        },
    }


def job_outcome(job: dict[str, Any]) -> tuple[str, str]:
    """("Complete" | "Failed" | "Running", reason/message) from the Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "Complete", ""
        if cond.get("type") == "Failed":
            reason = cond.get("reason") or "Failed"
            return "Failed", f"{reason}: {cond.get('message') or 'the Job failed'}"
    return "Running", ""
