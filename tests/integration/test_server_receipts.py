"""Reviews by prediction id against real servers and MinIO: the server is the source of truth.

Every answer (``/v1/predict`` and OIP ``infer``) carries an id and leaves a receipt in
``<model>/receipts/``; a review names the id, and the stored feedback record has the version, the
predicted class and the input from the receipt. A review claiming them is refused, an unknown id
is a 404, an identical replay is acknowledged once, and a revised review replaces the first in
the trainer's data. A review posted to another replica than the one that answered is joined too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import start_server

from modelloop.api.artifacts import feedback_prefix, receipts_prefix
from modelloop.api.feedback import FeedbackRecord, decode_batch
from modelloop.api.receipts import Receipt, decode_receipts, receipt_key
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, wait_for
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.feedback import load_feedback

pytestmark = pytest.mark.integration

MODEL = "digits"
FAST = {
    "MODELLOOP_FEEDBACK_FLUSH_SECONDS": "0.5",
    "MODELLOOP_RECEIPT_FLUSH_SECONDS": "0.5",
    "MODELLOOP_MAX_BODY_BYTES": "1048576",
}


def _x(i: int) -> list[float]:
    return [float((i * 7 + k) % 17) for k in range(64)]


def feedback(store: ObjectStore) -> list[FeedbackRecord]:
    return [r for k in sorted(store.list_keys(feedback_prefix(MODEL))) for r in decode_batch(store.get_bytes(k))]


def receipts(store: ObjectStore) -> dict[str, Receipt]:
    keys = [k for k in store.list_keys(receipts_prefix(MODEL)) if k.endswith(".jsonl")]  # not the review markers
    return {r.id: r for k in keys for r in decode_receipts(store.get_bytes(k))}


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def server(minio: MinioServer, bucket: str, tmp_path: Path) -> Iterator[tuple[ManagedProcess, str]]:
    proc, url, _ = start_server(tmp_path / "a", **minio.env(bucket), **FAST)
    yield proc, url
    proc.stop(timeout=60)


def test_a_review_by_id_is_stored_with_what_the_server_answered(
    server: tuple[ManagedProcess, str], minio: MinioServer, bucket: str
) -> None:
    proc, url = server
    store = minio.store(bucket)
    answer = httpx.post(f"{url}/v1/predict", json={"input": _x(1)}).json()
    pid, predicted, version = answer["id"], answer["predicted"], answer["version"]
    assert receipt_key(MODEL, pid) is not None, f"a generated id names its receipt batch: {pid}"
    wrong = (predicted + 1) % 10

    forged = httpx.post(f"{url}/v1/feedback", json={"id": pid, "label": wrong, "predicted": wrong})
    assert forged.status_code == 422 and "field 'predicted' is not accepted" in forged.json()["error"]
    forged = httpx.post(f"{url}/v1/feedback", json={"id": pid, "label": wrong, "version": "v9"})
    assert forged.status_code == 422 and "field 'version' is not accepted" in forged.json()["error"]
    unknown = httpx.post(f"{url}/v1/feedback", json={"id": "never-answered", "label": 1})
    assert unknown.status_code == 404
    assert (
        "'never-answered'" in unknown.json()["error"] and f"s3://{bucket}/digits/receipts/" in unknown.json()["error"]
    )

    review = {"id": pid, "label": wrong, "reason": "missed stain"}
    first = httpx.post(f"{url}/v1/feedback", json=review)
    assert first.status_code == 202, first.text
    assert first.json() == {"id": pid, "correction": True, "version": version, "predicted": predicted, "label": wrong}
    replay = httpx.post(f"{url}/v1/feedback", json=review)
    assert replay.status_code == 200 and replay.json()["replay"] is True
    revised = httpx.post(f"{url}/v1/feedback", json={"id": pid, "label": DigitsPlugin().class_names[predicted]})
    assert revised.status_code == 202 and revised.json()["correction"] is False, "a class name is a label too"

    # A client's own id, and a batch: every row has its own id and receipt.
    mine = httpx.post(f"{url}/v1/predict", json={"input": _x(2), "id": "order-12"}).json()
    assert mine["id"] == "order-12"
    batch = httpx.post(f"{url}/v1/predict", json={"inputs": [_x(3), _x(4)]}).json()
    rows = [p["id"] for p in batch["predictions"]]
    assert rows == [f"{batch['id']}.0", f"{batch['id']}.1"]
    corrections = 0
    for rid, label in [("order-12", 0), (rows[1], 4)]:
        r = httpx.post(f"{url}/v1/feedback", json={"id": rid, "label": label})
        assert r.status_code == 202
        corrections += r.json()["correction"]
    bad_id = httpx.post(f"{url}/v1/predict", json={"input": _x(2), "id": "no spaces"})
    assert bad_id.status_code == 422 and "id 'no spaces'" in bad_id.json()["error"]

    wait_for(lambda: len(feedback(store)) == 4, 30, "four reviews stored (the replay not among them)", proc)
    records = feedback(store)
    mine_first, mine_revised = (r for r in records if r.id == pid)
    assert (mine_first.version, mine_first.predicted, mine_first.label) == (version, predicted, wrong)
    assert mine_first.input == _x(1) and mine_first.reason == "missed stain" and mine_first.reviewer == "anonymous"
    assert mine_revised.label == predicted
    assert mine_first.revises is None and mine_revised.revises == mine_first.counted_as(), "counted as a change"
    wait_for(lambda: {pid, "order-12", *rows} <= set(receipts(store)), 30, "receipts in the bucket", proc)
    stored = receipts(store)[pid]
    assert (stored.version, stored.predicted, stored.input) == (version, predicted, _x(1))
    assert metric(url, "modelloop_server_receipts_written_total") >= 4

    # The trainer learns from each prediction once, with its latest review.
    through = max(store.list_keys(feedback_prefix(MODEL)))
    loaded = load_feedback(store, DigitsPlugin(), MODEL, through)
    split, snapshot = loaded.inline, loaded.snapshot
    assert split is not None and snapshot.samples == 3 and loaded.refs == [] and loaded.skipped == {}
    assert snapshot.corrections == corrections, "the first review (a correction) was replaced by a confirmation"
    assert sorted(split.y.tolist()) == sorted([predicted, 0, 4])


def _oip(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body)


def test_an_oip_answer_carries_an_id_that_can_be_reviewed(server: tuple[ManagedProcess, str]) -> None:
    _, url = server
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": _x(5)}
    answer = _oip(url, {"inputs": [tensor]}).json()
    pid = answer["id"]
    [predicted] = next(o for o in answer["outputs"] if o["name"] == "predicted")["data"]
    review = httpx.post(f"{url}/v1/feedback", json={"id": pid, "label": (predicted + 1) % 10})
    assert review.status_code == 202 and review.json()["predicted"] == predicted

    echoed = _oip(url, {"id": "oip-7", "inputs": [tensor]}).json()
    assert echoed["id"] == "oip-7"
    assert httpx.post(f"{url}/v1/feedback", json={"id": "oip-7", "label": predicted}).status_code == 202

    two = _oip(url, {"inputs": [{**tensor, "shape": [2, 64], "data": _x(5) + _x(6)}]}).json()
    ids = two["parameters"]["prediction_ids"].split(",")
    assert ids == [f"{two['id']}.0", f"{two['id']}.1"]
    assert httpx.post(f"{url}/v1/feedback", json={"id": ids[1], "label": 1}).status_code == 202

    bad = _oip(url, {"id": "a/b", "inputs": [tensor]})
    assert bad.status_code == 400 and "id 'a/b'" in bad.json()["error"]


def test_a_review_posted_to_another_replica_is_joined_to_the_receipt(
    server: tuple[ManagedProcess, str], minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    proc_a, a = server
    proc_b, b, _ = start_server(tmp_path / "b", **minio.env(bucket), **FAST)
    try:
        answer = httpx.post(f"{a}/v1/predict", json={"input": _x(8)}).json()
        mine = httpx.post(f"{a}/v1/predict", json={"input": _x(9), "id": "ticket-9"}).json()
        reviews = {answer["id"]: (answer["predicted"] + 1) % 10, mine["id"]: mine["predicted"]}
        statuses: dict[str, int] = {}

        def joined() -> bool:
            for rid, label in reviews.items():
                if statuses.get(rid) != 202:
                    statuses[rid] = httpx.post(f"{b}/v1/feedback", json={"id": rid, "label": label}).status_code
            return all(s == 202 for s in statuses.values())

        # A's receipt batch reaches the bucket within its flush interval; until then B answers 404.
        wait_for(joined, 30, "replica b joining reviews of replica a's answers", proc_b)
        assert metric(b, 'modelloop_server_review_joins_total{result="bucket"}') == 2
        store = minio.store(bucket)
        wait_for(lambda: len(feedback(store)) == 2, 30, "both reviews stored by replica b", proc_b)
        by_id = {r.id: r for r in feedback(store)}
        assert by_id[answer["id"]].predicted == answer["predicted"] and by_id[answer["id"]].input == _x(8)
        assert by_id["ticket-9"].version == mine["version"] and by_id["ticket-9"].input == _x(9)
    finally:
        proc_b.stop(timeout=60)
    assert proc_a.alive()
