"""Reviewed labels on their way to the bucket: batched, spooled to disk, never dropped silently.

``POST /v1/feedback`` appends to an open batch and to its journal file in the spool directory
before answering 202, so a server killed outright (OOM, SIGKILL) loses no accepted review. A batch
is cut when it holds ``batch_records`` records or has been open ``flush_seconds`` (so a burst of
reviews is a few uploads, not thousands); it gets its object key at once and its journal becomes
that key's spool file before the upload is tried. The upload reuses that key on every retry (an
ambiguous failure cannot store a batch twice) and the spool file is removed only after the object
store confirmed it. While MinIO is down batches wait in memory and in the spool; a restarted
server picks the spool up again. Only when the backlog passes ``max_backlog`` records are new
reviews refused (503), which is the one way a client learns that its feedback was not taken.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from modelloop.api.artifacts import feedback_prefix
from modelloop.api.feedback import FeedbackRecord, batch_key, decode_batch, encode_batch
from modelloop.clients.objectstore import ObjectStore

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

OPEN_JOURNAL = ".open.jsonl.part"
"""The open batch's records, one JSON line each, in the spool directory."""


class BacklogFull(RuntimeError):
    """Too many records are waiting for the object store; the message says how many and why."""


class FeedbackBuffer:
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
    ) -> None:
        self.model = model
        self.store = store
        self.spool_dir = spool_dir
        self.metrics = metrics
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.max_backlog = max_backlog
        self.clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._open: list[FeedbackRecord] = []
        self._opened_at = 0.0
        self._pending: dict[str, list[FeedbackRecord]] = {}
        self._retry_at = 0.0
        self._failures = 0
        self._journal: BinaryIO | None = None
        self._journal_ok = True

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._backlog_locked()

    def _backlog_locked(self) -> int:
        return len(self._open) + sum(len(b) for b in self._pending.values())

    def restore_spool(self) -> int:
        """Batches a previous run could not store; they are uploaded first, under their original keys."""
        if not self.spool_dir.is_dir():
            return 0
        restored = 0
        prefix = feedback_prefix(self.model)
        # ".<key>.tmp" is a spool write a killed run never renamed: complete files are its batch.
        unfinished = {p: p.name[1 : -len(".tmp")] for p in self.spool_dir.glob(".*.jsonl.tmp")}
        finished = {p: p.name for p in self.spool_dir.glob("*.jsonl")}
        for path, name in sorted({**finished, **unfinished}.items(), key=lambda item: item[1]):
            try:
                records = decode_batch(path.read_bytes())
            except (OSError, ValueError) as e:
                self._set_aside(path, name, e)
                continue
            if path in unfinished:
                path.rename(self.spool_dir / name)
            with self._lock:
                self._pending[prefix + name] = records
            restored += len(records)
        restored += self._restore_journal()
        self._update_gauge()
        if restored:
            log.warning(
                "restored %d feedback records from the spool in %s; uploading them first", restored, self.spool_dir
            )
        return restored

    def _restore_journal(self) -> int:
        """The open batch of a run that died before cutting it becomes a pending batch of its own."""
        path = self.spool_dir / OPEN_JOURNAL
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return 0
        except OSError as e:
            self._set_aside(path, OPEN_JOURNAL, e)
            return 0
        records: list[FeedbackRecord] = []
        for n, line in enumerate(lines, 1):
            try:
                records.extend(decode_batch(line))
            except ValueError as e:
                # Only a write cut short by the kill can be torn: the last line, never acknowledged.
                log.warning("feedback journal %s line %d of %d is torn (%s); skipping it", path, n, len(lines), e)
        if records:
            with self._lock:
                self._open = records
                self._cut_locked()
        else:
            path.unlink(missing_ok=True)
        return len(records)

    def _set_aside(self, path: Path, name: str, error: Exception) -> None:
        """An unreadable spool file is kept as ``<name>.bad`` for a human, never retried or deleted."""
        log.error("feedback spool file %s is unreadable (%s); moving it aside as %s.bad", path, error, name)
        with contextlib.suppress(OSError):
            path.rename(self.spool_dir / f"{name}.bad")

    def add(self, record: FeedbackRecord) -> bool:
        """Accept one record; True when a batch is full and a flush is worth doing now."""
        with self._lock:
            if self._backlog_locked() >= self.max_backlog:
                raise BacklogFull(
                    f"{self._backlog_locked()} feedback records are waiting for the object store "
                    f"(limit {self.max_backlog}); it has been unreachable for a while. Retry later."
                )
            if not self._open:
                self._opened_at = self.clock()
            self._open.append(record)
            self._write_journal_locked(record)
            full = len(self._open) >= self.batch_records
        self.metrics.feedback_received.labels("correction" if record.is_correction else "confirmation").inc()
        self._update_gauge()
        return full

    def due(self) -> bool:
        now = self.clock()
        with self._lock:
            if self._pending and now >= self._retry_at:
                return True
            return bool(self._open) and (
                len(self._open) >= self.batch_records or now - self._opened_at >= self.flush_seconds
            )

    def close(self) -> None:
        """Close the journal; an open batch left in it is restored by the next start on this volume."""
        with self._lock:
            if self._journal is not None:
                with contextlib.suppress(OSError):
                    self._journal.close()
                self._journal = None

    def _write_journal_locked(self, record: FeedbackRecord) -> None:
        if not self._journal_ok:
            return
        try:
            if self._journal is None:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                self._journal = (self.spool_dir / OPEN_JOURNAL).open("ab")
            self._journal.write(encode_batch([record]))
            self._journal.flush()
        except OSError as e:
            self._journal_ok = False
            log.error(
                "cannot append to the feedback journal in %s (%s); the open batch is only in memory until it is cut",
                self.spool_dir, e,
            )  # fmt: skip

    def _cut(self) -> None:
        with self._lock:
            self._cut_locked()

    def _cut_locked(self) -> None:
        """Give the open batch its key; its journal becomes that key's spool file (under the lock, so
        no ``add`` can append to a journal that is being renamed)."""
        if not self._open:
            return
        key, records = batch_key(self.model), self._open
        self._open = []
        self._pending[key] = records
        name = PurePosixPath(key).name
        journal = self.spool_dir / OPEN_JOURNAL
        journaled = self._journal is not None and self._journal_ok
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
        self._journal, self._journal_ok = None, True
        try:
            if journaled:
                journal.rename(self.spool_dir / name)
                return
            journal.unlink(missing_ok=True)
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_dir / f".{name}.tmp"
            try:
                tmp.write_bytes(encode_batch(records))
                tmp.rename(self.spool_dir / name)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as e:
            log.error(
                "cannot write feedback spool file in %s (%s); the batch %s is only in memory", self.spool_dir, e, key
            )

    def flush(self, force: bool = False) -> int:
        """Cut the open batch and upload every pending one, oldest first; returns records stored.

        Stops at the first failure (the store is down; the rest would fail too) and schedules the
        next attempt with exponential backoff, unless ``force`` (shutdown) asks to try now anyway.
        """
        if self.store is None:
            return 0
        with self._flush_lock:
            self._cut()
            stored = 0
            with self._lock:
                batches = sorted(self._pending.items())
            for key, records in batches:
                if not force and self.clock() < self._retry_at:
                    break
                try:
                    self.store.put_bytes(key, encode_batch(records), "application/x-ndjson")
                except Exception as e:  # noqa: BLE001 — any failure leaves the batch pending; retried later
                    self._failures += 1
                    delay = min(60.0, 0.5 * 2 ** min(self._failures, 7))
                    self._retry_at = self.clock() + delay
                    self.metrics.feedback_flush_errors.inc()
                    log.warning(
                        "could not store feedback batch %s (%d records) in s3://%s: %s; %d records kept in memory "
                        "and in %s, next try in %.0fs",
                        key, len(records), self.store.bucket, e, self.backlog, self.spool_dir, delay,
                    )  # fmt: skip
                    break
                with self._lock:
                    self._pending.pop(key, None)
                with contextlib.suppress(OSError):
                    (self.spool_dir / PurePosixPath(key).name).unlink()
                self._failures = 0
                self._retry_at = 0.0
                stored += len(records)
                self.metrics.feedback_flushed.inc(len(records))
            self._update_gauge()
            return stored

    def _update_gauge(self) -> None:
        self.metrics.feedback_backlog.set(self.backlog)
