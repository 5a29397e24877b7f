"""The shadow stage decides promotion from live reviews (issue 16), against a real API server and MinIO.

As in test_operator_loop.py the test plays trainer, verifier and reload sidecars; here it also plays
the serving replicas' reviews: feedback records that carry the candidate's shadow answer, as a
server writes them when it joins a review to a prediction it scored in the shadow
(tests/unit/test_server_shadow_scorer.py proves that join).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    Operator,
    annotate_policy,
    annotate_serving_pods,
    complete_job,
    create_fixtures,
    desired_version,
    fake_training,
    job_exists,
    phase,
    policy_body,
    policy_conditions,
    policy_status,
    serving_pods,
    write_verification,
)

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _verified(
    api: client.ApiClient, ns: str, store: ObjectStore, op: Operator, tmp: Path, version: str, base: str | None
) -> str:
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-train"), 90, f"{version} training Job", op.proc)
    digest = fake_training(store, version, base, tmp)
    complete_job(api, ns, f"digits-{version}-train")
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-verify"), 60, f"{version} verification Job", op.proc)
    write_verification(store, version, digest, 0.95, base, 0.93 if base else None)
    complete_job(api, ns, f"digits-{version}-verify")
    return digest


def _reviews(store: ObjectStore, active: str, candidate: str, cells: dict[str, int]) -> None:
    """One feedback batch of reviews labelling both models: the label is 1, ``answers`` gives (active, candidate)."""
    answers = {"both_right": (1, 1), "only_active": (1, 2), "only_candidate": (2, 1), "both_wrong": (2, 2)}
    now = datetime.now(UTC)
    recs = [
        FeedbackRecord(
            id=f"{candidate}-{cell}-{i}",
            version=active,
            input=[0.0],
            predicted=answers[cell][0],
            label=1,
            shadowVersion=candidate,
            shadowPredicted=answers[cell][1],
            reviewedAt=now,
        )
        for cell, n in cells.items()
        for i in range(n)
    ]
    store.put_bytes(batch_key(MODEL), encode_batch(recs))


def test_a_better_candidate_is_promoted_and_a_worse_one_rejected_by_the_paired_reviews(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(
        minio,
        bucket,
        triggers={"checkIntervalSeconds": 5, "feedback": {"minSamples": 100_000}},
        rollout={"shadow": {"enabled": True, "minReviews": 20, "margin": 0.02, "maxDuration": "1d"}},
        retry={"maxAttempts": 1},
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:
        # v1 has nothing to be compared with: promoted on its gates alone.
        digest1 = _verified(api, ns, store, op, tmp_path, "v1", None)
        wait_for(lambda: desired_version(api, ns) == "v1", 60, "desired v1", op.proc)
        wait_for(lambda: len(serving_pods(api, ns)) == 2, 60, "web pods")
        annotate_serving_pods(api, ns, digest1)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v1", 60, "v1 active", op.proc)

        # v2 passes its gates and is held in the shadow stage until reviews decide.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "1")
        digest2 = _verified(api, ns, store, op, tmp_path, "v2", "v1")
        wait_for(
            lambda: policy_conditions(api, ns).get("ShadowStage", {}).get("status") == "True", 60, "v2 held", op.proc
        )
        st = policy_status(api, ns)
        assert st["desired"]["version"] == "v1" and phase(api, ns, "v2") == "Verified"
        assert st["candidate"]["version"] == "v2", "the sidecars are told to score v2 in the shadow"
        assert (st["shadow"]["version"], st["shadow"]["activeVersion"], st["shadow"]["verdict"]) == (
            "v2",
            "v1",
            "Collect",
        )
        assert policy_conditions(api, ns)["ShadowStage"]["reason"] == "CollectingReviews"

        _reviews(store, "v1", "v2", {"both_right": 20, "only_candidate": 10})
        wait_for(lambda: desired_version(api, ns) == "v2", 60, "v2 promoted by its reviews", op.proc)
        st = policy_status(api, ns)
        shadow = st["shadow"]
        assert (shadow["bothRight"], shadow["onlyCandidate"], shadow["onlyActive"], shadow["bothWrong"]) == (
            20,
            10,
            0,
            0,
        )
        assert shadow["verdict"] == "Promote"
        cond = policy_conditions(api, ns)["ShadowStage"]
        assert (cond["status"], cond["reason"]) == ("False", "Better"), cond
        annotate_serving_pods(api, ns, digest2)
        wait_for(lambda: policy_status(api, ns).get("activeVersion") == "v2", 60, "v2 active", op.proc)

        # v3 is worse on the same live inputs: rejected, never desired, v2 keeps serving.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "2")
        _verified(api, ns, store, op, tmp_path, "v3", "v2")
        wait_for(lambda: (policy_status(api, ns).get("shadow") or {}).get("version") == "v3", 60, "v3 tallied", op.proc)
        _reviews(store, "v2", "v3", {"both_right": 15, "only_active": 15})
        wait_for(lambda: phase(api, ns, "v3") == "Rejected", 60, "v3 rejected by its reviews", op.proc)
        st = policy_status(api, ns)
        assert (st["activeVersion"], st["desired"]["version"]) == ("v2", "v2")
        assert "rejected by live reviews (Worse)" in _mv_message(api, ns, "v3")
        events = [e for e in client.CoreV1Api(api).list_namespaced_event(ns).items if e.reason == "ShadowRejected"]
        assert len(events) == 1 and "v3 vs v2" in (events[0].message or "")
    finally:
        op.proc.stop()


def _mv_message(api: client.ApiClient, ns: str, version: str) -> str:
    mv = client.CustomObjectsApi(api).get_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, f"digits-{version}"
    )
    return str((mv.get("status") or {}).get("message") or "")
