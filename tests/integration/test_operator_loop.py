"""The operator against a real API server (with the Job/Deployment/GC controllers) and a real MinIO.

No kubelet runs here: the test plays the part of the trainer (it publishes a small version with
the real artifact code and marks the Job complete through the status subresource) and of the
reload sidecars (it annotates the Deployment's real Pods). The operator runs as the same
``modelloop-operator`` process users run, and is SIGKILLed mid-training and mid-rollout to show
that a restart continues the loop without duplicating anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    POLICY,
    Operator,
    annotate_policy,
    annotate_serving_pods,
    complete_job,
    create_fixtures,
    fake_training,
    get_policy,
    job_exists,
    jobs,
    now_iso,
    phase,
    policy_body,
    versions,
    write_verification,
)

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(control_plane, namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.proc.stop()


def test_full_loop_survives_sigkill_rejects_promotes_and_rolls_back(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    operator: Operator,
    tmp_path: Path,
) -> None:
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket)
    )
    proc = operator.proc

    # Bootstrap: v1 and its training Job appear without any feedback.
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job digits-v1-train", proc)
    assert phase(api, ns, "v1") == "Training"
    mv1 = versions(api, ns)["v1"]
    assert mv1["metadata"]["ownerReferences"][0]["name"] == POLICY
    assert mv1["metadata"]["labels"][c.LABEL_VERSION] == "v1"

    operator.sigkill_and_restart()  # mid-training
    digest1 = fake_training(store, "v1", None, tmp_path)
    wait_for(
        lambda: (versions(api, ns)["v1"].get("status") or {}).get("progress", {}).get("summary") == "epoch 3/3",
        60, "progress mirrored from progress.json", proc,
    )  # fmt: skip
    complete_job(api, ns, "digits-v1-train")
    wait_for(lambda: job_exists(api, ns, "digits-v1-verify"), 60, "verification Job", proc)
    write_verification(store, "v1", digest1, 0.93, None, None)
    complete_job(api, ns, "digits-v1-verify")
    wait_for(
        lambda: (get_policy(api, ns).get("status") or {}).get("desired", {}).get("version") == "v1",
        60,
        "desired v1",
        proc,
    )
    st = get_policy(api, ns)["status"]
    assert st["desired"]["manifestDigest"] == digest1
    assert st["desired"]["reason"] == "Promotion"
    assert phase(api, ns, "v1") == "Promoting"
    assert [g["name"] for g in versions(api, ns)["v1"]["status"]["gates"]] == [
        "validationAccuracy", "holdoutAccuracy", "beatsActive", "minClassAccuracy", "latencyP95Ms", "peakMemoryMiB", "throughputRps",
    ]  # fmt: skip

    operator.sigkill_and_restart()  # mid-rollout
    wait_for(
        lambda: len(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="app=web").items) == 2, 60, "web pods"
    )
    wait_for(
        lambda: (get_policy(api, ns)["status"].get("rollout") or {}).get("summary") == "0/2", 60, "rollout 0/2", proc
    )
    assert annotate_serving_pods(api, ns, digest1) == 2
    wait_for(lambda: get_policy(api, ns)["status"].get("activeVersion") == "v1", 60, "v1 active", proc)
    st = get_policy(api, ns)["status"]
    assert st["rollout"]["summary"] == "2/2"
    assert phase(api, ns, "v1") == "Active"
    conds = {x["type"]: x for x in st["conditions"]}
    assert conds["RolloutComplete"]["status"] == "True"
    assert conds["Ready"]["status"] == "True" and conds["FeedbackReadable"]["status"] == "True"
    assert "annotations" not in get_policy(api, ns)["metadata"] or not any(
        k.startswith("kopf") for k in get_policy(api, ns)["metadata"]["annotations"]
    ), "kopf state lives in status, never in annotations"

    # Feedback: 3 corrections >= minSamples starts v2 from v1.
    now = datetime.now(UTC)
    recs = [
        FeedbackRecord(id=str(i), version="v1", input=[0.0], predicted=1, label=2, reviewed_at=now) for i in range(3)
    ]
    store.put_bytes(batch_key(MODEL), encode_batch(recs))
    wait_for(lambda: job_exists(api, ns, "digits-v2-train"), 60, "training Job digits-v2-train after feedback", proc)
    mv2 = versions(api, ns)["v2"]
    assert mv2["spec"]["parentVersion"] == "v1"
    assert mv2["spec"]["feedbackSnapshot"]["corrections"] == 3
    digest2 = fake_training(store, "v2", "v1", tmp_path)
    complete_job(api, ns, "digits-v2-train")
    wait_for(lambda: job_exists(api, ns, "digits-v2-verify"), 60, "verification Job v2", proc)
    wait_for(
        lambda: (get_policy(api, ns)["status"].get("candidate") or {}).get("version") == "v2",
        60, "v2 named the candidate while it is verified", proc,
    )  # fmt: skip
    assert get_policy(api, ns)["status"]["candidate"]["manifestDigest"] == digest2
    write_verification(store, "v2", digest2, 0.935, "v1", 0.93)  # better, but by less than beatMargin 0.01
    complete_job(api, ns, "digits-v2-verify")
    wait_for(lambda: phase(api, ns, "v2") == "Rejected", 60, "v2 rejected", proc)
    wait_for(lambda: "candidate" not in get_policy(api, ns)["status"], 60, "candidate cleared after rejection", proc)
    mv2 = versions(api, ns)["v2"]
    assert "beatsActive" in mv2["status"]["message"]
    st = get_policy(api, ns)["status"]
    assert (st["activeVersion"], st["desired"]["version"]) == ("v1", "v1"), "a rejected version never touches serving"

    # A rollback to a rejected version is refused once, with the reason, and remembered.
    annotate_policy(api, ns, c.ANNOTATION_ROLLBACK_TO, "v2")
    wait_for(
        lambda: get_policy(api, ns)["status"]["handled"].get("rollbackTo") == "v2", 60, "invalid rollback handled", proc
    )
    rolled = {x["type"]: x for x in get_policy(api, ns)["status"]["conditions"]}["RolledBack"]
    assert (rolled["status"], rolled["reason"]) == ("False", "InvalidRollbackTarget")
    assert "v2 is Rejected" in rolled["message"]

    # retrain-now: v3, verified and promoted; then rollback-to=previous brings v1 back.
    annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "1")
    wait_for(lambda: job_exists(api, ns, "digits-v3-train"), 60, "training Job digits-v3-train after retrain-now", proc)
    digest3 = fake_training(store, "v3", "v1", tmp_path)
    complete_job(api, ns, "digits-v3-train")
    wait_for(lambda: job_exists(api, ns, "digits-v3-verify"), 60, "verification Job v3", proc)
    write_verification(store, "v3", digest3, 0.95, "v1", 0.93)
    complete_job(api, ns, "digits-v3-verify")
    wait_for(lambda: get_policy(api, ns)["status"]["desired"]["version"] == "v3", 60, "desired v3", proc)
    assert "candidate" not in get_policy(api, ns)["status"], "the write that promotes v3 also clears the candidate"
    annotate_serving_pods(api, ns, digest3)
    wait_for(lambda: get_policy(api, ns)["status"].get("activeVersion") == "v3", 60, "v3 active", proc)
    assert (phase(api, ns, "v1"), get_policy(api, ns)["status"]["previousVersion"]) == ("Superseded", "v1")

    annotate_policy(api, ns, c.ANNOTATION_ROLLBACK_TO, "previous")
    wait_for(lambda: get_policy(api, ns)["status"]["desired"]["version"] == "v1", 60, "desired back to v1", proc)
    assert get_policy(api, ns)["status"]["desired"]["reason"] == "Rollback"
    annotate_serving_pods(api, ns, digest1)
    wait_for(lambda: get_policy(api, ns)["status"].get("activeVersion") == "v1", 60, "v1 active again", proc)
    assert (phase(api, ns, "v1"), phase(api, ns, "v3")) == ("Active", "RolledBack")

    # Exactly one of everything despite two SIGKILLs and ~1 s reconcile passes.
    assert sorted(versions(api, ns)) == ["v1", "v2", "v3"]
    assert jobs(api, ns) == [f"digits-v{n}-{verb}" for n in (1, 2, 3) for verb in ("train", "verify")]
    reasons = [e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items]
    assert reasons.count("Promoted") == 2
    assert reasons.count("RolledBack") == 1
    assert "VerificationFailed" in reasons and "RollbackRejected" in reasons
    assert "annotations" not in get_policy(api, ns)["metadata"] or set(
        get_policy(api, ns)["metadata"]["annotations"]
    ) == {
        c.ANNOTATION_ROLLBACK_TO,
        c.ANNOTATION_RETRAIN_NOW,
    }, "the operator never writes the user's metadata"


def test_unreachable_storage_is_a_condition_not_a_crash(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    operator: Operator,
) -> None:
    ns = namespace
    create_fixtures(api, minio, ns)
    body = policy_body(minio, bucket)
    body["spec"]["storage"]["endpoint"] = "127.0.0.1:9"  # discard port: nothing listens
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)

    def readable() -> dict[str, Any] | None:
        conds = {x["type"]: x for x in (get_policy(api, ns).get("status") or {}).get("conditions", [])}
        return conds.get("FeedbackReadable")

    wait_for(lambda: (readable() or {}).get("status") == "False", 90, "FeedbackReadable=False", operator.proc)
    cond = readable()
    assert cond is not None and cond["reason"] == "StorageUnreachable"
    assert "127.0.0.1:9" in cond["message"]
    assert operator.proc.alive()


def test_failed_training_is_reported_with_the_job_reason_and_not_retried_forever(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    operator: Operator,
) -> None:
    ns = namespace
    create_fixtures(api, minio, ns)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket)
    )
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job", operator.proc)
    batch = client.BatchV1Api(api)
    wait_for(
        lambda: batch.read_namespaced_job_status("digits-v1-train", ns).status.start_time is not None, 30, "Job started"
    )
    now = now_iso()
    cond = {"status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": "BackoffLimitExceeded"}
    batch.patch_namespaced_job_status(
        "digits-v1-train",
        ns,
        {
            "status": {
                "failed": 2,
                "active": 0,
                "conditions": [
                    {"type": "FailureTarget", **cond, "message": "Job has reached the specified backoff limit"},
                    {"type": "Failed", **cond, "message": "Job has reached the specified backoff limit"},
                ],
            }
        },
    )
    wait_for(lambda: phase(api, ns, "v1") == "Failed", 60, "v1 Failed", operator.proc)
    mv = versions(api, ns)["v1"]
    assert "BackoffLimitExceeded" in mv["status"]["message"]
    conds = {x["type"]: x for x in mv["status"]["conditions"]}
    assert (conds["Trained"]["status"], conds["Trained"]["reason"]) == ("False", "TrainingFailed")
    assert "BackoffLimitExceeded" in conds["Trained"]["message"]
    reasons = [e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items]
    assert reasons.count("TrainingFailed") == 1
    wait_for(
        lambda: get_policy(api, ns)["status"].get("trainingVersion") is None,
        60,
        "policy sees v1 settled",
        operator.proc,
    )
    assert get_policy(api, ns)["status"].get("activeVersion") is None
    assert sorted(versions(api, ns)) == ["v1"], "a failed bootstrap waits for feedback or retrain-now, it does not loop"
