"""Inputs sent inline (OIP BYTES: encoded images) stored in the model's bucket, so their reviews can be trained on.

A photo sent by reference is already in the bucket and its receipt names it; a photo sent inline
existed only in the request. The OIP adapter (``oip.py``) hands each answered request's inline
elements to :meth:`InlineInputStore.keep`, which decides at once, without any I/O, whether the
input will be stored, and returns what the receipt says: where (``inputStored``,
``s3://<bucket>/<model>/inline-inputs/<sha256>``) or why not (``inputNotStored``). The upload
itself runs on this module's own threads, off the response path.

Content addressing makes storing free to repeat: the key is the input's SHA-256, so the same image
sent again (by any client, to any replica) is the same object, and this replica skips inputs it has
already stored or queued. What waits to be uploaded is bounded in bytes
(``MODELLOOP_INLINE_INPUT_MAX_BACKLOG_BYTES``); beyond it an input is not stored, the prediction is
answered all the same, and its receipt says so. An upload that fails (the store's own retries
included) is counted and logged; the receipt already named the key, so the trainer checks that the
object exists and counts a review whose input is missing as skipped (``inlineInputNotStored``).

The serving credentials may write ``<model>/inline-inputs/`` (docs/storage/serving-policy.json).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from modelloop.api.artifacts import inline_input_key
from modelloop.clients.objectstore import ObjectStore

from .metrics import ServerMetrics
from .receipts import InputFacts

log = logging.getLogger(__name__)

NOT_STORED_OFF = "storing inline inputs is off (MODELLOOP_INLINE_INPUT_MAX_BACKLOG_BYTES=0, or no bucket)"
NOT_STORED_FULL = "the server's queue of inline inputs to store was full (MODELLOOP_INLINE_INPUT_MAX_BACKLOG_BYTES)"
BACKLOG_FULL = "backlog_full"
UPLOAD_FAILED = "upload_failed"
OFF = "off"
NOT_STORED_REASONS = (BACKLOG_FULL, UPLOAD_FAILED, OFF)


@dataclass(frozen=True)
class Decision:
    """What one input's receipt says: the key it is stored under, or why it is not stored."""

    key: str | None
    reason: str | None = None  # a metric label, when not stored
    enqueue: bool = False  # True: this call must upload it (not stored or queued before)


class Admission:
    """The pure part: which inputs are accepted for storing, under a byte budget, without storing one twice.

    ``known`` holds the digests stored or queued by this replica (bounded, oldest forgotten first:
    forgetting one costs at most one repeated, identical upload).
    """

    def __init__(self, model: str, max_backlog_bytes: int, known_digests: int = 100_000) -> None:
        self.model = model
        self.max_backlog_bytes = max_backlog_bytes
        self.known_digests = known_digests
        self.backlog_bytes = 0
        self.known: OrderedDict[str, None] = OrderedDict()

    def admit(self, sha256: str, size: int) -> Decision:
        if self.max_backlog_bytes <= 0:
            return Decision(None, OFF)
        key = inline_input_key(self.model, sha256)
        if sha256 in self.known:
            self.known.move_to_end(sha256)
            return Decision(key)
        if self.backlog_bytes + size > self.max_backlog_bytes:
            return Decision(None, BACKLOG_FULL)
        self.backlog_bytes += size
        self.known[sha256] = None
        while len(self.known) > self.known_digests:
            self.known.popitem(last=False)
        return Decision(key, enqueue=True)

    def done(self, sha256: str, size: int, stored: bool) -> None:
        """An upload finished: its bytes leave the backlog; a failed one may be tried again by a later request."""
        self.backlog_bytes -= size
        if not stored:
            self.known.pop(sha256, None)


class InlineInputStore:
    """Stores inline inputs under ``<model>/inline-inputs/<sha256>`` on ``uploaders`` threads; one per server."""

    def __init__(
        self,
        model: str,
        store: ObjectStore | None,
        metrics: ServerMetrics,
        max_backlog_bytes: int = 64 << 20,
        uploaders: int = 2,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.admission = Admission(model, max_backlog_bytes if store is not None else 0)
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._failing = False
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"inline-input-{i}", daemon=True)
            for i in range(uploaders if self.admission.max_backlog_bytes > 0 else 0)
        ]
        for t in self._threads:
            t.start()

    def keep(self, elements: Sequence[bytes], facts: Sequence[InputFacts]) -> list[InputFacts]:
        """Each element's receipt facts with where it is stored (or why not); queues the uploads. No I/O."""
        out = []
        with self._lock:
            for data, f in zip(elements, facts, strict=True):
                assert f.sha256 is not None  # bytes_facts sets it for every element
                d = self.admission.admit(f.sha256, len(data))
                if d.enqueue:
                    self._queue.put((f.sha256, data))
                    self.metrics.inline_input_backlog_bytes.set(self.admission.backlog_bytes)
                if d.key is None:
                    self.metrics.inline_inputs_not_stored.labels(d.reason).inc()
                    why = NOT_STORED_OFF if d.reason == OFF else NOT_STORED_FULL
                    out.append(replace(f, not_stored=why))
                else:
                    assert self.store is not None
                    out.append(replace(f, stored=f"s3://{self.store.bucket}/{d.key}"))
        return out

    def _upload_loop(self) -> None:
        assert self.store is not None
        while (item := self._queue.get()) is not None:
            sha256, data = item
            key = inline_input_key(self.admission.model, sha256)
            try:
                self.store.put_bytes(key, data)
                stored = True
            except Exception as e:  # noqa: BLE001 — any store failure: counted, the trainer skips that review
                stored = False
                self.metrics.inline_inputs_not_stored.labels(UPLOAD_FAILED).inc()
                if not self._failing:  # once per episode, not once per input
                    self._failing = True
                    log.warning(
                        "cannot store inline inputs in s3://%s/%s (%s); predictions are answered, but reviews of "
                        "these inputs will be skipped by training (modelloop_server_inline_inputs_not_stored_total)",
                        self.store.bucket, key, e,
                    )  # fmt: skip
            with self._lock:
                self.admission.done(sha256, len(data), stored)
                self.metrics.inline_input_backlog_bytes.set(self.admission.backlog_bytes)
            if stored:
                self.metrics.inline_inputs_stored.inc()
                self.metrics.inline_input_bytes_stored.inc(len(data))
                if self._failing:
                    self._failing = False
                    log.info("inline inputs are stored again")

    def close(self, timeout: float = 10.0) -> None:
        """Upload what is queued, for at most ``timeout`` seconds; what is left is lost with the process."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout / max(1, len(self._threads)))
        if self.admission.backlog_bytes > 0:
            log.warning(
                "shutting down with %d bytes of inline inputs not stored; reviews of them will be skipped by training",
                self.admission.backlog_bytes,
            )
