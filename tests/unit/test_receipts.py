"""Prediction ids, receipts and the review join: the pure parts (ids, join, latest review per id) and the
receipt book over a spool directory, with no object store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from modelloop.api.feedback import FeedbackRecord, decode_batch, encode_batch, latest_per_id
from modelloop.api.receipts import (
    Receipt,
    check_client_id,
    check_review_id,
    generated_id,
    issued_at,
    join,
    new_stem,
    receipt_key,
    row_id,
    stem_key,
)
from modelloop_server.metrics import ServerMetrics
from modelloop_server.receipts import ReceiptBook, bytes_facts, tensor_facts
from modelloop_server.replays import ReviewLedger

MODEL = "digits"
T0 = datetime(2026, 12, 2, 2, 0, 0, 123456, tzinfo=UTC)


def test_a_generated_id_names_the_batch_its_receipt_is_stored_in() -> None:
    stem = new_stem(T0)
    assert stem.startswith("20261202T020000123456Z-") and len(stem) == 23 + 8
    rid = generated_id(stem, 17)
    assert receipt_key(MODEL, rid) == f"digits/receipts/{stem}.jsonl" == stem_key(MODEL, stem)
    assert receipt_key(MODEL, row_id(rid, 3, 4)) == stem_key(MODEL, stem), "a batched row's id names the same batch"
    assert row_id(rid, 0, 1) == rid
    assert issued_at(rid) == T0
    assert receipt_key(MODEL, "order-12") is None and issued_at("order-12") is None
    assert new_stem(T0) != stem, "two batches opened in the same microsecond still differ"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "non-empty string"),
        (12, "non-empty string"),
        ("x" * 97, "at most 96"),
        ("-leading", "characters outside"),
        ("a b", "characters outside"),
        ("é", "characters outside"),
        ("20261202T020000123456Z-0a1b2c3d-1", "reserved"),
    ],
)
def test_client_ids_are_bounded_and_cannot_look_generated(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as e:
        check_client_id(value, "inputs.id")
    assert "inputs.id" in str(e.value)


def test_review_ids_accept_anything_the_server_could_have_returned() -> None:
    assert check_client_id("order-12:a.b_c") == "order-12:a.b_c"
    assert check_review_id(generated_id(new_stem(T0), 1) + ".3")
    assert check_review_id("order-12.0")
    with pytest.raises(ValueError, match="not a prediction id"):
        check_review_id("x" * 129)


def _receipt(rid: str = "r1", predicted: int = 3) -> Receipt:
    return Receipt(id=rid, version="v2", predicted=predicted, scores=[0.1] * 10, input=[1.0] * 64, at=T0)


def test_the_join_takes_everything_but_label_reason_and_reviewer_from_the_receipt() -> None:
    record = join(_receipt(), 5, T0 + timedelta(minutes=1), "static:alice", "missed stain")
    assert (record.id, record.version, record.predicted, record.label) == ("r1", "v2", 3, 5)
    assert record.input == [1.0] * 64 and record.reason == "missed stain" and record.reviewer == "static:alice"
    assert record.is_correction
    assert not join(_receipt(), 3, T0, None, None).is_correction


def test_old_feedback_records_still_decode_and_new_ones_round_trip() -> None:
    old = b'{"id":"1","version":"v1","input":[0.0],"predicted":1,"label":2,"reviewedAt":"2026-01-01T00:00:00Z"}\n'
    [r] = decode_batch(old)
    assert r.reason is None and r.reviewer is None and r.input_sha256 is None
    new = join(
        Receipt(id="b", version="v1", predicted=0, scores=[1.0], input_sha256="ab" * 32, input_size=9, at=T0),
        1,
        T0,
        "static:bob",
        "torn seam",
    )
    assert decode_batch(encode_batch([new])) == [new]
    assert b"null" not in encode_batch([new]), "absent fields are left out, not written as null"


def test_the_latest_review_of_a_prediction_replaces_earlier_ones() -> None:
    def review(rid: str, label: int, minute: int) -> FeedbackRecord:
        return join(_receipt(rid), label, T0 + timedelta(minutes=minute), None, None)

    kept = latest_per_id([review("a", 5, 1), review("b", 3, 1), review("a", 3, 2), review("a", 3, 2)])
    assert [(r.id, r.label) for r in kept] == [("a", 3), ("b", 3)]
    assert sum(r.is_correction for r in kept) == 0, "the revised review is a confirmation, counted once"
    assert [r.label for r in latest_per_id([review("a", 5, 2), review("a", 7, 1)])] == [5], "by time, not order"


def test_the_ledger_sees_an_identical_replay_but_not_a_revised_review() -> None:
    ledger = ReviewLedger(size=2)
    first = join(_receipt("a"), 5, T0, "static:alice", "missed stain")
    assert not ledger.is_replay(first)
    ledger.remember(first)
    assert ledger.is_replay(join(_receipt("a"), 5, T0 + timedelta(seconds=5), "static:alice", "missed stain"))
    assert not ledger.is_replay(join(_receipt("a"), 6, T0, "static:alice", "missed stain"))
    assert not ledger.is_replay(join(_receipt("a"), 5, T0, "static:bob", "missed stain"))
    for rid in ("b", "c"):
        ledger.remember(join(_receipt(rid), 1, T0, None, None))
    assert not ledger.is_replay(first), "bounded: the oldest is forgotten"


def test_inputs_are_kept_inline_when_small_and_by_digest_otherwise() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    assert [f.values for f in tensor_facts(x, 4)] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    big = tensor_facts(x, 3)
    assert big[0].values is None and big[0].size == 16
    assert big[0].sha256 == hashlib.sha256(x[0].numpy().astype("<f4").tobytes()).hexdigest()
    [facts] = bytes_facts([b"\x89PNG..."])
    assert facts.sha256 == hashlib.sha256(b"\x89PNG...").hexdigest() and facts.size == 7 and facts.values is None
    assert facts.ref is None
    by_ref = bytes_facts([b"a", b"bc"], ["s3://models/digits/inputs/1.png", "s3://models/digits/inputs/2.png"])
    assert [(f.ref, f.size) for f in by_ref] == [
        ("s3://models/digits/inputs/1.png", 1),
        ("s3://models/digits/inputs/2.png", 2),
    ]


def _book(tmp_path: Path, **kw: int) -> ReceiptBook:
    return ReceiptBook(MODEL, None, tmp_path, ServerMetrics(), now=lambda: T0, spool=True, **kw)  # type: ignore[arg-type]


def test_receipts_of_one_request_share_the_open_batch_their_ids_name(tmp_path: Path) -> None:
    book = _book(tmp_path)
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    facts = tensor_facts(torch.zeros(2, 3), 8)
    request, ids = book.record("v2", probs, facts)
    assert ids == [f"{request}.0", f"{request}.1"]
    key = receipt_key(MODEL, ids[0])
    assert key is not None and key == receipt_key(MODEL, ids[1])
    held = book.spool.pending(key)
    assert held is not None and [r.id for r in held] == ids
    assert [(r.predicted, r.version) for r in held] == [(1, "v2"), (0, "v2")]
    second, [one] = book.record("v2", probs[:1], facts[:1])
    assert one == second != request and receipt_key(MODEL, one) == key, "later requests join the open batch"
    _, [tie] = book.record("v2", torch.tensor([[0.2, 0.4, 0.4]]), facts[:1])
    found_tie = book.in_memory(tie)
    assert found_tie is not None and found_tie.predicted == 1, "the first of tied maxima, as torch.max answers"
    client, [mine] = book.record("v2", probs[:1], facts[:1], client_id="order-12")
    assert client == mine == "order-12"
    found, where = book.lookup("order-12")
    assert found is not None and found.predicted == 1 and where == "memory"
    assert book.lookup("nope") == (None, "unknown")
    book.spool.close()


def test_an_evicted_receipt_is_still_joined_from_its_batch_until_it_is_stored(tmp_path: Path) -> None:
    book = _book(tmp_path, index_size=1)
    probs = torch.tensor([[0.1, 0.9]])
    _, [first] = book.record("v1", probs, tensor_facts(torch.zeros(1, 2), 8))
    book.record("v1", probs, tensor_facts(torch.zeros(1, 2), 8))
    assert book.in_memory(first) is None
    book.spool._cut()
    found, where = book.lookup(first)
    assert found is not None and found.id == first and where == "bucket"
    book.spool.close()


def test_a_restarted_server_stores_journaled_receipts_under_the_batch_their_ids_name(tmp_path: Path) -> None:
    book = _book(tmp_path)
    _, [rid] = book.record("v1", torch.tensor([[0.3, 0.7]]), tensor_facts(torch.zeros(1, 2), 8))
    book.spool.close()  # killed: the open batch is only in its journal
    again = _book(tmp_path)
    assert again.spool.restore_spool() == 1
    key = receipt_key(MODEL, rid)
    assert key is not None
    held = again.spool.pending(key)
    assert held is not None and [r.id for r in held] == [rid]
    assert (tmp_path / key.rsplit("/", 1)[1]).is_file(), "the spool file carries the key the id names"
    again.spool.close()


def test_generated_ids_older_than_the_retention_are_expired(tmp_path: Path) -> None:
    book = ReceiptBook(MODEL, None, tmp_path, ServerMetrics(), max_age=timedelta(hours=1), now=lambda: T0)
    assert book.expired(generated_id(new_stem(T0 - timedelta(hours=2)), 0))
    assert not book.expired(generated_id(new_stem(T0 - timedelta(minutes=30)), 0))
    assert not book.expired("order-12"), "a client id carries no time"


def test_a_full_receipt_spool_never_fails_a_prediction(tmp_path: Path) -> None:
    metrics = ServerMetrics()
    book = ReceiptBook(MODEL, None, tmp_path, metrics, max_backlog=1, now=lambda: T0, spool=True)
    probs = torch.tensor([[0.1, 0.9]])
    _, [kept] = book.record("v1", probs, tensor_facts(torch.zeros(1, 2), 8))
    _, [memory_only] = book.record("v1", probs, tensor_facts(torch.zeros(1, 2), 8))
    assert metrics.receipts_failed.labels("backlog_full")._value.get() == 1
    assert book.spool.backlog == 1 and memory_only != kept
    found, where = book.lookup(memory_only)
    assert found is not None and where == "memory", "this replica can still join it"
    book.spool.close()


def test_without_a_store_receipts_stay_in_memory_and_nothing_is_spooled(tmp_path: Path) -> None:
    book = ReceiptBook(MODEL, None, tmp_path / "spool", ServerMetrics(), now=lambda: T0)
    _, [rid] = book.record("v1", torch.tensor([[0.1, 0.9]]), tensor_facts(torch.zeros(1, 2), 8))
    assert book.lookup(rid)[1] == "memory" and book.spool.backlog == 0
    assert not (tmp_path / "spool").exists()
