"""The operator against a real API server (with the Job/Deployment/GC controllers) and a real MinIO.

No kubelet runs here: the test plays the part of the trainer (it publishes a small version with
the real artifact code and marks the Job complete through the status subresource) and of the
reload sidecars (it annotates the Deployment's real Pods). The operator runs as the same
``modelloop-operator`` process users run, and is SIGKILLed mid-training and mid-rollout to show
that a restart continues the loop without duplicating anything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    DEPLOYMENT,
    MODEL,
    POLICY,
    Operator,
    annotate_pod,
    annotate_policy,
    annotate_serving_pods,
    complete_job,
    create_fixtures,
    desired_version,
    fail_job,
    fake_training,
    get_policy,
    job_env,
    job_exists,
    jobs,
    phase,
    policy_body,
    policy_conditions,
    policy_status,
    serving_pods,
    versions,
    write_verification,
)

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


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
    # maxAttempts 1: the rejected v2 is not retried here (the retry tests below prove retries).
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket, retry={"maxAttempts": 1})
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
    wait_for(lambda: phase(api, ns, "v1") == "Promoting", 30, "v1 Promoting", proc)
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
    wait_for(lambda: phase(api, ns, "v1") == "Active", 30, "v1 Active", proc)
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
    wait_for(lambda: phase(api, ns, "v1") == "Superseded", 30, "v1 Superseded", proc)
    assert get_policy(api, ns)["status"]["previousVersion"] == "v1"

    annotate_policy(api, ns, c.ANNOTATION_ROLLBACK_TO, "previous")
    wait_for(lambda: get_policy(api, ns)["status"]["desired"]["version"] == "v1", 60, "desired back to v1", proc)
    assert get_policy(api, ns)["status"]["desired"]["reason"] == "Rollback"
    annotate_serving_pods(api, ns, digest1)
    wait_for(lambda: get_policy(api, ns)["status"].get("activeVersion") == "v1", 60, "v1 active again", proc)
    wait_for(
        lambda: (phase(api, ns, "v1"), phase(api, ns, "v3")) == ("Active", "RolledBack"), 30, "v3 RolledBack", proc
    )

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
    assert get_policy(api, ns)["metadata"]["generation"] == 1, "nor its spec: what Git holds stays as Git wrote it"


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


def _event_counts(api: client.ApiClient, ns: str, *reasons: str) -> list[int]:
    posted = [e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items]
    return [posted.count(r) for r in reasons]


def _hyperparameters(api: client.ApiClient, ns: str, job: str) -> dict[str, Any]:
    """What the trainer of ``job`` is told (MODELLOOP_HYPERPARAMETERS)."""
    raw = job_env(api, ns, job, c.ENV_HYPERPARAMETERS)
    assert raw is not None
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def test_failed_training_is_reported_retried_once_and_then_stops(
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
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket, retry={"maxAttempts": 2})
    )
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job", operator.proc)
    fail_job(api, ns, "digits-v1-train")
    wait_for(lambda: phase(api, ns, "v1") == "Failed", 60, "v1 Failed", operator.proc)
    mv = versions(api, ns)["v1"]
    assert "BackoffLimitExceeded" in mv["status"]["message"]
    conds = {x["type"]: x for x in mv["status"]["conditions"]}
    assert (conds["Trained"]["status"], conds["Trained"]["reason"]) == ("False", "TrainingFailed")
    assert "BackoffLimitExceeded" in conds["Trained"]["message"]

    # Attempt 2 of 2: its own version, naming the failure it retries.
    wait_for(lambda: job_exists(api, ns, "digits-v2-train"), 60, "the retry's training Job", operator.proc)
    v2 = versions(api, ns)["v2"]["spec"]
    assert (v2["attempt"], v2["retryOf"]) == (2, "v1")
    assert (
        v2["trigger"].startswith("Retry: attempt 2/2 after v1 was Failed") and "BackoffLimitExceeded" in v2["trigger"]
    )
    wait_for(
        lambda: policy_conditions(api, ns).get("RetriesExhausted", {}).get("reason") == "Retrying",
        60, "RetriesExhausted=False while attempt 2 runs", operator.proc,
    )  # fmt: skip

    fail_job(api, ns, "digits-v2-train")
    wait_for(
        lambda: policy_conditions(api, ns).get("RetriesExhausted", {}).get("status") == "True",
        60, "RetriesExhausted after the last attempt failed", operator.proc,
    )  # fmt: skip
    assert "attempt 2 of 2" in policy_conditions(api, ns)["RetriesExhausted"]["message"]
    assert get_policy(api, ns)["status"].get("activeVersion") is None
    assert sorted(versions(api, ns)) == ["v1", "v2"], "after maxAttempts nothing more is trained"
    # Events are posted asynchronously, after the writes they describe.
    wait_for(
        lambda: _event_counts(api, ns, "TrainingFailed", "TrainingRetried", "RetriesExhausted") == [2, 1, 1],
        30, "one Event per failure, per retry and for the exhaustion",
    )  # fmt: skip


def test_a_rejected_training_is_retried_with_the_declared_schedule_and_stops_after_max_attempts(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    """Issue 16: a policy whose first attempt is rejected retries with the adjusted hyperparameters and stops after N."""
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(
        minio,
        bucket,
        training={
            "image": "modelloop-trainer:dev",
            "backoffLimit": 1,
            "hyperparameters": {"learningRate": 0.004, "epochs": 5},
        },
        retry={"learningRateFactor": 0.5, "extraEpochs": 3},  # maxAttempts: the default, 3
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)
    op = Operator(control_plane, ns, tmp_path / "operator.log", metrics_port=free_port()).start()
    try:
        expected = {"v1": (0.004, 5), "v2": (0.002, 8), "v3": (0.001, 11)}
        for n, (version, (lr, epochs)) in enumerate(expected.items(), start=1):
            train, verify = f"digits-{version}-train", f"digits-{version}-verify"
            wait_for(lambda: job_exists(api, ns, train), 90, f"training Job {train}", op.proc)  # noqa: B023
            hp = _hyperparameters(api, ns, train)
            assert (hp["learningRate"], hp["epochs"]) == (lr, epochs), f"attempt {n} trains with the schedule"
            mv = versions(api, ns)[version]["spec"]
            assert (mv["attempt"], mv.get("retryOf")) == (n, f"v{n - 1}" if n > 1 else None)
            assert (mv["trainingParameters"]["learningRate"], mv["trainingParameters"]["epochs"]) == (lr, epochs)
            digest = fake_training(store, version, None, tmp_path)
            complete_job(api, ns, train)
            wait_for(lambda: job_exists(api, ns, verify), 60, f"verification Job {verify}", op.proc)  # noqa: B023
            assert _hyperparameters(api, ns, verify) == hp, "the verifier is told the same hyperparameters"
            write_verification(store, version, digest, 0.95, None, None, worst_class=0.5)  # minClassAccuracy 0.9
            complete_job(api, ns, verify)
            wait_for(lambda: phase(api, ns, version) == "Rejected", 60, f"{version} Rejected", op.proc)  # noqa: B023
            if n > 1:
                assert versions(api, ns)[version]["spec"]["trigger"].startswith(
                    f"Retry: attempt {n}/3 after v{n - 1} was Rejected (rejected: classes 1 below 0.9"
                ), "the reason for the retry is recorded on the version"

        wait_for(
            lambda: policy_conditions(api, ns).get("RetriesExhausted", {}).get("status") == "True",
            60, "RetriesExhausted", op.proc,
        )  # fmt: skip
        wait_for(
            lambda: op.metric("modelloop_training_retries_exhausted", namespace=ns, policy=POLICY) == 1,
            30, "the retries-exhausted metric the alert reads", op.proc,
        )  # fmt: skip
        assert op.metric("modelloop_training_retries_total", namespace=ns, policy=POLICY, reason="Rejected") == 2
        st = get_policy(api, ns)["status"]
        assert st.get("trainingVersion") is None and st.get("activeVersion") is None
        assert sorted(versions(api, ns)) == ["v1", "v2", "v3"], "three attempts, then a person"

        # A person's retrain-now starts a new chain at attempt 1, with the spec's hyperparameters.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "fixed")
        wait_for(lambda: job_exists(api, ns, "digits-v4-train"), 60, "training Job after retrain-now", op.proc)
        mv4 = versions(api, ns)["v4"]["spec"]
        assert (mv4["attempt"], mv4.get("retryOf")) == (1, None)
        assert _hyperparameters(api, ns, "digits-v4-train")["learningRate"] == 0.004
        wait_for(
            lambda: policy_conditions(api, ns)["RetriesExhausted"]["status"] == "False",
            60,
            "RetriesExhausted cleared",
            op.proc,
        )
        assert op.metric("modelloop_training_retries_exhausted", namespace=ns, policy=POLICY) == 0
    finally:
        op.proc.stop()


def _trained_and_promoted(
    api: client.ApiClient,
    ns: str,
    store: ObjectStore,
    op: Operator,
    tmp_path: Path,
    version: str,
    holdout: float,
    baseline: str | None,
    base_acc: float | None,
) -> str:
    """Plays trainer and verifier for ``version`` until the operator names it desired; its digest."""
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-train"), 90, f"{version} training Job", op.proc)
    digest = fake_training(store, version, baseline, tmp_path)
    complete_job(api, ns, f"digits-{version}-train")
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-verify"), 60, f"{version} verification Job", op.proc)
    write_verification(store, version, digest, holdout, baseline, base_acc)
    complete_job(api, ns, f"digits-{version}-verify")
    wait_for(lambda: desired_version(api, ns) == version, 60, f"desired {version}", op.proc)
    return digest


def test_rollback_during_a_stalled_rollout_and_the_active_version_metric_after_a_restart(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    """Issue 16: rollback-to works while a rollout is stalled half-way (the runbook's advice), the
    abandoned version is never promoted again, and a restarted operator exports the active version."""
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(minio, bucket, serving={"deployment": DEPLOYMENT, "rolloutTimeout": "2s"})
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)
    op = Operator(control_plane, ns, tmp_path / "operator.log", metrics_port=free_port()).start()

    def trained_and_verified(version: str, holdout: float, baseline: str | None, base_acc: float | None) -> str:
        return _trained_and_promoted(api, ns, store, op, tmp_path, version, holdout, baseline, base_acc)

    def active_info(version: str, digest: str) -> float | None:
        return op.metric("modelloop_active_version_info", namespace=ns, policy=POLICY, version=version, digest=digest)

    try:
        digest1 = trained_and_verified("v1", 0.93, None, None)
        wait_for(lambda: len(serving_pods(api, ns)) == 2, 60, "web pods")
        annotate_serving_pods(api, ns, digest1)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v1", 60, "v1 active", op.proc)
        wait_for(lambda: active_info("v1", digest1) == 1, 30, "modelloop_active_version_info for v1", op.proc)

        # A new process knows only status: its first pass exports the active version again (before,
        # only a promotion did, so the stalled-rollout alert fired for every pod after a restart).
        op.sigkill_and_restart()
        wait_for(lambda: active_info("v1", digest1) == 1, 60, "the active version exported after a restart", op.proc)

        # v2 reaches one replica of two and stalls there.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "1")
        digest2 = trained_and_verified("v2", 0.95, "v1", 0.93)
        annotate_pod(api, ns, serving_pods(api, ns)[0].metadata.name, digest2)
        wait_for(
            lambda: (
                policy_conditions(api, ns).get("RolloutComplete", {}).get("reason") == "RolloutStalled"
                and policy_status(api, ns)["rollout"]["summary"] == "1/2"
            ),
            60, "the rollout of v2 stalled at 1/2", op.proc,
        )  # fmt: skip

        annotate_policy(api, ns, c.ANNOTATION_ROLLBACK_TO, "previous")  # the runbook's step 4
        wait_for(lambda: desired_version(api, ns) == "v1", 60, "desired back to v1", op.proc)
        wait_for(lambda: phase(api, ns, "v2") == "RolledBack", 30, "v2 RolledBack, the abandoned rollout", op.proc)
        st = policy_status(api, ns)
        assert (st["activeVersion"], st["desired"]["version"], st["desired"]["reason"]) == ("v1", "v1", "Rollback")
        assert st["desired"]["manifestDigest"] == digest1, "the sidecars are told to load v1 again"
        conds = policy_conditions(api, ns)
        assert (conds["RolloutComplete"]["status"], conds["RolloutComplete"]["reason"]) == ("True", "RolloutAbandoned")
        assert (conds["RolledBack"]["status"], conds["RolledBack"]["reason"]) == ("True", "Rollback")
        assert "abandoning the rollout of v2" in conds["RolledBack"]["message"]
        assert "rollout abandoned at 1/2 replicas" in versions(api, ns)["v2"]["status"]["message"]
        assert active_info("v1", digest1) == 1 and active_info("v2", digest2) is None

        # The state machine goes on: v3 is promoted, and the abandoned v2 is never picked again.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "2")
        digest3 = trained_and_verified("v3", 0.95, "v1", 0.93)
        annotate_serving_pods(api, ns, digest3)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v3", 60, "v3 active", op.proc)
        wait_for(
            lambda: (phase(api, ns, "v1"), phase(api, ns, "v2")) == ("Superseded", "RolledBack"),
            30,
            "v1 Superseded",
            op.proc,
        )
        wait_for(lambda: active_info("v3", digest3) == 1, 30, "v3 exported as active", op.proc)
        assert active_info("v1", digest1) is None, "the retired version's series is removed"
        wait_for(lambda: _event_counts(api, ns, "RolledBack", "Promoted") == [1, 2], 30, "the Events, once each")
    finally:
        op.proc.stop()


def test_automatic_rollback_abandons_a_stalled_promotion_and_retires_the_live_accuracy_series(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    """Issue 16: automatic rollback acts while a rollout is stalled (it used to wait for the rollout to
    finish, which a stalled one never does); the rolled-back version's live-accuracy series goes away."""
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(
        minio,
        bucket,
        serving={"deployment": DEPLOYMENT, "rolloutTimeout": "2s"},
        autoRollback={"enabled": True, "minReviews": 3, "minLiveAccuracy": 0.8},
        # reviews here judge v2; they must not start a training on their own
        triggers={"checkIntervalSeconds": 5, "feedback": {"minSamples": 1000, "minInterval": "0s"}},
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)
    op = Operator(control_plane, ns, tmp_path / "operator.log", metrics_port=free_port()).start()

    def live(version: str) -> float | None:
        return op.metric("modelloop_live_accuracy", namespace=ns, policy=POLICY, version=version)

    try:
        digest1 = _trained_and_promoted(api, ns, store, op, tmp_path, "v1", 0.93, None, None)
        wait_for(lambda: len(serving_pods(api, ns)) == 2, 60, "web pods")
        annotate_serving_pods(api, ns, digest1)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v1", 60, "v1 active", op.proc)
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "1")
        digest2 = _trained_and_promoted(api, ns, store, op, tmp_path, "v2", 0.95, "v1", 0.93)
        annotate_serving_pods(api, ns, digest2)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v2", 60, "v2 active", op.proc)

        # v3's rollout stalls at 0/2 ...
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "2")
        _trained_and_promoted(api, ns, store, op, tmp_path, "v3", 0.96, "v2", 0.95)
        wait_for(
            lambda: policy_conditions(api, ns).get("RolloutComplete", {}).get("reason") == "RolloutStalled",
            60, "the rollout of v3 stalled", op.proc,
        )  # fmt: skip
        # ... while reviewers find the active v2 wrong 3 times out of 3 (floor 0.8 over >= 3 reviews).
        now = datetime.now(UTC)
        recs = [
            FeedbackRecord(id=f"r{i}", version="v2", input=[0.0], predicted=1, label=2, reviewed_at=now)
            for i in range(3)
        ]
        store.put_bytes(batch_key(MODEL), encode_batch(recs))
        wait_for(lambda: desired_version(api, ns) == "v1", 60, "automatic rollback to v1 during the stall", op.proc)
        st = policy_status(api, ns)
        assert (st["desired"]["reason"], st["activeVersion"]) == ("AutoRollback", "v2")
        wait_for(lambda: phase(api, ns, "v3") == "RolledBack", 30, "v3 RolledBack: never picked again", op.proc)
        rolled = policy_conditions(api, ns)["RolledBack"]
        assert (rolled["status"], rolled["reason"]) == ("Unknown", "AutoRollback")
        assert "abandoning the rollout of v3" in rolled["message"]
        assert live("v2") == 0.0

        annotate_serving_pods(api, ns, digest1)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v1", 60, "v1 active again", op.proc)
        wait_for(
            lambda: (phase(api, ns, "v1"), phase(api, ns, "v2")) == ("Active", "RolledBack"),
            30,
            "v2 RolledBack",
            op.proc,
        )
        wait_for(lambda: live("v2") is None, 30, "v2's live-accuracy series removed once it is retired", op.proc)
        assert op.metric("modelloop_rollbacks_total", namespace=ns, policy=POLICY, reason="auto") == 1
        wait_for(
            lambda: _event_counts(api, ns, "AutoRollingBack", "AutoRolledBack") == [1, 1], 30, "the Events, once each"
        )
    finally:
        op.proc.stop()
