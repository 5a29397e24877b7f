"""Prediction receipts: what this server answered, stored so that any replica can join a review to it.

``/v1/predict`` and the OIP ``infer`` call :meth:`ReceiptBook.record` once per answered request;
it returns the prediction ids the response carries. Receipts go into a :class:`~.spool.BatchSpool`
(uploaded to ``<model>/receipts/<stem>.jsonl`` in batches, journaled without a per-record fsync:
they survive a killed process, not a lost node) and into a bounded in-memory index.

``POST /v1/feedback`` calls :meth:`ReceiptBook.lookup` (off the event loop: it may read the
bucket). A server-generated id names its batch (``modelloop.api.receipts``), so a replica that
did not answer fetches that one object and caches it (bounded). A client-supplied id names no
batch: it is found in this replica's memory, or by a bounded search of the newest receipt batches
(at most ``search_batches`` objects opened in the last ``search_window``); reviews of client ids
that must work from any replica later than that should use the id the server generates.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from torch import Tensor

from modelloop.api.artifacts import receipts_prefix
from modelloop.api.receipts import (
    Receipt,
    decode_receipts,
    encode_receipts,
    generated_id,
    issued_at,
    key_at,
    new_stem,
    receipt_key,
    row_id,
    stem_key,
)
from modelloop.clients.objectstore import NotFound, ObjectStore

from .metrics import ServerMetrics
from .spool import BacklogFull, BatchSpool, SpoolKind, SpoolMetrics, SpoolUnavailable

log = logging.getLogger(__name__)


class ReceiptStoreUnavailable(RuntimeError):
    """The bucket could not be read to find a receipt; the review can be retried."""


@dataclass(frozen=True)
class InputFacts:
    """What a receipt keeps of one input: the values when small, else their digest and size (and a reference,
    or where the server stores an input sent inline, or why it does not)."""

    values: list[float] | None = None
    sha256: str | None = None
    size: int | None = None
    ref: str | None = None
    stored: str | None = None
    not_stored: str | None = None


def tensor_facts(x: Tensor, max_inline: int) -> list[InputFacts]:
    """Per row of ``[N, ...]``: the flat values up to ``max_inline`` of them, else the float32 bytes' digest."""
    rows = x.reshape(x.shape[0], -1)
    if rows.shape[1] <= max_inline:
        return [InputFacts(values=values) for values in rows.tolist()]
    out = []
    for row in rows:
        raw = row.contiguous().float().numpy().astype("<f4", copy=False).tobytes()
        out.append(InputFacts(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw)))
    return out


def bytes_facts(elements: Sequence[bytes], refs: Sequence[str] | None = None) -> list[InputFacts]:
    """Encoded inputs (OIP BYTES, e.g. image files): their digest and size, never the bytes themselves,
    and the ``s3://`` reference each was fetched from, so training can read the input a review names."""
    return [
        InputFacts(sha256=hashlib.sha256(e).hexdigest(), size=len(e), ref=refs[i] if refs else None)
        for i, e in enumerate(elements)
    ]


class ReceiptBook:
    def __init__(
        self,
        model: str,
        store: ObjectStore | None,
        spool_dir: Path,
        metrics: ServerMetrics,
        batch_records: int = 500,
        flush_seconds: float = 5.0,
        max_backlog: int = 200_000,
        max_bytes: int = 256 << 20,
        index_size: int = 100_000,
        cache_batches: int = 32,
        max_age: timedelta = timedelta(hours=168),
        search_window: timedelta = timedelta(hours=1),
        search_batches: int = 20,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        spool: bool | None = None,
    ) -> None:
        """``spool``: write receipts to the spool (default: when there is a store to upload them to;
        without one they are kept in memory only, as there is nowhere for reviews to be stored either)."""
        self.model = model
        self.store = store
        self.metrics = metrics
        self.index_size = index_size
        self.cache_batches = cache_batches
        self.max_age = max_age
        self.search_window = search_window
        self.search_batches = search_batches
        self.now = now
        kind = SpoolKind[Receipt](
            what="receipt",
            item="receipt",
            env_prefix="MODELLOOP_RECEIPT",
            prefix=receipts_prefix(model),
            new_key=lambda: stem_key(model, new_stem(now())),
            encode=encode_receipts,
            decode=decode_receipts,
            metrics=SpoolMetrics(
                metrics.receipts_written,
                metrics.receipt_flush_errors,
                metrics.receipt_backlog,
                metrics.receipt_backlog_bytes,
            ),
            fsync_each=False,
            key_at_open=True,
            key_of=lambda records: next((k for r in records if (k := receipt_key(model, r.id))), None),
        )
        self.spool = BatchSpool(kind, store, spool_dir, batch_records, flush_seconds, max_backlog, clock, max_bytes)
        self.spooling = store is not None if spool is None else spool
        self._failing = False
        self._lock = threading.Lock()
        self._index: OrderedDict[str, Receipt] = OrderedDict()
        self._cache: OrderedDict[str, dict[str, Receipt]] = OrderedDict()

    def record(
        self, version: str, probs: Tensor, inputs: Sequence[InputFacts], client_id: str | None = None
    ) -> tuple[str, list[str]]:
        """Write one receipt per row and return (the request's id, each row's id).

        A receipt that cannot be spooled (backlog full, volume refusing writes) does not fail the
        prediction: it is counted and kept in memory only, where this replica can still join it.
        """
        rows = probs.shape[0]
        at = self.now()
        scores: list[list[float]] = probs.tolist()
        # The first of tied maxima, as the answer's torch.max takes it; in Python, one torch call fewer.
        predicted = [max(range(len(row)), key=row.__getitem__) for row in scores]
        request = client_id or ""

        def build(key: str | None, position: int) -> list[Receipt]:
            nonlocal request
            if client_id is None:
                stem = key.rsplit("/", 1)[1].removesuffix(".jsonl") if key else new_stem(at)
                request = generated_id(stem, position)
            # model_construct: every value comes from this server's own tensors, and validating 64+10
            # floats per answer through pydantic costs more than the rest of the receipt together.
            return [
                Receipt.model_construct(
                    id=row_id(request, i, rows),
                    version=version,
                    predicted=predicted[i],
                    scores=scores[i],
                    input=facts.values,
                    input_sha256=facts.sha256,
                    input_size=facts.size,
                    input_ref=facts.ref,
                    input_stored=facts.stored,
                    input_not_stored=facts.not_stored,
                    at=at,
                )
                for i, facts in enumerate(inputs)
            ]

        if not self.spooling:
            receipts = build(None, 0)
        else:
            try:
                receipts, _ = self.spool.add_keyed(build)
                if self._failing:
                    self._failing = False
                    log.info("receipts are spooled again")
            except (BacklogFull, SpoolUnavailable) as e:
                reason = "backlog_full" if isinstance(e, BacklogFull) else "spool_unavailable"
                self.metrics.receipts_failed.labels(reason).inc(rows)
                if not self._failing:  # once per episode, not once per prediction
                    self._failing = True
                    log.warning(
                        "receipts are kept in memory only until the spool takes them again "
                        "(modelloop_server_receipts_failed_total counts them): %s", e,
                    )  # fmt: skip
                receipts = build(None, 0)
        with self._lock:
            for r in receipts:
                self._index[r.id] = r
                self._index.move_to_end(r.id)
            while len(self._index) > self.index_size:
                self._index.popitem(last=False)
        return request, [r.id for r in receipts]

    def in_memory(self, receipt_id: str) -> Receipt | None:
        with self._lock:
            return self._index.get(receipt_id)

    def expired(self, receipt_id: str) -> bool:
        """A generated id older than the retention: its receipt may be gone, and is no longer joined."""
        t = issued_at(receipt_id)
        return t is not None and self.now() - t > self.max_age

    def lookup(self, receipt_id: str) -> tuple[Receipt | None, str]:
        """(the receipt, where it was found: memory or bucket), or (None, "unknown").

        Blocks on the object store for ids this replica does not hold: call it off the event loop.
        Raises :class:`ReceiptStoreUnavailable` when the bucket cannot be read.
        """
        found = self.in_memory(receipt_id)
        if found is not None:
            return found, "memory"
        key = receipt_key(self.model, receipt_id)
        keys = [key] if key is not None else self._recent_keys()
        for k in keys:
            pending = self.spool.pending(k)
            batch = {r.id: r for r in pending} if pending is not None else self._batch(k)
            if receipt_id in batch:
                return batch[receipt_id], "bucket"
        return None, "unknown"

    def _recent_keys(self) -> list[str]:
        """The newest receipt batches opened within the search window, newest first, at most ``search_batches``."""
        if self.store is None:
            return []
        start = key_at(self.model, self.now() - self.search_window)
        try:
            keys = sorted(k for k in self.store.list_keys(receipts_prefix(self.model), start) if k.endswith(".jsonl"))
        except Exception as e:  # noqa: BLE001 — any store failure: the caller answers 503 and the reviewer retries
            raise ReceiptStoreUnavailable(f"cannot list receipts in s3://{self.store.bucket}: {e}") from None
        return keys[::-1][: self.search_batches]

    def _batch(self, key: str) -> dict[str, Receipt]:
        """One stored batch by id, from the bounded cache or the bucket; a missing batch is not cached
        (it may be the answering replica's batch not uploaded yet)."""
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        if self.store is None:
            return {}
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            return {}
        except Exception as e:  # noqa: BLE001 — see _recent_keys
            raise ReceiptStoreUnavailable(f"cannot read s3://{self.store.bucket}/{key}: {e}") from None
        try:
            batch = {r.id: r for r in decode_receipts(data)}
        except ValueError as e:
            log.error(
                "receipt batch s3://%s/%s is unreadable (%s); its predictions cannot be reviewed",
                self.store.bucket, key, e,
            )  # fmt: skip
            batch = {}
        with self._lock:
            self._cache[key] = batch
            while len(self._cache) > self.cache_batches:
                self._cache.popitem(last=False)
        return batch
