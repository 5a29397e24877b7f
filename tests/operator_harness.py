"""The operator under test and the parts of the cluster that do not run here (helpers, no tests).

No kubelet runs in the operator tests: the test plays the trainer (``fake_training`` publishes a
small version with the real artifact code, ``complete_job`` writes what the Job controller would),
the verifier (``write_verification``) and the reload sidecars (``annotate_serving_pods``). The
operator is the ``modelloop-operator`` process users run, so it can be SIGKILLed and restarted.
Shared by the integration loop test and the fault tests, which import it as ``operator_harness``
(``tests/`` is on ``sys.path`` through its ``conftest.py``).
"""

from __future__ import annotations

import base64
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelloop.api import constants as c
from modelloop.api.artifacts import MANIFEST_FILE, VERIFICATION_FILE, Manifest, Progress, version_key, version_number
from modelloop.clients.artifactstore import publish_version
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, http_get, wait_for

POLICY = "digits"
ALERTS_FOR = {"ModelloopRolloutStalled": "30s", "ModelloopLiveAccuracyLow": "10s"}
"""The live-alert tests' ``for:`` overrides (alerts.rules.<Name>.for): long enough to cover an
operator restart on a loaded machine, short enough to keep the tier quick."""
MODEL = "digits"
DEPLOYMENT = "web"


class Operator:
    """``modelloop-operator --standalone`` for one namespace, with 1 s reconcile timers."""

    def __init__(self, cp: ControlPlane, namespace: str, log: Path, metrics_port: int = 0, **env: str) -> None:
        exe = Path(sys.executable).parent / "modelloop-operator"
        full_env = {
            **os.environ,
            **cp.env,
            "MODELLOOP_POLICY_INTERVAL": "1",
            "MODELLOOP_MODELVERSION_INTERVAL": "1",
            **env,
        }
        argv = [exe, "--standalone", "--namespace", namespace, "--metrics-port", str(metrics_port), "--liveness", ""]
        self.metrics_port = metrics_port
        self.proc = ManagedProcess("modelloop-operator", argv, log, env=full_env)
        self.kills = 0

    def start(self) -> Operator:
        self.proc.start()
        return self

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the operator's /metrics (started with ``metrics_port``), None when absent."""
        text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def sigkill_and_restart(self) -> None:
        """A crash at an arbitrary instruction: no shutdown handler, no final status write."""
        self.proc.kill_now()
        wait_for(lambda: not self.proc.alive(), 30, "operator to die after SIGKILL")
        assert self.proc.stop() == -9, "the operator died of SIGKILL, not a clean shutdown"
        self.kills += 1
        self.proc.start()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PROMOTE_ON_VERIFICATION: dict[str, Any] = {"shadow": {"enabled": False}}
"""``spec.rollout`` of the harness's policies: a verified version is promoted at once. The shadow stage is on by
default (it holds v2 until reviews of live answers decide), but the tests built on this harness play trainer and
verifier and test what follows verification (rollout, rollback, retries, errors, metrics), with no serving replica
scoring in the shadow and no reviewer; the stages themselves are tested with reviews in test_shadow_stage.py and
test_review_decisions_live.py, which pass their own ``rollout``."""


def policy_body(minio: MinioServer, bucket: str, **spec: Any) -> dict[str, Any]:
    """A RetrainPolicy for the test namespace; ``spec`` keys replace the defaults (``rollout`` included)."""
    spec.setdefault("rollout", PROMOTE_ON_VERIFICATION)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "metadata": {"name": POLICY},
        "spec": {
            "model": MODEL,
            "storage": {
                "endpoint": minio.endpoint,
                "bucket": bucket,
                "trainerCredentials": {"secretName": "s3"},
                # TLS is the default; the shared test MinIO serves plain HTTP (minio_tls serves TLS).
                "tls": {"enabled": minio.tls is not None},
            },
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "modelloop-trainer:dev", "backoffLimit": 1},
            "triggers": {"checkIntervalSeconds": 5, "feedback": {"minSamples": 3, "minInterval": "0s"}},
            "verification": {"gates": {"minClassAccuracy": 0.9, "beatMargin": 0.01}},
            "serving": {"deployment": DEPLOYMENT, "rolloutTimeout": "5m"},
            **spec,
        },
    }


def create_policy(api: client.ApiClient, body: dict[str, Any], namespace: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.RETRAINPOLICY_PLURAL, body
    )


def create_s3_secret(api: client.ApiClient, minio: MinioServer, namespace: str) -> None:
    """The Secret ``s3`` that policies name in ``storage.trainerCredentials``."""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "s3"},
            "data": {
                "accessKey": base64.b64encode(minio.access_key.encode()).decode(),
                "secretKey": base64.b64encode(minio.secret_key.encode()).decode(),
            },
        },
    )


def create_ca_bundle(api: client.ApiClient, namespace: str, pem: bytes, name: str = "s3-ca") -> None:
    """A ConfigMap ``name`` with the PEM under ``ca.crt``, as trust-manager writes one; replaced if it exists."""
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": name}, "data": {"ca.crt": pem.decode()}}
    try:
        core.create_namespaced_config_map(namespace, body)
    except client.ApiException as e:
        if e.status != 409:
            raise
        core.replace_namespaced_config_map(name, namespace, body)


def create_fixtures(api: client.ApiClient, minio: MinioServer, namespace: str, replicas: int = 2) -> None:
    """The trainer's S3 Secret and the serving Deployment (its Pods are created, never run)."""
    create_s3_secret(api, minio, namespace)
    labels = {"app": DEPLOYMENT}
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": DEPLOYMENT},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "server", "image": "modelloop-server:dev", "command": ["modelloop-server"]}
                        ]
                    },
                },
            },
        },
    )


def get_policy(api: client.ApiClient, ns: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY
    )
    return obj


def policy_status(api: client.ApiClient, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = get_policy(api, ns).get("status") or {}
    return status


def policy_conditions(api: client.ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    """The policy's conditions by type."""
    return {x["type"]: x for x in (get_policy(api, ns).get("status") or {}).get("conditions", [])}


def desired_version(api: client.ApiClient, ns: str) -> str | None:
    return (policy_status(api, ns).get("desired") or {}).get("version")


def annotate_policy(api: client.ApiClient, ns: str, key: str, value: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY, {"metadata": {"annotations": {key: value}}}
    )


def versions(api: client.ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL)[
        "items"
    ]
    return {mv["spec"]["version"]: mv for mv in items}


def phase(api: client.ApiClient, ns: str, version: str) -> str | None:
    mv = versions(api, ns).get(version)
    return None if mv is None else (mv.get("status") or {}).get("phase")


def jobs(api: client.ApiClient, ns: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(ns).items)


def job_exists(api: client.ApiClient, ns: str, name: str) -> bool:
    return name in jobs(api, ns)


def job_env(api: client.ApiClient, ns: str, name: str, var: str) -> str | None:
    """An environment variable of the Job's first container: what the trainer/verifier was told."""
    job = client.BatchV1Api(api).read_namespaced_job(name, ns)
    for e in job.spec.template.spec.containers[0].env or []:
        if e.name == var:
            value: str | None = e.value
            return value
    return None


def complete_job(api: client.ApiClient, ns: str, name: str) -> None:
    """What the Job controller writes when the trainer pod exits 0 (no kubelet runs here)."""
    batch = client.BatchV1Api(api)
    # 120 s: after API server restarts in quick succession, client-go's relist backoff (30 s cap,
    # doubled by jitter) can keep the Job controller blind for up to a minute.
    wait_for(
        lambda: batch.read_namespaced_job_status(name, ns).status.start_time is not None, 120, f"Job {name} started"
    )
    started = batch.read_namespaced_job_status(name, ns).status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    now = max(now_iso(), started)  # the Job controller's clock: completion is never before the start
    cond = {"status": "True", "lastProbeTime": now, "lastTransitionTime": now}
    batch.patch_namespaced_job_status(
        name,
        ns,
        {
            "status": {
                "startTime": started,
                "completionTime": now,
                "succeeded": 1,
                "active": 0,
                "conditions": [{"type": "SuccessCriteriaMet", **cond}, {"type": "Complete", **cond}],
            }
        },
    )


def fake_training(store: ObjectStore, version: str, parent: str | None, tmp: Path) -> str:
    """A tiny but real version: files published with the real artifact code, manifest last."""
    d = tmp / version
    d.mkdir()
    (d / "model.safetensors").write_bytes(os.urandom(256))
    (d / "metrics.json").write_text('{"validationAccuracy": 0.95}')
    store.put_bytes(
        version_key(MODEL, version, "progress.json"),
        Progress(epoch=3, epochs=3, loss=0.1, updated_at=datetime.now(UTC)).model_dump_json(by_alias=True).encode(),
    )
    manifest = Manifest(model=MODEL, version=version, parent_version=parent, created_at=datetime.now(UTC), files=[])
    return publish_version(store, manifest, d)


def write_verification(
    store: ObjectStore,
    version: str,
    digest: str,
    holdout: float,
    baseline: str | None,
    baseline_acc: float | None,
    worst_class: float = 0.93,
) -> None:
    """The verifier's record; ``worst_class`` below the policy's minClassAccuracy fails that gate."""
    store.put_json(
        version_key(MODEL, version, VERIFICATION_FILE),
        {
            "model": MODEL,
            "version": version,
            "manifestDigest": digest,
            "baselineVersion": baseline,
            "holdoutSamples": 360,
            "validationAccuracy": 0.95,
            "holdoutAccuracy": holdout,
            "baselineHoldoutAccuracy": baseline_acc,
            "perClassAccuracy": {"0": 0.97, "1": worst_class},
            "macroF1": 0.93,
            "latencyP50Ms": 1.0,
            "latencyP95Ms": 2.0,
            "peakMemoryMiB": 200.0,
            "throughputRps": 800.0,
            "device": "cpu",
            "measuredAt": now_iso(),
        },
    )


def published_manifests(store: ObjectStore) -> list[str]:
    """The versions whose manifest (written last, so the mark of a complete version) is in the bucket."""
    prefix = f"{MODEL}/"
    found = {k[len(prefix) :].split("/", 1)[0] for k in store.list_keys(prefix) if k.endswith("/" + MANIFEST_FILE)}
    return sorted(found, key=version_number)


def serving_pods(api: client.ApiClient, ns: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={DEPLOYMENT}").items
    return pods


def annotate_pod(api: client.ApiClient, ns: str, pod: str, digest: str) -> None:
    """What a reload sidecar writes once its server answers with the version of ``digest``."""
    client.CoreV1Api(api).patch_namespaced_pod(
        pod, ns, {"metadata": {"annotations": {c.ANNOTATION_SERVING_DIGEST: digest, c.ANNOTATION_SERVING_VERSION: "x"}}}
    )


def pod_serving_digest(api: client.ApiClient, ns: str, pod: str) -> str | None:
    annotations = client.CoreV1Api(api).read_namespaced_pod(pod, ns).metadata.annotations or {}
    return annotations.get(c.ANNOTATION_SERVING_DIGEST)


def annotate_serving_pods(api: client.ApiClient, ns: str, digest: str) -> int:
    pods = serving_pods(api, ns)
    for p in pods:
        annotate_pod(api, ns, p.metadata.name, digest)
    return len(pods)


def fail_job(api: client.ApiClient, ns: str, name: str) -> None:
    """What the Job controller writes when the trainer pods exhausted the Job's backoffLimit."""
    batch = client.BatchV1Api(api)
    wait_for(lambda: batch.read_namespaced_job_status(name, ns).status.start_time is not None, 120, f"{name} started")
    now = now_iso()
    cond = {"status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": "BackoffLimitExceeded"}
    message = "Job has reached the specified backoff limit"
    batch.patch_namespaced_job_status(
        name,
        ns,
        {
            "status": {
                "failed": 2,
                "active": 0,
                "conditions": [
                    {"type": "FailureTarget", **cond, "message": message},
                    {"type": "Failed", **cond, "message": message},
                ],
            }
        },
    )
