"""spec.training.podTemplate reaches the training (Indexed, distributed) and verification pods, and the
API server and the Job controller accept what the operator builds from it.

The Job controller runs here (no kubelet): it creates the pods, so a field the pod admission refuses
(an unknown PriorityClass or ServiceAccount, a bad volume) would show as missing pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    Operator,
    complete_job,
    create_fixtures,
    create_policy,
    fake_training,
    job_exists,
    policy_body,
)

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def priority_class(api: client.ApiClient, namespace: str) -> Iterator[str]:
    name = f"training-{namespace}"
    sched = client.SchedulingV1Api(api)
    sched.create_priority_class({"metadata": {"name": name}, "value": 1000, "description": "test"})
    try:
        yield name
    finally:
        sched.delete_priority_class(name)


def template(priority_class: str) -> dict[str, Any]:
    return {
        "labels": {"team": "vision"},
        "annotations": {"example.com/cost-center": "ml-42"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]
                }
            },
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": {"team": "vision"}},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            },
        },
        "priorityClassName": priority_class,
        "imagePullSecrets": [{"name": "registry"}],
        "env": [
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key", "optional": True}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumes": [
            {"name": "ca", "configMap": {"name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
        "volumeMounts": [
            {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True},
            {"name": "cache", "mountPath": "/data"},
        ],
    }


def check_pod(pod: dict[str, Any], priority_class: str, verb: str) -> None:
    """One pod (or Job pod template), as the API returns it (camelCase)."""
    meta, spec = pod["metadata"], pod["spec"]
    ctr = spec["containers"][0]
    assert meta["labels"]["team"] == "vision" and meta["labels"][c.LABEL_COMPONENT] == verb
    assert meta["annotations"]["example.com/cost-center"] == "ml-42"
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"
    ] == [{"key": "gpu", "operator": "In", "values": ["a100"]}]
    assert spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 50
    assert spec["priorityClassName"] == priority_class
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["serviceAccountName"] == "trainer"
    env = {e["name"]: e for e in ctr["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "wandb"
    assert env["NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env[c.ENV_MODEL]["value"] == "digits"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["ca"]["configMap"]["name"] == "corp-ca"
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["scratch"]["emptyDir"]["sizeLimit"] == "1Gi"
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    assert (mounts["tmp"], mounts["ca"], mounts["cache"]) == ("/tmp", "/etc/ssl/corp", "/data")


def as_json(api: client.ApiClient, obj: object) -> dict[str, Any]:
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    return data


def test_pod_template_reaches_training_workers_and_verification(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    operator: Operator,
    priority_class: str,
    tmp_path: Path,
) -> None:
    ns = namespace
    create_fixtures(api, minio, ns)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "trainer"}})
    body = policy_body(minio, bucket)
    body["spec"]["training"].update(workers=2, serviceAccountName="trainer", podTemplate=template(priority_class))
    create_policy(api, body, ns)

    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job", operator.proc)
    job = as_json(api, batch.read_namespaced_job("digits-v1-train", ns))
    assert job["spec"]["completionMode"] == "Indexed"
    check_pod(job["spec"]["template"], priority_class, "train")

    def worker_pods() -> list[dict[str, Any]]:
        pods = core.list_namespaced_pod(ns, label_selector="job-name=digits-v1-train").items
        return [as_json(api, p) for p in pods]

    wait_for(lambda: len(worker_pods()) == 2, 120, "the Job controller to create both worker pods", operator.proc)
    for pod in worker_pods():
        check_pod(pod, priority_class, "train")
        assert pod["spec"]["priority"] == 1000, "the PriorityClass was resolved by admission"

    fake_training(minio.store(bucket), "v1", None, tmp_path)
    complete_job(api, ns, "digits-v1-train")
    wait_for(lambda: job_exists(api, ns, "digits-v1-verify"), 90, "verification Job", operator.proc)
    job = as_json(api, batch.read_namespaced_job("digits-v1-verify", ns))
    assert "completionMode" not in job["spec"] or job["spec"]["completionMode"] == "NonIndexed"
    check_pod(job["spec"]["template"], priority_class, "verify")
    wait_for(
        lambda: len(core.list_namespaced_pod(ns, label_selector="job-name=digits-v1-verify").items) == 1,
        120, "the verification pod", operator.proc,
    )  # fmt: skip
    (pod,) = core.list_namespaced_pod(ns, label_selector="job-name=digits-v1-verify").items
    check_pod(as_json(api, pod), priority_class, "verify")
