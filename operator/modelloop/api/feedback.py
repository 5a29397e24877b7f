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


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id: str = Field(description="Client-supplied or server-generated id of the reviewed request.")
    version: str = Field(description="The model version that answered.")
    input: list[float] | list[list[float]] = Field(description="The input the model answered.")
    predicted: int = Field(ge=0)
    label: int = Field(ge=0, description="The reviewer's answer.")
    reviewed_at: datetime = Field(alias="reviewedAt")
    reviewer: str | None = Field(
        default=None,
        max_length=512,
        description="Who reviewed: the authenticated identity (a ServiceAccount user name, or static:<name>); "
        "absent in records written before reviews were authenticated.",
    )

    @property
    def is_correction(self) -> bool:
        return self.label != self.predicted


def batch_key(model: str, now: datetime | None = None) -> str:
    """A sortable, unique object key for one flushed batch."""
    ts = (now or datetime.now(UTC)).strftime(f"{KEY_TIME_FORMAT}.%fZ")
    return f"{feedback_prefix(model)}{ts}-{secrets.token_hex(4)}.jsonl"


def key_at(model: str, t: datetime) -> str:
    """A key sorting before every batch key cut at or after ``t`` (whole seconds), after those before it."""
    return f"{feedback_prefix(model)}{t.astimezone(UTC).strftime(KEY_TIME_FORMAT)}"


def encode_batch(records: list[FeedbackRecord]) -> bytes:
    return b"".join(r.model_dump_json(by_alias=True).encode() + b"\n" for r in records)


def decode_batch(data: bytes) -> list[FeedbackRecord]:
    return [FeedbackRecord.model_validate_json(line) for line in data.splitlines() if line.strip()]
