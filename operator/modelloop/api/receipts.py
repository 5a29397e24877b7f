"""Prediction receipts and their ids: what the server answered, so a review can only label a real answer.

The server writes one receipt per prediction (per row of a batched request) and stores them in
batches under ``<model>/receipts/<stem>.jsonl``. A review names the prediction's id; the server
joins it to the receipt and takes the version, the predicted class and the input from there,
never from the client.

A server-generated id says where its receipt is stored: ``<stem>-<seq>[.<row>]``, where the stem
(``<UTC time the batch opened>-<8 hex>``) is the receipt batch's object name. Any replica can
therefore find any generated id's receipt with one GET, with no shared index. A client-supplied id
(``[A-Za-z0-9][A-Za-z0-9._:-]*``, at most 96 characters) carries no such address; ids shaped like
the server's are refused so that no client can plant a receipt under another prediction's id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from .artifacts import receipts_prefix
from .feedback import FeedbackRecord

MAX_CLIENT_ID = 96
"""Room for a batched request's ``.<row>`` suffix under :data:`MAX_ID`."""
MAX_ID = 128
MAX_ROWS_SUFFIX = 9999
STEM_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_GENERATED = re.compile(
    r"^(?P<stem>(?P<ts>[0-9]{8}T[0-9]{12}Z)-[0-9a-f]{8})-(?P<seq>[0-9]{1,9})(?:\.(?P<row>[0-9]{1,4}))?$"
)
_STEM_SHAPE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-")


class Receipt(BaseModel):
    """One answered prediction, as the server stored it."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    id: str = Field(max_length=MAX_ID, description="The prediction id returned to the client.")
    version: str = Field(description="The model version that answered.")
    predicted: int = Field(ge=0, description="The class index the server answered.")
    scores: list[float] = Field(description="The class probabilities the server answered, by class index.")
    input: list[float] | None = Field(
        default=None, description="The preprocessed input, flat, when it is small enough to keep inline."
    )
    input_sha256: str | None = Field(
        default=None, alias="inputSha256", description="SHA-256 of the input bytes when they were not kept inline."
    )
    input_size: int | None = Field(default=None, alias="inputSize", ge=0, description="Size of those input bytes.")
    input_ref: str | None = Field(
        default=None, alias="inputRef", description="The object reference the input was fetched from, if any."
    )
    at: datetime = Field(description="When the server answered.")


def new_stem(now: datetime | None = None) -> str:
    """The name of a receipt batch opened ``now``: sortable by time, unique by its random part."""
    return f"{(now or datetime.now(UTC)).astimezone(UTC).strftime(STEM_TIME_FORMAT)}-{secrets.token_hex(4)}"


def stem_key(model: str, stem: str) -> str:
    return f"{receipts_prefix(model)}{stem}.jsonl"


REVIEW_MARKS = ".reviews/"
"""Under the receipts prefix: one marker per reviewed prediction id (``modelloop_server.reviewmarks``). The
leading dot sorts it before every receipt batch (their names start with a year), so listing receipts
from a time, as the receipt search does, never lists markers."""


def review_mark_key(model: str, receipt_id: str) -> str:
    """The marker of the review stored for ``receipt_id`` (a checked id: ``[A-Za-z0-9][A-Za-z0-9._:-]*``)."""
    return f"{receipts_prefix(model)}{REVIEW_MARKS}{receipt_id}.json"


def generated_id(stem: str, seq: int) -> str:
    return f"{stem}-{seq}"


def row_id(request_id: str, row: int, rows: int) -> str:
    """A batched request's row ``row`` has its own receipt; a single prediction's id is the request's."""
    return request_id if rows == 1 else f"{request_id}.{row}"


def receipt_key(model: str, receipt_id: str) -> str | None:
    """The batch object holding a server-generated id's receipt; None for a client-supplied id."""
    m = _GENERATED.match(receipt_id)
    return stem_key(model, m["stem"]) if m else None


def issued_at(receipt_id: str) -> datetime | None:
    """When a server-generated id's batch opened (its receipt is no older); None for a client-supplied id."""
    m = _GENERATED.match(receipt_id)
    if not m:
        return None
    try:
        return datetime.strptime(m["ts"], STEM_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def key_at(model: str, t: datetime) -> str:
    """A key sorting before every receipt batch opened at or after ``t`` (whole seconds)."""
    return f"{receipts_prefix(model)}{t.astimezone(UTC).strftime('%Y%m%dT%H%M%S')}"


def check_client_id(value: object, field: str = "id") -> str:
    """A client's own prediction id, or ValueError naming ``field`` and what is allowed."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {type(value).__name__}")
    if len(value) > MAX_CLIENT_ID:
        raise ValueError(f"{field} is {len(value)} characters; a client-supplied id may have at most {MAX_CLIENT_ID}")
    if not _ID.match(value):
        raise ValueError(
            f"{field} {value[:40]!r} has characters outside letters, digits and . _ : - (it must start with a "
            "letter or digit)"
        )
    if _STEM_SHAPE.match(value):
        raise ValueError(
            f"{field} {value[:40]!r} has the shape of a server-generated id (<time>Z-<hex>-<n>), which is reserved; "
            "choose another id or omit it to get one"
        )
    return value


def check_review_id(value: object, field: str = "id") -> str:
    """The id a review names: any id the server could have returned (generated or a client's)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be the prediction id the server returned (a non-empty string)")
    if len(value) > MAX_ID or not _ID.match(value):
        raise ValueError(f"{field} {value[:40]!r} is not a prediction id this server could have returned")
    return value


def join(
    receipt: Receipt, label: int, reviewed_at: datetime, reviewer: str | None, reason: str | None
) -> FeedbackRecord:
    """The feedback record of a review: the reviewer's label and reason, everything else from the receipt."""
    return FeedbackRecord(
        id=receipt.id,
        version=receipt.version,
        input=receipt.input,
        input_sha256=receipt.input_sha256,
        input_size=receipt.input_size,
        input_ref=receipt.input_ref,
        predicted=receipt.predicted,
        label=label,
        reason=reason,
        reviewed_at=reviewed_at,
        reviewer=reviewer,
    )


def encode_receipts(receipts: Sequence[Receipt]) -> bytes:
    return b"".join(r.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n" for r in receipts)


def decode_receipts(data: bytes) -> list[Receipt]:
    return [Receipt.model_validate_json(line) for line in data.splitlines() if line.strip()]
