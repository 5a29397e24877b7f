"""Uninstalling as docs/install.md#uninstall says, against a real API server (with its garbage collector),
the real operator process and a real MinIO: policies first while the operator runs, then the operator.

Also the wrong order, which people will take: with the operator gone, a deleted policy waits on
kopf's finalizer, and the documented patch frees it. The bucket keeps the model's data either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import POLICY, Operator, create_fixtures, job_exists, policy_body, versions

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def policy_or_none(api: client.ApiClient, ns: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def delete_policy(api: client.ApiClient, ns: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY)


def start_training(api: client.ApiClient, minio: MinioServer, bucket: str, ns: str, operator: Operator) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket)
    )
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 120, "training Job digits-v1-train", operator.proc)
    wait_for(
        lambda: KOPF_FINALIZER in ((policy_or_none(api, ns) or {})["metadata"].get("finalizers") or []),
        60,
        "kopf's finalizer on the policy",
        operator.proc,
    )


def test_uninstall_in_the_documented_order_and_in_the_wrong_one(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    store.put_bytes("digits/feedback/2026/01/01/batch-0001.jsonl", b"{}\n")
    operator = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:
        # 1. Policies first, while the operator runs: the policy, its ModelVersion and the Job all go.
        start_training(api, minio, bucket, ns, operator)
        delete_policy(api, ns)
        wait_for(lambda: policy_or_none(api, ns) is None, 60, "the policy to be deleted", operator.proc)
        wait_for(lambda: not versions(api, ns), 60, "its ModelVersions to be garbage-collected", operator.proc)
        wait_for(lambda: not job_exists(api, ns, "digits-v1-train"), 60, "its training Job to be collected")

        # 2. The wrong order: the operator is gone before the policy is deleted.
        start_training(api, minio, bucket, ns, operator)
    finally:
        operator.proc.stop()
    delete_policy(api, ns)
    stuck = policy_or_none(api, ns)
    assert stuck is not None and stuck["metadata"].get("deletionTimestamp"), "deletion should wait on the finalizer"
    assert stuck["metadata"]["finalizers"] == [KOPF_FINALIZER]
    # The documented way out (docs/install.md#uninstall), as a person would type it.
    control_plane.kubectl(
        "-n", ns, "patch", "rp", POLICY, "--type", "merge", "-p", json.dumps({"metadata": {"finalizers": None}})
    )
    wait_for(lambda: policy_or_none(api, ns) is None, 30, "the policy to go once its finalizer is removed")
    # Its in-flight ModelVersion is collected next; if kopf's timer finalizer holds it, the same patch frees it.
    wait_for(
        lambda: all(mv["metadata"].get("deletionTimestamp") for mv in versions(api, ns).values()),
        60,
        "the garbage collector to delete the ModelVersion",
    )
    for name, mv in versions(api, ns).items():
        assert mv["metadata"]["finalizers"] == [KOPF_FINALIZER], name
        control_plane.kubectl(
            "-n", ns, "patch", "mv", mv["metadata"]["name"], "--type", "merge", "-p", '{"metadata":{"finalizers":null}}'
        )
    wait_for(lambda: not versions(api, ns), 30, "the ModelVersions to go")

    # What is left in the bucket: the model's data, never deleted because a policy was.
    assert store.exists("digits/feedback/2026/01/01/batch-0001.jsonl")
