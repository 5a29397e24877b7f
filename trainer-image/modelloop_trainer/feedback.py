"""The feedback snapshot a training run learns from: every batch under ``<model>/feedback/`` up to
``MODELLOOP_FEEDBACK_THROUGH``.

The bound comes from the operator, so the snapshot is exactly what it counted when it decided to
retrain, and feedback arriving during training waits for the next version. What was used is
recorded in the manifest (``feedbackSnapshot``).

A prediction reviewed more than once (a replayed request, a reviewer changing their mind) is
one sample: the latest review per prediction id wins, in the samples and in the snapshot's counts.
Confirmations and corrections are both samples; only the operator's trigger tells them apart.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from modelloop.api.artifacts import FeedbackSnapshot, feedback_prefix
from modelloop.api.feedback import FeedbackRecord, decode_batch, latest_per_id
from modelloop.clients.objectstore import ObjectStore

from .plugin import InputError, ModelPlugin, Split

log = logging.getLogger(__name__)


def select_keys(keys: list[str], prefix: str, through: str | None) -> list[str]:
    """Batch keys in order up to and including ``through``; no bound means no feedback."""
    if through is None:
        return []
    return sorted(k for k in keys if k.startswith(prefix) and k.endswith(".jsonl") and k <= through)


def load_feedback(
    store: ObjectStore, plugin: ModelPlugin, model: str, through: str | None
) -> tuple[Split | None, FeedbackSnapshot]:
    """Feedback as a training split. Records the model cannot take (a client bypassing the server's
    validation, a label out of range) are skipped with a warning naming the batch, not fatal:
    one bad record must not block every future retraining."""
    prefix = feedback_prefix(model)
    keys = select_keys(list(store.list_keys(prefix)), prefix, through) if through else []
    reviewed: list[FeedbackRecord] = []
    for key in keys:
        try:
            batch = decode_batch(store.get_bytes(key))
        except ValidationError as e:
            log.warning(
                "feedback batch s3://%s/%s is malformed, skipping it: %s", store.bucket, key, e.errors()[0]["msg"]
            )
            continue
        reviewed.extend(batch)
    records: list[FeedbackRecord] = []
    for record in latest_per_id(reviewed):
        if record.input is None:
            log.warning(
                "feedback record %s skipped: its input is known by digest only (sha256 %s), not kept inline",
                record.id, record.input_sha256,
            )  # fmt: skip
            continue
        try:
            plugin.decode_feedback([record])
        except InputError as e:
            log.warning("feedback record %s skipped: %s", record.id, e)
            continue
        records.append(record)
    snapshot = FeedbackSnapshot(
        through_key=through or "",
        objects=len(keys),
        samples=len(records),
        corrections=sum(r.is_correction for r in records),
    )
    if not records:
        return None, snapshot
    log.info(
        "feedback: %d samples (%d corrections) from %d batches through %s",
        snapshot.samples,
        snapshot.corrections,
        snapshot.objects,
        through,
    )
    return plugin.decode_feedback(records), snapshot
