"""Issues 16 and 18: the operator's state gauges come from what the API server holds.

The test writes a policy's and its ModelVersions' status as an earlier operator process left them,
then starts ``modelloop-operator``: the active version, its live accuracy and each version's phase
are exported from that status at once, before the operator's first pass has finished (here it
never can: the policy's object store accepts connections and never answers). A version pruned by
retention, and a deleted policy, take their series with them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import POLICY, Operator, create_fixtures, create_s3_secret, policy_body, policy_status, versions
from prometheus_client.parser import text_string_to_metric_families

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import free_port, http_get, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

D1, D2, D3 = ("sha256:" + d * 64 for d in "123")
DIGESTS = {"v1": D1, "v2": D2, "v3": D3}


def _status(active: str, previous: str) -> dict[str, Any]:
    """A policy's status as the operator writes it once ``active`` is fully rolled out."""
    return {
        "activeVersion": active,
        "previousVersion": previous,
        "latestVersion": active,
        "desired": {
            "version": active,
            "artifactURI": f"s3://models/digits/{active}/",
            "manifestDigest": DIGESTS[active],
            "reason": "Promotion",
        },
        "feedback": {"pendingCorrections": 4, "pendingReviews": 6},
        "liveAccuracy": {"version": active, "reviews": 10, "correct": 9, "accuracy": 0.9},
    }


def _create(api: client.ApiClient, ns: str, policy: dict[str, Any], status: dict[str, Any], **phases: str) -> None:
    """The policy and its versions with the status an earlier operator process left them in."""
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, policy)
    custom.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY, {"status": status}
    )
    owner = {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "name": POLICY,
        "uid": created["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for version, phase in phases.items():
        name = f"{POLICY}-{version}"
        labels = {c.LABEL_POLICY: POLICY, c.LABEL_MODEL: "digits", c.LABEL_VERSION: version}
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.MODELVERSION_KIND,
            "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
            "spec": {"model": "digits", "version": version, "policy": POLICY},
        }
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, body)
        artifact = {"uri": f"s3://models/digits/{version}/", "manifestDigest": DIGESTS[version]}
        custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, name, {"status": {"phase": phase, "artifact": artifact}}
        )


def _series(op: Operator, ns: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Every state series of the namespace: metric -> (version, digest or phase) -> value."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    text = http_get(f"http://127.0.0.1:{op.metrics_port}/metrics").decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("namespace") != ns or s.name.endswith(("_total", "_bucket", "_sum", "_count", "_created")):
                continue
            key = tuple(s.labels[k] for k in ("version", "digest", "phase") if k in s.labels)
            out.setdefault(s.name, {})[key] = s.value
    return out


@pytest.fixture
def hung_store() -> Iterator[str]:
    """host:port of an object store that accepts connections and never answers (the kernel's backlog)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()  # resets the waiting connections: the stuck pass fails at once


def test_a_started_operator_exports_state_from_status_before_its_first_pass(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    api: client.ApiClient,
    tmp_path: Path,
    hung_store: str,
) -> None:
    ns = namespace
    create_s3_secret(api, minio, ns)
    policy = policy_body(minio, "models")
    policy["spec"]["storage"]["endpoint"] = hung_store
    _create(api, ns, policy, _status("v2", "v1"), v1="Superseded", v2="Active")
    op = Operator(control_plane, ns, tmp_path / "operator.log", metrics_port=free_port()).start()
    try:
        wanted = {
            "modelloop_active_version_info": {("v2", D2): 1.0},
            "modelloop_desired_version_info": {("v2", D2): 1.0},
            "modelloop_live_accuracy": {("v2",): 0.9},
            "modelloop_version_phase": {("v1", "Superseded"): 1.0, ("v2", "Active"): 1.0},
            "modelloop_feedback_pending_corrections": {(): 4.0},
            "modelloop_feedback_pending_reviews": {(): 6.0},
            "modelloop_training_retries_exhausted": {(): 0.0},
            "modelloop_training_budget_exhausted": {(): 0.0},
        }
        wait_for(lambda: _series(op, ns) == wanted, 30, "the state series from status", op.proc)
        # No pass has finished: it would have written observedGeneration and a FeedbackReadable condition.
        st = policy_status(api, ns)
        assert "observedGeneration" not in st and not st.get("conditions"), st
    finally:
        op.proc.stop()


def test_a_pruned_version_and_a_deleted_policy_take_their_series_with_them(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    ns = namespace
    create_fixtures(api, minio, ns)
    # The 4 pending corrections in status must not start a training here.
    policy = policy_body(minio, bucket, triggers={"feedback": {"minSamples": 1000, "minInterval": "0s"}})
    _create(api, ns, policy, _status("v3", "v2"), v1="Superseded", v2="Superseded", v3="Active")
    op = Operator(control_plane, ns, tmp_path / "operator.log", metrics_port=free_port()).start()

    def phases() -> dict[tuple[str, ...], float]:
        return _series(op, ns).get("modelloop_version_phase", {})

    try:
        every = {("v1", "Superseded"): 1.0, ("v2", "Superseded"): 1.0, ("v3", "Active"): 1.0}
        wait_for(lambda: phases() == every, 30, "a phase series per version", op.proc)
        wait_for(lambda: policy_status(api, ns).get("observedGeneration") == 1, 60, "a full pass", op.proc)
        assert sorted(versions(api, ns)) == ["v1", "v2", "v3"], "keepVersions 10: nothing pruned"

        # keepVersions 2: v3 (active) and v2 (previous) stay, v1 is deleted and its series goes with it.
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY, {"spec": {"retention": {"keepVersions": 2}}}
        )
        wait_for(lambda: sorted(versions(api, ns)) == ["v2", "v3"], 60, "v1 pruned", op.proc)
        wait_for(
            lambda: phases() == {("v2", "Superseded"): 1.0, ("v3", "Active"): 1.0}, 30, "v1's series gone", op.proc
        )
        assert _series(op, ns)["modelloop_active_version_info"] == {("v3", D3): 1.0}

        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY
        )
        wait_for(lambda: _series(op, ns) == {}, 30, "no series of the deleted policy", op.proc)
    finally:
        op.proc.stop()
