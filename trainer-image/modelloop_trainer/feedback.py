"""The feedback snapshot a training run learns from: every batch under ``<model>/feedback/`` up to
``MODELLOOP_FEEDBACK_THROUGH``.

The bound comes from the operator, so the snapshot is exactly what it counted when it decided to
retrain, and feedback arriving during training waits for the next version. What was used is
recorded in the manifest (``feedbackSnapshot``) and, with what was skipped and why, in metrics.json.

A prediction reviewed more than once (a replayed request, a reviewer changing their mind) is
one sample: the latest review per prediction id wins, in the samples and in the snapshot's counts.
Confirmations and corrections are both samples; only the operator's trigger tells them apart.

A reviewed input reaches training one of three ways: inline (small numeric inputs the receipt
kept), by reference (an image the server fetched from ``s3://<bucket>/...``), or stored (an image
sent inline as BYTES, which the server stored under ``<model>/inline-inputs/<sha256>``). A reference
or a stored input becomes a :class:`~.streaming.Sample` of the same index the base dataset streams
from: the object is read, decoded and augmented by the DataLoader workers like any dataset image,
never copied. A stored input is looked up (HEAD) first: the server names the key in the receipt
before its asynchronous upload, so an upload that failed must skip the review, not fail the Job.
An input known by digest only (the server did not store it, or a large numeric input) cannot be
trained on; it is counted under ``feedbackSkipped`` with its reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import ValidationError

from modelloop.api.artifacts import FeedbackSnapshot, feedback_prefix
from modelloop.api.feedback import FeedbackRecord, decode_batch, latest_per_id
from modelloop.clients.objectstore import ObjectStore

from .plugin import InputError, ModelPlugin, Split
from .streaming import Sample, StreamingPlugin

log = logging.getLogger(__name__)

SKIP_DIGEST_ONLY = "inputKnownByDigestOnly"
SKIP_NOT_STREAMING = "referenceButPluginTakesNumbers"
SKIP_OUTSIDE_BUCKET = "referenceOutsideBucket"
SKIP_BAD_LABEL = "labelNotAClass"
SKIP_BAD_INPUT = "inputDoesNotFit"
SKIP_NOT_STORED = "inlineInputNotStored"
EXISTS_THREADS = 8


@dataclass(frozen=True)
class Feedback:
    """The usable reviews: inline inputs as a split, referenced ones as index samples; and what was skipped."""

    inline: Split | None
    refs: list[Sample]
    snapshot: FeedbackSnapshot
    skipped: dict[str, int] = field(default_factory=dict)
    stored_inline: int = 0  # of ``refs``, the inputs sent inline that the server stored

    @property
    def samples(self) -> int:
        return (len(self.inline) if self.inline is not None else 0) + len(self.refs)


def select_keys(keys: list[str], prefix: str, through: str | None) -> list[str]:
    """Batch keys in order up to and including ``through``; no bound means no feedback."""
    if through is None:
        return []
    return sorted(k for k in keys if k.startswith(prefix) and k.endswith(".jsonl") and k <= through)


def sort_records(
    records: Sequence[FeedbackRecord], plugin: ModelPlugin, bucket: str
) -> tuple[list[FeedbackRecord], list[FeedbackRecord], Counter[str]]:
    """(inline records, by-reference records, skipped counts by reason): pure, no I/O.

    A record that carries both an inline input and a reference is taken inline (no fetch needed).
    """
    inline: list[FeedbackRecord] = []
    by_ref: list[FeedbackRecord] = []
    skipped: Counter[str] = Counter()
    own = f"s3://{bucket}/"
    for r in records:
        if r.input is None and r.input_ref is None and r.input_stored is not None:
            r = r.model_copy(update={"input_ref": r.input_stored})  # a stored input streams like a reference
        if r.label >= plugin.num_classes:
            why = f"label {r.label} is not a class (0..{plugin.num_classes - 1})"
            log.warning("feedback record %s skipped: %s", r.id, why)
            skipped[SKIP_BAD_LABEL] += 1
        elif r.input is not None:
            try:
                plugin.decode_feedback([r])
            except InputError as e:
                log.warning("feedback record %s skipped: %s", r.id, e)
                skipped[SKIP_BAD_INPUT] += 1
                continue
            inline.append(r)
        elif r.input_ref is not None:
            if not isinstance(plugin, StreamingPlugin):
                log.warning(
                    "feedback record %s skipped: its input is the object %s, but plug-in %s takes numbers, not encoded "
                    "objects", r.id, r.input_ref, type(plugin).__name__,
                )  # fmt: skip
                skipped[SKIP_NOT_STREAMING] += 1
            elif not r.input_ref.startswith(own) or len(r.input_ref) == len(own):
                log.warning("feedback record %s skipped: %s is not in the model's bucket %s", r.id, r.input_ref, own)
                skipped[SKIP_OUTSIDE_BUCKET] += 1
            else:
                by_ref.append(r)
        elif r.input_not_stored is not None:
            log.warning(
                "feedback record %s skipped: its input was sent inline and the server did not store it (%s)",
                r.id, r.input_not_stored,
            )  # fmt: skip
            skipped[SKIP_NOT_STORED] += 1
        else:
            log.warning(
                "feedback record %s skipped: its input is known by digest only (sha256 %s): a large numeric input, or "
                "an image sent inline to a server that predates storing them; send inputs by reference (s3://) or "
                "as encoded bytes for reviews to be trained on", r.id, r.input_sha256,
            )  # fmt: skip
            skipped[SKIP_DIGEST_ONLY] += 1
    return inline, by_ref, skipped


def drop_unstored(records: Sequence[FeedbackRecord], store: ObjectStore, skipped: Counter[str]) -> list[FeedbackRecord]:
    """By-reference records without the ones whose stored inline input is not in the bucket (counted in ``skipped``).

    Only inputs the server stored are looked up: a missing object a client referenced fails the Job
    naming it, as a missing dataset image does.
    """
    prefix = f"s3://{store.bucket}/"
    stored = [r for r in records if r.input_stored is not None and r.input_ref == r.input_stored]
    if not stored:
        return list(records)
    keys = {r.id: r.input_stored[len(prefix) :] for r in stored if r.input_stored is not None}
    with ThreadPoolExecutor(EXISTS_THREADS, thread_name_prefix="feedback-exists") as pool:
        present = dict(zip(keys, pool.map(store.exists, keys.values()), strict=True))
    kept = []
    for r in records:
        if present.get(r.id, True):
            kept.append(r)
        else:
            log.warning(
                "feedback record %s skipped: the server named %s for its input sent inline, but did not store it "
                "(see modelloop_server_inline_inputs_not_stored_total)", r.id, r.input_stored,
            )  # fmt: skip
            skipped[SKIP_NOT_STORED] += 1
    return kept


def load_feedback(store: ObjectStore, plugin: ModelPlugin, model: str, through: str | None) -> Feedback:
    """Feedback for training. Records the model cannot take (a client bypassing the server's
    validation, a label out of range, an input known by digest only) are skipped and counted, not
    fatal: one bad record must not block every future retraining."""
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
    inline, by_ref, skipped = sort_records(latest_per_id(reviewed), plugin, store.bucket)
    by_ref = drop_unstored(by_ref, store, skipped)
    used = [*inline, *by_ref]
    snapshot = FeedbackSnapshot(
        through_key=through or "",
        objects=len(keys),
        samples=len(used),
        corrections=sum(r.is_correction for r in used),
    )
    refs = [Sample(r.input_ref, r.label) for r in by_ref if r.input_ref is not None]
    if used or skipped:
        log.info(
            "feedback: %d samples (%d corrections; %d inline, %d by reference) from %d batches through %s%s",
            snapshot.samples,
            snapshot.corrections,
            len(inline),
            len(refs),
            snapshot.objects,
            through,
            f"; skipped {dict(skipped)}" if skipped else "",
        )
    return Feedback(
        inline=plugin.decode_feedback(inline) if inline else None,
        refs=refs,
        snapshot=snapshot,
        skipped=dict(skipped),
        stored_inline=sum(r.input_stored is not None for r in by_ref),
    )
