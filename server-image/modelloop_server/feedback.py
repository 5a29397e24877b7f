"""Reviewed labels on their way to the bucket: a :class:`~.spool.BatchSpool` of feedback records.

In spool mode (``MODELLOOP_FEEDBACK_DURABILITY=spool``; the default, write-through, is
:mod:`.groupcommit`, and uses this spool only to upload what a previous run left on the volume)
``POST /v1/feedback`` appends to the open batch and fsyncs its journal before answering 202: a
server killed outright (OOM, SIGKILL) or a node losing power loses no accepted review. A review
that cannot be written durably is refused (503), never accepted into memory only. When reviews
must outlive Pod deletion during an object-store outage, ``MODELLOOP_FEEDBACK_SPOOL_DIR`` should
be on a volume that outlives the Pod (a PersistentVolumeClaim per replica, e.g. a StatefulSet).
Batch keys are chosen when a batch is cut (``modelloop.api.feedback.batch_key``); the operator
counts by upload time and the trainer reads up to a key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from modelloop.api.artifacts import feedback_prefix
from modelloop.api.feedback import FeedbackRecord, batch_key, decode_batch, encode_batch
from modelloop.clients.objectstore import ObjectStore

from .metrics import ServerMetrics
from .spool import OPEN_JOURNAL, BacklogFull, BatchSpool, SpoolKind, SpoolMetrics, SpoolUnavailable, fsync_dir

__all__ = ["OPEN_JOURNAL", "BacklogFull", "FeedbackBuffer", "SpoolUnavailable", "fsync_dir"]


class FeedbackBuffer(BatchSpool[FeedbackRecord]):
    def __init__(
        self,
        model: str,
        store: ObjectStore | None,
        spool_dir: Path,
        metrics: ServerMetrics,
        batch_records: int = 100,
        flush_seconds: float = 5.0,
        max_backlog: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 256 << 20,
    ) -> None:
        kind = SpoolKind[FeedbackRecord](
            what="feedback",
            item="review",
            env_prefix="MODELLOOP_FEEDBACK",
            prefix=feedback_prefix(model),
            new_key=lambda: batch_key(model),
            encode=encode_batch,
            decode=decode_batch,
            metrics=SpoolMetrics(
                metrics.feedback_flushed,
                metrics.feedback_flush_errors,
                metrics.feedback_backlog,
                metrics.feedback_backlog_bytes,
            ),
        )
        super().__init__(kind, store, spool_dir, batch_records, flush_seconds, max_backlog, clock, max_bytes)
        self.model = model
        self.metrics = metrics

    def add(self, record: FeedbackRecord) -> bool:
        full = super().add(record)
        self.metrics.feedback_received.labels("correction" if record.is_correction else "confirmation").inc()
        return full
