"""The operator reacts to watch events, not to its timers.

Every periodic interval of the operator is set to an hour, so whatever happens after the first
pass within the test's waits was driven by a watch event: a ModelVersion turning Verified (the
verifier's result) which the policy then promotes, and the rollback-to annotation. The policy has no serving
Deployment, so a promotion completes without waiting for pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    POLICY,
    Operator,
    annotate_policy,
    create_s3_secret,
    get_policy,
    policy_body,
    versions,
)

from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HOUR = "3600"


def digest(version: str) -> str:
    return "sha256:" + version.encode().hex().ljust(64, "0")


def create_version(
    crd: client.CustomObjectsApi, ns: str, bucket: str, version: str, phase: str, op: Operator | None = None
) -> None:
    """A ModelVersion as training and verification leave it (artifacts are not read by promotion).

    With a running operator, its first pass on the new object (which starts the training) is awaited
    before the test plays the verifier: only the operator writes a version's phase, so a status
    written under that pass would be overwritten by it.
    """
    body: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.MODELVERSION_KIND,
        "metadata": {"name": f"{POLICY}-{version}", "labels": {c.LABEL_POLICY: POLICY, c.LABEL_VERSION: version}},
        "spec": {"model": MODEL, "version": version, "policy": POLICY, "trigger": "test"},
    }
    crd.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, body)
    if op is not None:
        wait_for(
            lambda: (versions(crd.api_client, ns)[version].get("status") or {}).get("phase") == "Training",
            60, f"the operator to start training {version}", op.proc,
        )  # fmt: skip
    status = {
        "phase": phase,
        "artifact": {"uri": artifact_uri(bucket, MODEL, version), "manifestDigest": digest(version)},
    }
    crd.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, f"{POLICY}-{version}", {"status": status}
    )


def test_rollback_and_promotion_follow_events_with_hour_long_intervals(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    crd = client.CustomObjectsApi(api)
    create_s3_secret(api, minio, ns)
    body = policy_body(minio, bucket, serving={"rolloutTimeout": "5m"})
    crd.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)
    create_version(crd, ns, bucket, "v1", "Verified")
    op = Operator(
        control_plane,
        ns,
        tmp_path / "operator.log",
        MODELLOOP_POLICY_INTERVAL=HOUR,
        MODELLOOP_POLICY_IDLE_INTERVAL=HOUR,
        MODELLOOP_POLICY_RESYNC=HOUR,
        MODELLOOP_MODELVERSION_INTERVAL=HOUR,
    ).start()
    try:

        def status() -> dict[str, Any]:
            s: dict[str, Any] = get_policy(api, ns).get("status") or {}
            return s

        wait_for(lambda: status().get("activeVersion") == "v1", 60, "v1 promoted by the first pass", op.proc)
        # The verifier's result on a new version is the cue for a promotion.
        create_version(crd, ns, bucket, "v2", "Verified", op)
        wait_for(lambda: status().get("activeVersion") == "v2", 60, "v2 promoted after turning Verified", op.proc)
        assert status()["previousVersion"] == "v1"

        annotate_policy(api, ns, c.ANNOTATION_ROLLBACK_TO, "previous")
        wait_for(lambda: status().get("activeVersion") == "v1", 60, "rollback-to=previous acted on", op.proc)
        assert status()["desired"]["version"] == "v1"
        assert status()["desired"]["reason"] == "Rollback"
        assert status()["handled"]["rollbackTo"] == "previous"
        wait_for(
            lambda: (versions(api, ns)["v2"].get("status") or {}).get("phase") == "RolledBack",
            30,
            "v2 RolledBack",
            op.proc,
        )

        create_version(crd, ns, bucket, "v3", "Verified", op)
        wait_for(lambda: status().get("activeVersion") == "v3", 60, "v3 promoted after turning Verified", op.proc)
        assert status()["previousVersion"] == "v1"
        wait_for(
            lambda: (versions(api, ns)["v3"].get("status") or {}).get("phase") == "Active", 30, "v3 Active", op.proc
        )
        reasons = [e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items]
        assert reasons.count("Promoted") == 3 and reasons.count("RolledBack") == 1
        assert op.proc.alive()
    finally:
        op.proc.stop()
