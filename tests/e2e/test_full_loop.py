"""The whole loop with every real part: control plane, MinIO, development node, operator, trainer, server.

One test walks a policy through four versions because each step starts from the state the previous
one left (that is the point of a loop); every step is asserted from the objects' status and the
bucket's contents, never from logs:

1. bootstrap: the policy is applied, v1 is trained from the base dataset, verified and rolled out;
2. feedback: reviewers post corrections to the server's ``/v1/feedback``; v2 is trained, verified,
   hot-swapped into both replicas while a load generator runs (no failed request);
3. a gate rejects v3 (minHoldoutAccuracy raised to 0.999): v3 Rejected, v2 still serving;
4. v4 is promoted; 5. ``rollback-to=previous`` brings v2 back on both replicas.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from modelloop.api import constants as c
from modelloop.api.artifacts import Manifest, Verification, digest_of
from modelloop_dev.demo import LoopStack, S3Access, policy_spec
from modelloop_dev.loadgen import predict

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

VERSION_TIMEOUT_S = 420.0
ROLLOUT_TIMEOUT_S = 120.0


@pytest.fixture
def stack(control_plane: Any, minio: Any, namespace: str, bucket: str, tmp_path: Path) -> Iterator[LoopStack]:
    s3 = S3Access(minio.endpoint, minio.access_key, minio.secret_key, bucket)
    loop = LoopStack(
        kubeconfig=control_plane.kubeconfig, kubectl=control_plane.kubectl, s3=s3, namespace=namespace, workdir=tmp_path
    )
    try:
        loop.start_devnode()
        loop.create_secrets()
        loop.seed_dataset()
        loop.start_operator()
        yield loop
    finally:
        loop.close()


def assert_published(store: Any, model: str, version: str, digest: str) -> Manifest:
    """The version exists in the bucket as the contract defines it: a manifest matching every file."""
    raw = store.get_bytes(f"{model}/{version}/manifest.json")
    assert digest_of(raw) == digest, f"{version}: manifest digest differs from the one the operator promoted"
    manifest = Manifest.model_validate_json(raw)
    paths = {f.path for f in manifest.files}
    assert {"model.safetensors", "metrics.json"} <= paths
    keys = set(store.list_keys(f"{model}/{version}/"))
    for f in manifest.files:
        assert f"{model}/{version}/{f.path}" in keys
    return manifest


def verification_of(store: Any, model: str, version: str) -> Verification:
    return Verification.model_validate_json(store.get_bytes(f"{model}/{version}/verification.json"))


def test_feedback_to_hot_swap_gate_rejection_and_rollback(stack: LoopStack, minio: Any, bucket: str) -> None:
    store = minio.store(bucket)
    stack.deploy_serving()
    spec = policy_spec(
        stack.s3,
        model=stack.model,
        dataset=stack.dataset,
        deployment=stack.deployment,
        trainer_secret=stack.trainer_secret,
        epochs=2,
        min_samples=5,
        # v2 and v4 are promoted on verification: this test walks the loop (feedback, training, gates, hot swap,
        # rollback); the shadow stage (on by default) is what make demo shows with reviews, and is proven in
        # tests/integration/test_review_decisions_live.py
        rollout={"shadow": {"enabled": False}},
    )
    stack.apply_policy(spec)

    # 1. bootstrap
    v1 = stack.wait_phase("v1", {"Active"}, VERSION_TIMEOUT_S)
    v1_digest = v1["status"]["artifact"]["manifestDigest"]
    assert_published(store, stack.model, "v1", v1_digest)
    stack.wait_serving(v1_digest, ROLLOUT_TIMEOUT_S)
    stack.wait_active("v1", ROLLOUT_TIMEOUT_S)

    # 2. feedback → v2, hot-swapped under load
    load = stack.load(concurrency=4)
    try:
        reviewed = stack.review(200)
        assert reviewed.failed == 0
        assert reviewed.corrections >= 5, f"the digits model made only {reviewed.corrections} mistakes in 200 answers"
        stack.wait_phase("v2", {"Training", "Verifying", "Verified", "Promoting", "Active"}, VERSION_TIMEOUT_S)
        # Reviews flushed after v2's feedback snapshot would start v3 as soon as v2 is done; the
        # next rounds are started by hand, so feedback triggering is paused from here on.
        stack.patch_policy_spec({"triggers": {"feedback": {"minInterval": "24h"}}})
        v2 = stack.wait_phase("v2", {"Active"}, VERSION_TIMEOUT_S)
        v2_digest = v2["status"]["artifact"]["manifestDigest"]
        stack.wait_serving(v2_digest, ROLLOUT_TIMEOUT_S)
    finally:
        tally = load.stop()
    assert tally.failed == 0, f"requests failed during the hot swap: {tally.failures[:5]}"
    assert tally.ok > 0
    assert tally.by_version.get("v2", 0) > 0, f"no request was answered by v2: {dict(tally.by_version)}"
    feedback_keys = list(store.list_keys(f"{stack.model}/feedback/"))
    assert feedback_keys, "the server stored no feedback batch"
    manifest = assert_published(store, stack.model, "v2", v2_digest)
    assert manifest.parent_version == "v1"
    assert manifest.feedback_snapshot.corrections >= 5
    check = verification_of(store, stack.model, "v2")
    assert check.manifest_digest == v2_digest
    assert check.baseline_version == "v1"
    assert v2["spec"]["parentVersion"] == "v1"
    assert {g["name"] for g in v2["status"]["gates"]} and all(g["passed"] for g in v2["status"]["gates"])
    assert stack.mv_phase("v1") == "Superseded"
    rp = stack.wait_active("v2", ROLLOUT_TIMEOUT_S)
    assert (rp["activeVersion"], rp["previousVersion"], rp["desired"]["version"]) == ("v2", "v1", "v2")
    assert rp["rollout"]["updated"] == rp["rollout"]["total"] == 2
    for target in stack.serving_targets():
        status, _, version = predict(urllib3.PoolManager(retries=False), target, [0.0] * 64)
        assert (status, version) == (200, "v2")

    # 3. a gate rejects v3; v2 keeps serving
    # maxAttempts 1: no automatic retry of v3 (tests/integration/test_operator_loop.py proves retries)
    stack.patch_policy_spec({"verification": {"gates": {"minHoldoutAccuracy": 0.999}}, "retry": {"maxAttempts": 1}})
    stack.annotate_policy(c.ANNOTATION_RETRAIN_NOW, "round-3")
    v3 = stack.wait_phase("v3", {"Rejected"}, VERSION_TIMEOUT_S)
    failed = [g for g in v3["status"]["gates"] if not g["passed"]]
    assert any(g.get("threshold") == 0.999 for g in failed), (
        f"the raised holdout gate is not among the failures: {failed}"
    )
    assert store.exists(f"{stack.model}/v3/manifest.json"), "a rejected version keeps its artifacts"
    rp = stack.rp()["status"]
    assert (rp["activeVersion"], rp["desired"]["version"]) == ("v2", "v2")
    assert set(stack.serving_digests().values()) == {v2_digest}

    # 4. v4 promoted
    stack.patch_policy_spec({"verification": {"gates": {"minHoldoutAccuracy": 0.80}}})
    stack.annotate_policy(c.ANNOTATION_RETRAIN_NOW, "round-4")
    v4 = stack.wait_phase("v4", {"Active"}, VERSION_TIMEOUT_S)
    v4_digest = v4["status"]["artifact"]["manifestDigest"]
    stack.wait_serving(v4_digest, ROLLOUT_TIMEOUT_S)
    assert v4["spec"]["parentVersion"] == "v2"
    assert assert_published(store, stack.model, "v4", v4_digest).parent_version == "v2"

    # 5. rollback to the previous version
    stack.annotate_policy(c.ANNOTATION_ROLLBACK_TO, c.ROLLBACK_PREVIOUS)
    stack.wait_serving(v2_digest, ROLLOUT_TIMEOUT_S)
    stack.wait_phase("v2", {"Active"}, ROLLOUT_TIMEOUT_S)
    assert stack.wait_phase("v4", {"RolledBack"}, ROLLOUT_TIMEOUT_S)
    rp = stack.wait_active("v2", ROLLOUT_TIMEOUT_S)
    assert (rp["activeVersion"], rp["desired"]["version"], rp["desired"]["reason"]) == ("v2", "v2", "Rollback")
    assert rp["handled"]["rollbackTo"] == c.ROLLBACK_PREVIOUS

    # one training Job and one verification Job per version, never a duplicate
    names = sorted(j["metadata"]["name"] for j in stack.jobs())
    assert len(names) == len(set(names))
    for v in ("v1", "v2", "v3", "v4"):
        assert f"{stack.policy}-{v}-train" in names
        assert f"{stack.policy}-{v}-verify" in names
    assert sorted(stack.mvs()) == ["v1", "v2", "v3", "v4"]
    print(json.dumps({"requests": tally.ok, "failed": tally.failed, "by_version": dict(tally.by_version)}))


PHASE_ORDER = ["Pending", "Training", "Verifying", "Verified", "Promoting", "Active"]


def test_operator_killed_in_every_phase_resumes_without_duplicates(stack: LoopStack) -> None:
    """SIGKILL the operator as v1 enters training, verification and promotion; each restart carries on.

    No serving Deployment here: promotion completes as soon as the version is desired, which is the
    operator's half of the contract; the serving half is the test above.
    """
    stack.apply_policy(
        policy_spec(
            stack.s3,
            model=stack.model,
            dataset=stack.dataset,
            deployment=None,
            trainer_secret=stack.trainer_secret,
            epochs=2,
        )
    )
    killed_in = []
    for phase in ("Training", "Verifying", "Promoting"):
        reached = set(PHASE_ORDER[PHASE_ORDER.index(phase) :])
        stack.wait_phase("v1", reached, VERSION_TIMEOUT_S)
        stack.kill_operator()
        killed_in.append(stack.mv_phase("v1"))
        stack.start_operator()
    v1 = stack.wait_phase("v1", {"Active"}, VERSION_TIMEOUT_S)
    assert v1["status"]["artifact"]["manifestDigest"].startswith("sha256:")
    assert sorted(stack.mvs()) == ["v1"], f"duplicate ModelVersions after kills in {killed_in}"
    names = [j["metadata"]["name"] for j in stack.jobs()]
    assert sorted(names) == [f"{stack.policy}-v1-train", f"{stack.policy}-v1-verify"], names
    stack.wait_active("v1", ROLLOUT_TIMEOUT_S)
