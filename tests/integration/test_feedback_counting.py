"""Feedback counting against real MinIO and the real operator: bad objects are quarantined, late ones counted,
and each prediction id and each batch counted once.

A malformed batch, and one too large to read, used to stop the count for good (the policy showed
"StorageUnreachable"); a batch uploaded late, under a key older than the cursor, was never counted; a
prediction reviewed on two replicas, and a batch uploaded twice, were counted twice.
The policy's v1 training never completes here (no kubelet), so nothing resets the pending counts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from kubernetes import client
from operator_harness import MODEL, Operator, create_fixtures, create_policy, get_policy, policy_body
from test_server_support import start_server

from modelloop.api.artifacts import feedback_prefix
from modelloop.api.feedback import FeedbackRecord, batch_key, decode_batch, encode_batch, latest_per_id
from modelloop.clients.objectstore import ObjectStore
from modelloop.decide import feedback as counting
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FAST = {"MODELLOOP_FEEDBACK_FLUSH_SECONDS": "0.5", "MODELLOOP_RECEIPT_FLUSH_SECONDS": "0.5"}


def batch(n: int, corrections: int = 0) -> bytes:
    now = datetime.now(UTC)
    return encode_batch(
        [
            FeedbackRecord(
                id=f"r{i}", version="v1", input=[0.0], predicted=1, label=2 if i < corrections else 1, reviewed_at=now
            )
            for i in range(n)
        ]
    )


def feedback_status(api: client.ApiClient, ns: str) -> dict[str, Any]:
    return dict((get_policy(api, ns).get("status") or {}).get("feedback") or {})


def quarantine_events(api: client.ApiClient, ns: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(ns).items
    return [e.message for e in events if e.reason == "FeedbackQuarantined" and e.type == "Warning"]


def test_bad_objects_are_quarantined_and_late_batches_counted_once_across_restarts(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    create_policy(api, policy_body(minio, bucket), ns)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:

        def reviews() -> int:
            return int(feedback_status(api, ns).get("pendingReviews") or 0)

        def counted(n: int, what: str) -> None:
            wait_for(lambda: reviews() == n, 60, f"{n} reviews counted ({what})", op.proc)

        wait_for(
            lambda: (get_policy(api, ns).get("status") or {}).get("trainingVersion") == "v1",
            60, "the bootstrap training (it takes the feedback pending at its start)", op.proc,
        )  # fmt: skip
        store.put_bytes(batch_key(MODEL), batch(2, corrections=1))
        counted(2, "a first batch")

        malformed = batch_key(MODEL)
        store.put_bytes(malformed, b'{"id": "x", "label": "not a number"}\nnot json at all\n')
        store.put_bytes(batch_key(MODEL), batch(3, corrections=2))
        counted(5, "the batch after a malformed one")
        fb = feedback_status(api, ns)
        assert [q["key"] for q in fb["quarantined"]] == [malformed] and fb["quarantinedTotal"] == 1
        assert "malformed" in fb["quarantined"][0]["reason"]
        assert fb["pendingCorrections"] == 3
        conds = {x["type"]: x for x in get_policy(api, ns)["status"]["conditions"]}
        assert conds["FeedbackReadable"]["status"] == "True" and malformed in conds["FeedbackReadable"]["message"]
        wait_for(lambda: len(quarantine_events(api, ns)) == 1, 30, "a FeedbackQuarantined Event", op.proc)
        assert malformed in quarantine_events(api, ns)[0]

        cursor = feedback_status(api, ns)["cursor"]
        late = batch_key(MODEL, datetime.now(UTC) - timedelta(hours=1))  # spooled an hour ago, uploaded now
        assert late < cursor
        store.put_bytes(late, batch(4, corrections=4))
        counted(9, "a batch uploaded late, under a key older than the cursor")
        assert feedback_status(api, ns)["cursor"] == cursor, "the cursor stays the highest key counted"
        assert feedback_status(api, ns)["pendingCorrections"] == 7

        op.sigkill_and_restart()
        store.put_bytes(batch_key(MODEL), batch(1))
        counted(10, "a batch after a restart")
        # A recount by the restarted operator, or a malformed object read again, would show in the
        # next pass too: one more batch makes sure one ran.
        store.put_bytes(batch_key(MODEL), batch(1))
        counted(11, "one more batch")
        assert len(quarantine_events(api, ns)) == 1
        assert feedback_status(api, ns)["quarantinedTotal"] == 1
    finally:
        op.proc.stop()


def test_an_oversized_object_is_quarantined_from_its_listed_size_without_a_download(
    minio: MinioServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own counting code against MinIO; the limit lowered so the test uploads kilobytes."""
    from modelloop.api.retrainpolicy import QuarantinedObject, RetrainPolicySpec, RetrainPolicyStatus
    from modelloop.handlers.retrainpolicy import _count_feedback

    monkeypatch.setattr(counting, "MAX_FEEDBACK_OBJECT_BYTES", 4096)
    store: ObjectStore = minio.store(bucket)
    big = batch_key(MODEL)
    store.put_bytes(big, batch(60))
    assert len(store.get_bytes(big)) > 4096
    small = batch_key(MODEL)
    store.put_bytes(small, batch(2, corrections=2))
    downloads: list[str] = []
    real_get = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda k: downloads.append(k) or real_get(k))
    spec = RetrainPolicySpec.model_validate(policy_body(minio, bucket)["spec"])
    status = RetrainPolicyStatus()
    found: list[QuarantinedObject] = []
    _count_feedback(store, spec, status, datetime.now(UTC), found.append)
    assert [q.key for q in found] == [big] and "over the 4096 bytes" in found[0].reason
    assert downloads == [small]
    assert (status.feedback.pending_reviews, status.feedback.pending_corrections) == (2, 2)
    assert status.feedback.cursor == small and status.feedback.seen_through is not None


def _post_until_joined(url: str, body: dict[str, Any], proc: Any) -> httpx.Response:
    """Another replica answers 404 until the answering replica's receipt batch is in the bucket."""
    got: list[httpx.Response] = []

    def joined() -> bool:
        got.append(httpx.post(f"{url}/v1/feedback", json=body))
        return got[-1].status_code != 404

    wait_for(joined, 30, f"a review of {body['id']} joined at {url}", proc)
    return got[-1]


def test_a_prediction_reviewed_on_two_replicas_counts_once_with_its_latest_label(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    """Replica a stores a correction of p; replica b, which holds no memory of it, stores a confirmation of p:
    one review, no correction (the latest label), as the trainer reads it. Before the review markers the
    operator counted two reviews and one correction of p."""
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    create_policy(api, policy_body(minio, bucket), ns)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    proc_a, a, _ = start_server(tmp_path / "a", **minio.env(bucket), **FAST)
    proc_b, b, _ = start_server(tmp_path / "b", **minio.env(bucket), **FAST)
    try:
        wait_for(
            lambda: (get_policy(api, ns).get("status") or {}).get("trainingVersion") == "v1",
            60, "the bootstrap training (it takes the feedback pending at its start)", op.proc,
        )  # fmt: skip
        p, q, r = (
            httpx.post(f"{a}/v1/predict", json={"input": [float((i * 7 + k) % 17) for k in range(64)]}).json()
            for i in range(3)
        )
        first = httpx.post(f"{a}/v1/feedback", json={"id": p["id"], "label": (p["predicted"] + 1) % 10})
        assert first.status_code == 202 and first.json()["correction"]
        latest = _post_until_joined(b, {"id": p["id"], "label": p["predicted"]}, proc_b)
        assert latest.status_code == 202 and not latest.json()["correction"], latest.text
        replay = httpx.post(f"{a}/v1/feedback", json={"id": p["id"], "label": p["predicted"]})
        assert replay.status_code == 200 and replay.json()["replay"], "b's review, replayed on a, is not stored again"
        other = httpx.post(f"{b}/v1/feedback", json={"id": q["id"], "label": (q["predicted"] + 1) % 10})
        assert other.status_code == 202

        def counts() -> tuple[int, int]:
            fb = feedback_status(api, ns)
            return int(fb.get("pendingReviews") or 0), int(fb.get("pendingCorrections") or 0)

        wait_for(lambda: counts() == (2, 1), 60, "p once (confirmed, its latest label) and q (corrected)", op.proc)
        # A recount, or p's revision counted as a new review, would show by the next pass: one more review makes
        # sure one ran.
        assert httpx.post(f"{b}/v1/feedback", json={"id": r["id"], "label": r["predicted"]}).status_code == 202
        wait_for(lambda: counts()[0] == 3, 60, "one more review counted", op.proc)
        assert counts() == (3, 1)

        records = [
            rec for k in sorted(store.list_keys(feedback_prefix(MODEL))) for rec in decode_batch(store.get_bytes(k))
        ]
        of_p = [rec for rec in records if rec.id == p["id"]]
        assert len(records) == 4 and len(of_p) == 2, "the replay was not stored"
        assert of_p[0].revises is None and of_p[1].revises == of_p[0].counted_as()
        kept = {rec.id: rec for rec in latest_per_id(records)}
        assert kept[p["id"]].label == p["predicted"], "the trainer keeps the same latest label"
        marks = httpx.get(f"{b}/metrics").text
        assert 'modelloop_server_review_marks_total{outcome="revision"} 1.0' in marks
        assert 'modelloop_server_review_marks_total{outcome="conflict"} 0.0' in marks
    finally:
        for proc in (proc_a, proc_b):
            proc.stop(timeout=60)
        op.proc.stop()


def test_a_feedback_batch_uploaded_again_is_not_rewritten_nor_counted_twice(
    minio: MinioServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server killed after its batch was stored but before it removed the spool file uploads the batch again
    when it restarts (as does a retry after a PUT that timed out once the store had it). The upload is
    conditional, so the object, and the upload time the operator counts by, stay as they were. The control: a
    plain rewrite of the same key, as the spool did before, is counted a second time."""
    from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus
    from modelloop.handlers.retrainpolicy import _count_feedback
    from modelloop_server.feedback import FeedbackBuffer
    from modelloop_server.metrics import ServerMetrics

    # What was counted leaves `recent` at once, so only the upload time tells a batch counted from a new one
    # (in production: a rewrite more than SETTLE after the first upload).
    monkeypatch.setattr(counting, "SETTLE", timedelta(0))
    store = minio.store(bucket)
    spec = RetrainPolicySpec.model_validate(policy_body(minio, bucket)["spec"])
    status = RetrainPolicyStatus()
    key, data = batch_key(MODEL), batch(3, corrections=2)

    def restart_with_spool_file() -> FeedbackBuffer:
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        (spool / PurePosixPath(key).name).write_bytes(data)
        buffer = FeedbackBuffer(MODEL, store, spool, ServerMetrics())
        assert buffer.restore_spool() == 3
        assert buffer.flush(force=True) == 3 and buffer.backlog == 0
        return buffer

    def count() -> tuple[int, int]:
        _count_feedback(store, spec, status, datetime.now(UTC), lambda q: pytest.fail(f"quarantined {q}"))
        return status.feedback.pending_reviews, status.feedback.pending_corrections

    def uploaded() -> datetime:
        [(_, _, modified)] = [o for o in store.list_objects(feedback_prefix(MODEL)) if o[0] == key]
        return modified

    restart_with_spool_file()
    assert count() == (3, 2)
    first_upload = uploaded()
    restart_with_spool_file()  # killed before the spool file was removed: the same batch again
    assert uploaded() == first_upload, "not rewritten"
    assert count() == (3, 2)

    store.put_bytes(key, data)  # the control: what an unconditional retry did
    assert uploaded() > first_upload
    assert count() == (6, 4), "a rewritten batch is counted again: the conditional upload is what prevents it"
