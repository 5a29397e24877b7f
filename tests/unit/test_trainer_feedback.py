"""Which reviews a training run can learn from, and how: inline, by reference, or skipped with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelloop.api.feedback import FeedbackRecord
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.feedback import (
    SKIP_BAD_INPUT,
    SKIP_BAD_LABEL,
    SKIP_DIGEST_ONLY,
    SKIP_NOT_STORED,
    SKIP_NOT_STREAMING,
    SKIP_OUTSIDE_BUCKET,
    drop_unstored,
    sort_records,
)
from modelloop_trainer.plugin import ModelPlugin

BUCKET = "laundry-bucket"
AT = datetime(2026, 12, 1, tzinfo=UTC)


def record(rid: str, **kw: Any) -> FeedbackRecord:
    return FeedbackRecord.model_validate(
        {"id": rid, "version": "v1", "predicted": 0, "label": 1, "reviewedAt": AT, **kw}
    )


REF = {"inputRef": f"s3://{BUCKET}/laundry/inputs/TASK-1.png", "inputSha256": "a" * 64, "inputSize": 10}
STORED = {"inputStored": f"s3://{BUCKET}/laundry/inline-inputs/{'c' * 64}", "inputSha256": "c" * 64, "inputSize": 10}
CASES: list[tuple[str, ModelPlugin, dict[str, Any], str]] = [
    ("an image by reference is streamed", LaundryPlugin(image_size=32), REF, "ref"),
    ("an inline image known by digest only", LaundryPlugin(image_size=32), {"inputSha256": "b" * 64}, SKIP_DIGEST_ONLY),
    (
        "a reference in another bucket",
        LaundryPlugin(image_size=32),
        {"inputRef": "s3://other/laundry/inputs/x.png"},
        SKIP_OUTSIDE_BUCKET,
    ),
    ("a bucket with no key", LaundryPlugin(image_size=32), {"inputRef": f"s3://{BUCKET}/"}, SKIP_OUTSIDE_BUCKET),
    ("a label past the classes", LaundryPlugin(image_size=32), {**REF, "label": 2}, SKIP_BAD_LABEL),
    ("a reference for a numbers-only plug-in", DigitsPlugin(), REF, SKIP_NOT_STREAMING),
    ("small numeric input kept inline", DigitsPlugin(), {"input": [1.0] * 64}, "inline"),
    ("an inline image the server stored is streamed", LaundryPlugin(image_size=32), STORED, "ref"),
    (
        "an inline image the server did not store",
        LaundryPlugin(image_size=32),
        {"inputSha256": "c" * 64, "inputNotStored": "the queue was full"},
        SKIP_NOT_STORED,
    ),
    ("a stored image for a numbers-only plug-in", DigitsPlugin(), STORED, SKIP_NOT_STREAMING),
    (
        "a stored image in another bucket",
        LaundryPlugin(image_size=32),
        {"inputStored": f"s3://other/laundry/inline-inputs/{'c' * 64}"},
        SKIP_OUTSIDE_BUCKET,
    ),
    ("inline input of the wrong shape", DigitsPlugin(), {"input": [1.0] * 3}, SKIP_BAD_INPUT),
]


@pytest.mark.parametrize(("plugin", "fields", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_review_is_sorted_by_how_its_input_can_be_read(
    plugin: ModelPlugin, fields: dict[str, Any], expected: str
) -> None:
    inline, by_ref, skipped = sort_records([record("p1", **fields)], plugin, BUCKET)
    got = "inline" if inline else "ref" if by_ref else next(iter(skipped))
    assert got == expected
    assert len(inline) + len(by_ref) + sum(skipped.values()) == 1


def test_confirmations_and_corrections_are_both_kept_and_skips_counted_per_reason() -> None:
    records = [
        record("confirmed", **REF, label=0),
        record("corrected", **REF, label=1),
        record("digest-1", inputSha256="c" * 64),
        record("digest-2", inputSha256="d" * 64),
    ]
    inline, by_ref, skipped = sort_records(records, LaundryPlugin(image_size=32), BUCKET)
    assert inline == [] and [r.id for r in by_ref] == ["confirmed", "corrected"]
    assert [r.is_correction for r in by_ref] == [False, True]
    assert dict(skipped) == {SKIP_DIGEST_ONLY: 2}


class FakeStore:
    """Only what drop_unstored asks: whether a key exists."""

    bucket = BUCKET

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.asked: list[str] = []

    def exists(self, key: str) -> bool:
        self.asked.append(key)
        return key in self.keys


def test_a_stored_inline_input_missing_from_the_bucket_is_skipped_and_a_referenced_one_is_not_looked_up() -> None:
    plugin = LaundryPlugin(image_size=32)
    present = record("present", **STORED)
    missing = record("missing", inputStored=f"s3://{BUCKET}/laundry/inline-inputs/{'d' * 64}", inputSha256="d" * 64)
    referenced = record("referenced", **REF)
    _, by_ref, skipped = sort_records([present, missing, referenced], plugin, BUCKET)
    store = FakeStore({f"laundry/inline-inputs/{'c' * 64}"})

    kept = drop_unstored(by_ref, store, skipped)  # type: ignore[arg-type]

    assert [r.id for r in kept] == ["present", "referenced"]
    assert kept[0].input_ref == STORED["inputStored"]
    assert skipped == {SKIP_NOT_STORED: 1}
    assert sorted(store.asked) == [f"laundry/inline-inputs/{'c' * 64}", f"laundry/inline-inputs/{'d' * 64}"]
