"""Reviewed labels on their way to the bucket: batched, spooled to disk, never dropped silently.

``POST /v1/feedback`` appends to an open batch and to its journal file in the spool directory,
and fsyncs the journal (and, when it creates a file, the directory) before answering 202: a server
killed outright (OOM, SIGKILL) or a node losing power loses no accepted review. A review that
cannot be written durably is refused (503), never accepted into memory only. The spool survives
what its volume survives: on the Pod's emptyDir a deleted Pod takes it along, so when reviews must
outlive Pod deletion during an object-store outage, ``MODELLOOP_FEEDBACK_SPOOL_DIR`` should be on
a volume that outlives the Pod (a PersistentVolumeClaim per replica, e.g. a StatefulSet). A batch
is cut when it holds ``batch_records`` records or has been open ``flush_seconds`` (so a burst of
reviews is a few uploads, not thousands); it gets its object key at once and its journal becomes
that key's spool file before the upload is tried. The upload reuses that key on every retry (an
ambiguous failure cannot store a batch twice) and the spool file is removed only after the object
store confirmed it. While MinIO is down batches wait in memory and in the spool; a restarted
server picks the spool up again. When the backlog passes ``max_backlog`` records or ``max_bytes``
bytes, new reviews are refused (503 with ``Retry-After``): the spool cannot fill its volume, and a
refused client knows its review was not taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
    """Too many records or bytes are waiting for the object store; the message says how many and why."""


class SpoolUnavailable(RuntimeError):
    """A review could not be written durably to the spool, so it was not accepted."""


def fsync_dir(path: Path) -> None:
    """Make a created, renamed or removed entry of ``path`` durable (a file's fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        max_bytes: int = 256 << 20,
    ) -> None:
        self.model = model
        self.store = store
        self.spool_dir = spool_dir
        self.metrics = metrics
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.max_backlog = max_backlog
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._open: list[FeedbackRecord] = []
        self._opened_at = 0.0
        self._pending: dict[str, list[FeedbackRecord]] = {}
        self._open_bytes = 0
        self._pending_bytes: dict[str, int] = {}
        self._retry_at = 0.0
        self._failures = 0
        self._journal: BinaryIO | None = None
        self._journal_torn = False  # a failed append could not be cut off: write this batch's spool file from memory
        self._needs_newline = False

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._backlog_locked()

    def _backlog_locked(self) -> int:
        return len(self._open) + sum(len(b) for b in self._pending.values())

    @property
    def backlog_bytes(self) -> int:
        """Encoded size of the accepted reviews not yet stored: what the spool holds on disk."""
        with self._lock:
            return self._bytes_locked()

    def _bytes_locked(self) -> int:
        return self._open_bytes + sum(self._pending_bytes.values())

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
                data = path.read_bytes()
                records = decode_batch(data)
            except (OSError, ValueError) as e:
                self._set_aside(path, name, e)
                continue
            if path in unfinished:
                path.rename(self.spool_dir / name)
            with self._lock:
                self._pending[prefix + name] = records
                self._pending_bytes[prefix + name] = len(data)
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
                self._open_bytes = len(encode_batch(records))
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
        """Accept one record once it is on disk (fsynced); True when a batch is full and a flush is worth doing now.

        Raises :class:`BacklogFull` when the spool is at its record or byte bound, and
        :class:`SpoolUnavailable` when the record cannot be written durably; either way it was not taken.
        Blocks for an fsync: call it off the event loop.
        """
        line = encode_batch([record])
        with self._lock:
            if self._backlog_locked() >= self.max_backlog:
                raise BacklogFull(
                    f"{self._backlog_locked()} feedback records are waiting for the object store "
                    f"(limit {self.max_backlog}, MODELLOOP_FEEDBACK_MAX_BACKLOG); it has been unreachable for a "
                    "while. The review was not accepted; retry later."
                )
            held = self._bytes_locked()
            if held + len(line) > self.max_bytes:
                raise BacklogFull(
                    f"the feedback spool is full: {held} bytes of reviews are waiting for the object store "
                    f"(limit {self.max_bytes} bytes, MODELLOOP_FEEDBACK_MAX_SPOOL_BYTES); it has been unreachable "
                    "for a while. The review was not accepted; retry later."
                )
            self._write_journal_locked(line)
            if not self._open:
                self._opened_at = self.clock()
            self._open.append(record)
            self._open_bytes += len(line)
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

    def _write_journal_locked(self, line: bytes) -> None:
        """Append ``line`` to the open batch's journal and fsync it; SpoolUnavailable if that fails.

        A failed append is cut back off the file; if even that fails, the next append starts on a
        fresh line, so a torn write costs only the review that was refused anyway.
        """
        start = None
        try:
            if self._journal is None:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                path = self.spool_dir / OPEN_JOURNAL
                created = not path.exists()
                self._journal = path.open("ab")
                if created:
                    fsync_dir(self.spool_dir)
                if self._needs_newline:
                    self._journal.write(b"\n")
                    self._needs_newline = False
            start = self._journal.tell()
            self._journal.write(line)
            self._journal.flush()
            os.fsync(self._journal.fileno())
        except OSError as e:
            if self._journal is not None:
                try:
                    if start is not None:
                        self._journal.truncate(start)
                except OSError:
                    self._journal_torn = self._needs_newline = True
                with contextlib.suppress(OSError):
                    self._journal.close()
                self._journal = None
            log.error("cannot write the feedback journal in %s (%s); refusing reviews until it can", self.spool_dir, e)
            raise SpoolUnavailable(
                f"the server cannot write reviews to its spool ({e}); the review was not accepted, retry later"
            ) from None

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
        self._pending_bytes[key], self._open_bytes = self._open_bytes, 0
        name = PurePosixPath(key).name
        journal = self.spool_dir / OPEN_JOURNAL
        journaled = self._journal is not None and not self._journal_torn
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
        self._journal = None
        try:
            if journaled:
                journal.rename(self.spool_dir / name)
                fsync_dir(self.spool_dir)
                return
            # Restored from a previous run's journal: written out whole, under its key.
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_dir / f".{name}.tmp"
            try:
                with tmp.open("wb") as f:
                    f.write(encode_batch(records))
                    f.flush()
                    os.fsync(f.fileno())
                tmp.rename(self.spool_dir / name)
                journal.unlink(missing_ok=True)
                self._journal_torn = self._needs_newline = False
                fsync_dir(self.spool_dir)
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
                    self._pending_bytes.pop(key, None)
                with contextlib.suppress(OSError):
                    (self.spool_dir / PurePosixPath(key).name).unlink()
                self._failures = 0
                self._retry_at = 0.0
                stored += len(records)
                self.metrics.feedback_flushed.inc(len(records))
            self._update_gauge()
            return stored

    def _update_gauge(self) -> None:
        with self._lock:
            records, held = self._backlog_locked(), self._bytes_locked()
        self.metrics.feedback_backlog.set(records)
        self.metrics.feedback_backlog_bytes.set(held)
