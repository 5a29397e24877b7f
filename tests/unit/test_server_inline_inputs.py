"""Inputs sent inline, stored so their reviews can be trained on: the admission decision (byte budget, each
digest once) as a table, and the store's receipts facts and uploads against a fake object store."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from modelloop.api.receipts import Receipt, encode_receipts, join
from modelloop_dev.processes import wait_for
from modelloop_server.inlineinputs import BACKLOG_FULL, OFF, UPLOAD_FAILED, Admission, InlineInputStore
from modelloop_server.metrics import ServerMetrics
from modelloop_server.receipts import ReceiptBook, bytes_facts

MODEL = "laundry"
A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize(
    ("case", "budget", "steps", "expected"),
    [
        ("fits", 100, [(A, 40)], [("key", True)]),
        ("the same digest again costs nothing", 100, [(A, 40), (A, 40)], [("key", True), ("key", False)]),
        ("over the budget is not stored", 100, [(A, 60), (B, 60)], [("key", True), (BACKLOG_FULL, False)]),
        ("a repeat of a queued input fits even when full", 100, [(A, 60), (B, 60), (A, 60)],
         [("key", True), (BACKLOG_FULL, False), ("key", False)]),
        ("exactly the budget fits", 100, [(A, 50), (B, 50)], [("key", True), ("key", True)]),
        ("off", 0, [(A, 1)], [(OFF, False)]),
    ],
)  # fmt: skip
def test_admission(case: str, budget: int, steps: list[tuple[str, int]], expected: list[tuple[str, bool]]) -> None:
    adm = Admission(MODEL, budget)
    got = []
    for sha, size in steps:
        d = adm.admit(sha, size)
        got.append(("key" if d.key is not None else str(d.reason), d.enqueue))
        if d.key is not None:
            assert d.key == f"laundry/inline-inputs/{sha}"
    assert got == expected, case


def test_a_finished_upload_frees_its_bytes_and_a_failed_one_may_be_tried_again() -> None:
    adm = Admission(MODEL, 100)
    assert adm.admit(A, 60).enqueue
    assert adm.admit(B, 60).reason == BACKLOG_FULL
    adm.done(A, 60, stored=True)
    assert adm.backlog_bytes == 0
    assert adm.admit(A, 60).enqueue is False, "stored once: not stored again"
    assert adm.admit(B, 60).enqueue
    adm.done(B, 60, stored=False)
    assert adm.admit(B, 60).enqueue, "a failed upload is tried again by the next request carrying it"


def test_known_digests_are_bounded() -> None:
    adm = Admission(MODEL, 1000, known_digests=2)
    for sha in (A, B, C):
        adm.admit(sha, 1)
        adm.done(sha, 1, stored=True)
    assert list(adm.known) == [B, C]
    assert adm.admit(A, 1).enqueue, "forgotten: at most one identical upload more"


class FakeStore:
    bucket = "models"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.objects: dict[str, bytes] = {}
        self.release = threading.Event()
        self.put = threading.Event()

    def put_bytes(self, key: str, data: bytes) -> str:
        self.release.wait(10)
        if self.fail:
            raise ConnectionError("store down")
        self.objects[key] = data
        self.put.set()
        return key


def test_the_receipt_names_where_the_input_is_stored_before_the_upload_and_the_review_carries_it() -> None:
    store, metrics = FakeStore(), ServerMetrics()
    images = [b"png one", b"png two", b"png one"]
    inputs = InlineInputStore(MODEL, store, metrics, max_backlog_bytes=1 << 20)  # type: ignore[arg-type]
    try:
        facts = inputs.keep(images, bytes_facts(images))
        sha = hashlib.sha256(b"png one").hexdigest()
        assert facts[0].stored == f"s3://models/laundry/inline-inputs/{sha}" == facts[2].stored
        assert facts[0].not_stored is None and store.objects == {}, "decided without waiting for the store"
        store.release.set()
        wait_for(lambda: metrics.inline_inputs_stored._value.get() == 2, 10, "two uploads (the repeat is not uploaded)")
        assert store.objects[f"laundry/inline-inputs/{sha}"] == b"png one"
        assert metrics.inline_input_backlog_bytes._value.get() == 0
    finally:
        inputs.close()
    receipt = Receipt(
        id="r1", version="v1", predicted=0, scores=[0.9, 0.1], input_sha256=sha, input_size=7,
        input_stored=facts[0].stored, at=datetime.now(UTC),
    )  # fmt: skip
    assert join(receipt, 1, datetime.now(UTC), "static:alice", None).input_stored == facts[0].stored


def test_a_full_queue_or_a_failed_upload_still_answers_and_is_counted() -> None:
    store, metrics = FakeStore(fail=True), ServerMetrics()
    inputs = InlineInputStore(MODEL, store, metrics, max_backlog_bytes=10)  # type: ignore[arg-type]
    try:
        facts = inputs.keep([b"12345678", b"abcdefgh"], bytes_facts([b"12345678", b"abcdefgh"]))
        assert facts[0].stored is not None
        assert facts[1].stored is None and "queue of inline inputs to store was full" in str(facts[1].not_stored)
        assert metrics.inline_inputs_not_stored.labels(BACKLOG_FULL)._value.get() == 1
        store.release.set()
        wait_for(
            lambda: metrics.inline_inputs_not_stored.labels(UPLOAD_FAILED)._value.get() == 1, 10, "the failed upload"
        )
        assert metrics.inline_inputs_stored._value.get() == 0
    finally:
        inputs.close()


def test_without_a_bucket_nothing_is_stored_and_the_receipt_says_why() -> None:
    metrics = ServerMetrics()
    inputs = InlineInputStore(MODEL, None, metrics)
    facts = inputs.keep([b"x"], bytes_facts([b"x"]))
    assert facts[0].stored is None and "off" in str(facts[0].not_stored)
    assert metrics.inline_inputs_not_stored.labels(OFF)._value.get() == 1
    inputs.close()


def test_the_receipt_book_keeps_where_each_row_is_stored_or_why_not(tmp_path: Path) -> None:
    metrics = ServerMetrics()
    book = ReceiptBook(MODEL, None, tmp_path, metrics)
    facts = bytes_facts([b"one", b"two"])
    facts = [replace(facts[0], stored="s3://models/laundry/inline-inputs/x"), replace(facts[1], not_stored="full")]
    _, ids = book.record("v1", torch.tensor([[0.9, 0.1], [0.2, 0.8]]), facts)
    first, second = (book.in_memory(i) for i in ids)
    assert first is not None and first.input_stored == "s3://models/laundry/inline-inputs/x"
    assert second is not None and second.input_stored is None and second.input_not_stored == "full"
    assert b'"inputStored":"s3://models/laundry/inline-inputs/x"' in encode_receipts([first])
