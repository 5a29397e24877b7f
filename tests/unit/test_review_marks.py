"""Review markers: the conditional writes that tell an id's first review from a revision, a replay, a landed
retry and a concurrent review on another replica (modelloop_server.reviewmarks), against a fake store that
keeps S3's If-None-Match / If-Match semantics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from modelloop.api.feedback import FeedbackRecord
from modelloop.api.receipts import review_mark_key
from modelloop.clients.objectstore import NotFound
from modelloop_server.metrics import ServerMetrics
from modelloop_server.reviewmarks import MarkUnavailable, ReviewMark, ReviewMarks

MODEL = "digits"


class FakeStore:
    bucket = "models"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.writes = 0
        self.down = False
        self.before_put: Callable[[], None] = lambda: None

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        if self.down:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key]

    def put_if(self, key: str, data: bytes, etag: str | None, content_type: str = "") -> str | None:
        if self.down:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        self.before_put()
        held = self.objects.get(key)
        if (etag is None and held is not None) or (etag is not None and (held is None or held[1] != etag)):
            return None
        self.writes += 1
        self.objects[key] = (data, f"e{self.writes}")
        return f"e{self.writes}"


def review(label: int, revises: FeedbackRecord | None = None) -> FeedbackRecord:
    return FeedbackRecord(
        id="p1",
        version="v1",
        predicted=1,
        label=label,
        reviewed_at=datetime(2026, 12, 2, tzinfo=UTC),
        reviewer="static:ops",
        revises=revises.counted_as() if revises else None,
    )


def marks_of(store: FakeStore) -> tuple[ReviewMarks, ServerMetrics]:
    metrics = ServerMetrics()
    return ReviewMarks(MODEL, store, metrics), metrics  # type: ignore[arg-type]


def outcomes(metrics: ServerMetrics) -> dict[str, float]:
    return {o: metrics.review_marks.labels(o)._value.get() for o in ("first", "revision", "conflict", "failed")}


def test_a_first_review_then_a_revision_then_a_replay() -> None:
    store = FakeStore()
    marks, metrics = marks_of(store)
    assert marks.read("p1") == (None, None)
    first = review(2)
    marks.settle(first, None)
    mark, etag = marks.read("p1")
    assert mark is not None and mark.counted == first.counted_as() and etag == "e1"
    assert list(store.objects) == [review_mark_key(MODEL, "p1")] and review_mark_key(MODEL, "p1").endswith(
        "/receipts/.reviews/p1.json"
    )
    revised = review(1, revises=first)
    assert not mark.same_review(revised) and mark.same_review(review(2)), "same label, reason, reviewer: a replay"
    marks.settle(revised, etag)
    mark, _ = marks.read("p1")
    assert mark is not None and mark.counted.label == 1
    assert outcomes(metrics) == {"first": 1, "revision": 1, "conflict": 0, "failed": 0}


def test_a_write_that_landed_before_its_retry_is_not_a_conflict() -> None:
    store = FakeStore()
    marks, metrics = marks_of(store)
    first = review(2)
    store.objects[review_mark_key(MODEL, "p1")] = (ReviewMark.of(first).model_dump_json().encode(), "e0")
    marks.settle(first, None)  # If-None-Match fails on our own earlier attempt
    assert outcomes(metrics) == {"first": 1, "revision": 0, "conflict": 0, "failed": 0} and store.writes == 0


def test_a_review_stored_meanwhile_on_another_replica_is_a_conflict_and_the_later_one_is_marked() -> None:
    store = FakeStore()
    marks, metrics = marks_of(store)
    theirs = review(3)

    def other_replica_first() -> None:
        store.before_put = lambda: None
        store.put_if(review_mark_key(MODEL, "p1"), ReviewMark.of(theirs).model_dump_json().encode(), None)

    store.before_put = other_replica_first
    mine = review(2)
    marks.settle(mine, None)
    mark, _ = marks.read("p1")
    assert mark is not None and mark.counted.label == 2, "ours was stored later: the marker names it"
    assert outcomes(metrics)["conflict"] == 1 and outcomes(metrics)["first"] == 0


@pytest.mark.parametrize("what", ["read", "settle"])
def test_a_store_that_is_down_is_reported_not_raised_by_settle(what: str) -> None:
    store = FakeStore()
    store.down = True
    marks, metrics = marks_of(store)
    if what == "read":
        with pytest.raises(MarkUnavailable, match="cannot read the review marker"):
            marks.read("p1")
    else:
        marks.settle(review(2), None)
        assert outcomes(metrics)["failed"] == 1
