"""What the operator cannot act on is visible: a condition, an Event and a non-empty `kubectl get rp` row.

The operator is the real process against the real API server; the errors are real too (a host name
that does not resolve, a Secret that does not exist yet).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    POLICY,
    Operator,
    complete_job,
    create_fixtures,
    create_policy,
    create_s3_secret,
    fake_training,
    get_policy,
    job_exists,
    phase,
    policy_body,
    versions,
)

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UNRESOLVABLE = "minio.does-not-resolve.invalid:9000"


def conditions(api: client.ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    return {x["type"]: x for x in (get_policy(api, ns).get("status") or {}).get("conditions", [])}


def warnings(api: client.ApiClient, ns: str, reason: str) -> list[client.CoreV1Event]:
    return [
        e
        for e in client.CoreV1Api(api).list_namespaced_event(ns).items
        if e.reason == reason and e.type == "Warning" and e.involved_object.kind == c.RETRAINPOLICY_KIND
    ]


def test_unresolvable_storage_endpoint_is_a_condition_an_event_and_a_row(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    create_s3_secret(api, minio, ns)
    body = policy_body(minio, bucket)
    body["spec"]["storage"]["endpoint"] = UNRESOLVABLE
    create_policy(api, body, ns)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:
        wait_for(
            lambda: conditions(api, ns).get("FeedbackReadable", {}).get("reason") == "StorageUnreachable"
            and bool(warnings(api, ns, "StorageUnreachable")),
            60, "FeedbackReadable=False with a Warning Event", op.proc,
        )  # fmt: skip
        conds = conditions(api, ns)
        readable = conds["FeedbackReadable"]
        assert readable["status"] == "False"
        assert UNRESOLVABLE in readable["message"] and "does not resolve" in readable["message"]
        assert "retrying in 5s" in readable["message"], "the retry is the policy's checkIntervalSeconds"
        assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "StorageUnreachable")
        (event,) = warnings(api, ns, "StorageUnreachable")
        assert event.involved_object.name == POLICY and "does not resolve" in event.message

        row = control_plane.kubectl("get", "rp", POLICY, "-n", ns, "-o", "wide", "--no-headers").stdout.split()
        assert "False" in row and "StorageUnreachable" in row, row
        assert op.proc.alive()
    finally:
        op.proc.stop()


def test_missing_secret_is_reported_then_healed_without_a_spec_change(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    create_policy(api, policy_body(minio, bucket), ns)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:
        wait_for(
            lambda: bool(warnings(api, ns, "SecretNotFound")) and "FeedbackReadable" in conditions(api, ns),
            60, "a SecretNotFound Warning Event and the condition (the Event goes out before the status write)",
            op.proc,
        )  # fmt: skip
        readable = conditions(api, ns)["FeedbackReadable"]
        assert (readable["status"], readable["reason"]) == ("False", "SecretNotFound")
        assert f"Secret {ns}/s3 not found" in readable["message"] and "retrying in" in readable["message"]

        create_s3_secret(api, minio, ns)
        wait_for(
            lambda: conditions(api, ns).get("FeedbackReadable", {}).get("status") == "True",
            60, "FeedbackReadable=True once the Secret exists", op.proc,
        )  # fmt: skip
        assert conditions(api, ns)["Ready"]["reason"] != "SecretNotFound"
        assert len(warnings(api, ns, "SecretNotFound")) == 1, "an Event per transition, not per failed pass"
    finally:
        op.proc.stop()


def test_a_missing_verifier_secret_holds_verification_visibly_until_it_exists(
    minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, operator: Operator, tmp_path: Path
) -> None:
    ns, store = namespace, minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(minio, bucket)
    body["spec"]["storage"]["verifierCredentials"] = {"secretName": "verifier-s3"}
    create_policy(api, body, ns)
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job digits-v1-train", operator.proc)
    fake_training(store, "v1", None, tmp_path)
    complete_job(api, ns, "digits-v1-train")

    def version_conditions() -> dict[str, dict[str, Any]]:
        return {x["type"]: x for x in (versions(api, ns)["v1"].get("status") or {}).get("conditions", [])}

    def version_warnings() -> list[client.CoreV1Event]:
        return [
            e
            for e in client.CoreV1Api(api).list_namespaced_event(ns).items
            if e.reason == "VerifierCredentialsInvalid"
            and e.type == "Warning"
            and e.involved_object.kind == c.MODELVERSION_KIND
        ]

    wait_for(
        lambda: version_conditions().get("Verified", {}).get("reason") == "VerifierCredentialsInvalid"
        and bool(version_warnings()),
        60, "Verified=False VerifierCredentialsInvalid and a Warning Event on the version", operator.proc,
    )  # fmt: skip
    verified = version_conditions()["Verified"]
    assert verified["status"] == "False"
    assert f"Secret {ns}/verifier-s3 (spec.storage.verifierCredentials) not found" in verified["message"]
    assert phase(api, ns, "v1") == "Training" and not job_exists(api, ns, "digits-v1-verify")

    client.CoreV1Api(api).create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "verifier-s3"},
            "data": {k: base64.b64encode(b"verifier").decode() for k in ("accessKey", "secretKey")},
        },
    )
    wait_for(lambda: job_exists(api, ns, "digits-v1-verify"), 60, "the verification Job once the Secret exists")
    job = client.BatchV1Api(api).read_namespaced_job("digits-v1-verify", ns)
    refs = {e.name: e.value_from.secret_key_ref.name for e in job.spec.template.spec.containers[0].env if e.value_from}
    assert refs[c.ENV_ACCESS_KEY] == refs[c.ENV_SECRET_KEY] == "verifier-s3"
    assert phase(api, ns, "v1") == "Verifying"
    assert len(version_warnings()) == 1, "an Event per transition, not per pass"
