"""The feedback record: a reviewer's label for an input the server answered.

The server appends records in batches to ``<model>/feedback/<key>.jsonl``. Keys sort in time
order (UTC timestamp of the batch's cut first, then a random suffix); a batch uploaded late (after
an object-store outage) sorts among older ones, so the operator tracks what it counted by upload
time (``modelloop.decide.feedback``), and the trainer takes everything up to a key.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from .artifacts import feedback_prefix

KEY_TIME_FORMAT = "%Y%m%dT%H%M%S"
MAX_FEEDBACK_OBJECT_BYTES = 64 << 20
"""Larger objects under the feedback prefix are not read (quarantined): 100 records of the
largest review the server takes (1 MiB) stay well below it."""


MAX_REASON = 500


class RevisedReview(BaseModel):
    """What an earlier review of the same prediction contributed to the operator's counts.

    The server that takes a second review of an id writes it with the first one's facts here, so the
    operator counts the pair as one review whose latest label wins (``modelloop.decide.reviewcount``):
    it takes the first one's contribution back and adds the new one's, with no memory of ids of its own."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    version: str = Field(description="The version the revised review labelled.")
    predicted: int = Field(ge=0, description="What that version answered.")
    label: int = Field(ge=0, description="The revised review's label.")
    shadow_version: str | None = Field(default=None, alias="shadowVersion", description="Its shadow candidate.")
    shadow_predicted: int | None = Field(
        default=None, alias="shadowPredicted", ge=0, description="What its shadow candidate predicted."
    )


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id: str = Field(description="The reviewed prediction's id (its receipt's); a later review of it replaces this one.")
    version: str = Field(description="The model version that answered (from the receipt, not the reviewer).")
    input: list[float] | list[list[float]] | None = Field(
        default=None,
        description="The input the model answered, when its receipt kept it inline; None for large or encoded "
        "inputs, which are known by digest (inputSha256) or reference (inputRef) only.",
    )
    input_sha256: str | None = Field(default=None, alias="inputSha256", description="SHA-256 of an encoded input.")
    input_size: int | None = Field(default=None, alias="inputSize", ge=0, description="Size of that input in bytes.")
    input_ref: str | None = Field(default=None, alias="inputRef", description="Object reference of the input.")
    predicted: int = Field(ge=0, description="What the server answered (from the receipt).")
    label: int = Field(ge=0, description="The reviewer's answer.")
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description='Why the reviewer answered so ("missed stain"); absent in older records.',
    )
    shadow_version: str | None = Field(
        default=None,
        alias="shadowVersion",
        description="The candidate that scored the same input in the shadow, when the replica that joined the "
        "review holds that pair: the review then labels both models (the paired promotion test).",
    )
    shadow_predicted: int | None = Field(
        default=None, alias="shadowPredicted", ge=0, description="What the shadow candidate predicted."
    )
    reviewed_at: datetime = Field(alias="reviewedAt")
    reviewer: str | None = Field(
        default=None,
        max_length=512,
        description="Who reviewed: the authenticated identity (a ServiceAccount user name, or static:<name>); "
        "absent in records written before reviews were authenticated.",
    )
    revises: RevisedReview | None = Field(
        default=None,
        description="Set when this review replaces an earlier review of the same id that is already stored: "
        "counted as a change of that review, not as a new one. Absent for an id's first review.",
    )

    @property
    def is_correction(self) -> bool:
        return self.label != self.predicted

    def counted_as(self) -> RevisedReview:
        """What this review contributes to the counts: the ``revises`` of a later review of the same id."""
        return RevisedReview(
            version=self.version,
            predicted=self.predicted,
            label=self.label,
            shadow_version=self.shadow_version,
            shadow_predicted=self.shadow_predicted,
        )


def batch_key(model: str, now: datetime | None = None) -> str:
    """A sortable, unique object key for one flushed batch."""
    ts = (now or datetime.now(UTC)).strftime(f"{KEY_TIME_FORMAT}.%fZ")
    return f"{feedback_prefix(model)}{ts}-{secrets.token_hex(4)}.jsonl"


def key_at(model: str, t: datetime) -> str:
    """A key sorting before every batch key cut at or after ``t`` (whole seconds), after those before it."""
    return f"{feedback_prefix(model)}{t.astimezone(UTC).strftime(KEY_TIME_FORMAT)}"


def encode_batch(records: list[FeedbackRecord]) -> bytes:
    """JSON lines; fields that are None are left out, so records without the newer fields read as before."""
    return b"".join(r.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n" for r in records)


def latest_per_id(records: list[FeedbackRecord]) -> list[FeedbackRecord]:
    """One record per prediction id: the latest review (by review time, then by order given) replaces earlier
    ones, so a replayed or revised review is not counted twice. The result keeps the order of first appearance."""
    latest: dict[str, FeedbackRecord] = {}
    for r in records:
        held = latest.get(r.id)
        if held is None or r.reviewed_at >= held.reviewed_at:
            latest[r.id] = r
    return list(latest.values())


def decode_batch(data: bytes) -> list[FeedbackRecord]:
    return [FeedbackRecord.model_validate_json(line) for line in data.splitlines() if line.strip()]
