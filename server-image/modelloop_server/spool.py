"""A durable batch spool for records on their way to the bucket: batched, journaled, never dropped silently.

Shared by reviews (:mod:`.feedback`) and prediction receipts (:mod:`.receipts`). A record is
appended to the open batch and to its journal file in the spool directory; for reviews the journal
is fsynced (and, when it creates a file, the directory) before the caller answers, so a server
killed outright (OOM, SIGKILL) or a node losing power loses no accepted review; receipts skip the
per-record fsync (they are written on the predict path) and survive a killed process, not a lost
node. The spool survives what its volume survives: on the Pod's emptyDir a deleted Pod takes it
along. A batch is cut when it holds ``batch_records`` records or has been open ``flush_seconds``
(so a burst is a few uploads, not thousands); it has its object key at once (receipts: from the
moment it opens, so a receipt id can name it) and its journal becomes that key's spool file before
the upload is tried. The upload reuses that key on every retry, conditionally (``If-None-Match``):
an ambiguous failure cannot store a batch twice nor rewrite it (which would move its upload time,
by which the operator counts), and the spool file is removed only after the object store confirmed it. While
MinIO is down batches wait in memory and in the spool; a restarted server picks the spool up again.
When the backlog passes ``max_backlog`` records or ``max_bytes`` bytes, new records are refused:
the spool cannot fill its volume, and a refused caller knows its record was not taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Generic, TypeVar

from prometheus_client import Counter, Gauge

from modelloop.clients.objectstore import ObjectStore

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class SpoolMetrics:
    flushed: Counter
    flush_errors: Counter
    backlog: Gauge
    backlog_bytes: Gauge


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


@dataclass(frozen=True)
class SpoolKind(Generic[R]):
    """What one spool holds: its prefix, how its batches are named and encoded, its words and its metrics."""

    what: str  # "feedback", "receipt": in logs and refusals
    item: str  # "review", "receipt": what a refused caller sent
    env_prefix: str  # MODELLOOP_FEEDBACK, MODELLOOP_RECEIPT: the settings a message points to
    prefix: str
    new_key: Callable[[], str]
    encode: Callable[[list[R]], bytes]
    decode: Callable[[bytes], list[R]]
    metrics: SpoolMetrics
    fsync_each: bool = True  # False: appends reach the page cache only (survive a killed process, not a lost node)
    key_at_open: bool = False  # True: a batch's key is chosen when it opens, so records can name it at once
    key_of: Callable[[list[R]], str | None] | None = None  # key_at_open: the key a restored journal's records name


class BatchSpool(Generic[R]):
    def __init__(
        self,
        kind: SpoolKind[R],
        store: ObjectStore | None,
        spool_dir: Path,
        batch_records: int = 100,
        flush_seconds: float = 5.0,
        max_backlog: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 256 << 20,
    ) -> None:
        self.kind = kind
        self.store = store
        self.spool_dir = spool_dir
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.max_backlog = max_backlog
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._open: list[R] = []
        self._open_key: str | None = None
        self._opened_at = 0.0
        self._pending: dict[str, list[R]] = {}
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
        prefix = self.kind.prefix
        # ".<key>.tmp" is a spool write a killed run never renamed: complete files are its batch.
        unfinished = {p: p.name[1 : -len(".tmp")] for p in self.spool_dir.glob(".*.jsonl.tmp")}
        finished = {p: p.name for p in self.spool_dir.glob("*.jsonl")}
        for path, name in sorted({**finished, **unfinished}.items(), key=lambda item: item[1]):
            try:
                data = path.read_bytes()
                records = self.kind.decode(data)
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
                "restored %d %s records from the spool in %s; uploading them first",
                restored, self.kind.what, self.spool_dir,
            )  # fmt: skip
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
        records: list[R] = []
        for n, line in enumerate(lines, 1):
            try:
                records.extend(self.kind.decode(line))
            except ValueError as e:
                # Only a write cut short by the kill can be torn: the last line, never acknowledged.
                log.warning(
                    "%s journal %s line %d of %d is torn (%s); skipping it", self.kind.what, path, n, len(lines), e
                )
        if records:
            with self._lock:
                self._open = records
                self._open_key = self.kind.key_of(records) if self.kind.key_of else None
                self._open_bytes = len(self.kind.encode(records))
                self._cut_locked()
        else:
            path.unlink(missing_ok=True)
        return len(records)

    def _set_aside(self, path: Path, name: str, error: Exception) -> None:
        """An unreadable spool file is kept as ``<name>.bad`` for a human, never retried or deleted."""
        log.error(f"{self.kind.what} spool file %s is unreadable (%s); moving it aside as %s.bad", path, error, name)
        with contextlib.suppress(OSError):
            path.rename(self.spool_dir / f"{name}.bad")

    def add(self, record: R) -> bool:
        """Accept one record once it is in the journal; True when a batch is full and a flush is worth doing now.

        Raises :class:`BacklogFull` when the spool is at its record or byte bound, and
        :class:`SpoolUnavailable` when the record cannot be journaled; either way it was not taken.
        Blocks for an fsync when the kind asks for one: call it off the event loop then.
        """
        return self.add_keyed(lambda _key, _at: [record])[1]

    def add_keyed(self, make: Callable[[str | None, int], list[R]]) -> tuple[list[R], bool]:
        """Like :meth:`add`, for records built from where they go: the open batch's key (None unless the
        kind chooses keys at open) and how many records it already holds. All go into that one batch,
        which cannot be cut meanwhile."""
        with self._lock:
            n, held = self._backlog_locked(), self._bytes_locked()
            k = self.kind
            if n >= self.max_backlog:
                raise BacklogFull(
                    f"{n} {k.what} records are waiting for the object store (limit {self.max_backlog}, "
                    f"{k.env_prefix}_MAX_BACKLOG); it has been unreachable for a while. The {k.item} was not "
                    "accepted; retry later."
                )
            if k.key_at_open and self._open_key is None:
                self._open_key = k.new_key()
            records = make(self._open_key, len(self._open))
            data = k.encode(records)
            if held + len(data) > self.max_bytes:
                raise BacklogFull(
                    f"the {k.what} spool is full: {held} bytes of {k.item}s are waiting for the object store (limit "
                    f"{self.max_bytes} bytes, {k.env_prefix}_MAX_SPOOL_BYTES); it has been unreachable for a while. "
                    f"The {k.item} was not accepted; retry later."
                )
            self._write_journal_locked(data)
            if not self._open:
                self._opened_at = self.clock()
            self._open.extend(records)
            self._open_bytes += len(data)
            full = len(self._open) >= self.batch_records
        self._update_gauge()
        return records, full

    def pending(self, key: str) -> list[R] | None:
        """The records of a batch not yet confirmed stored (open or pending), or None."""
        with self._lock:
            if key == self._open_key:
                return list(self._open)
            held = self._pending.get(key)
            return list(held) if held is not None else None

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
            if self.kind.fsync_each:
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
            k = self.kind
            log.error("cannot write the %s journal in %s (%s); refusing until it can", k.what, self.spool_dir, e)
            raise SpoolUnavailable(
                f"the server cannot write {k.what} records to its spool ({e}); the {k.item} was not accepted, "
                "retry later"
            ) from None

    def _cut(self) -> None:
        with self._lock:
            self._cut_locked()

    def _cut_locked(self) -> None:
        """Give the open batch its key; its journal becomes that key's spool file (under the lock, so
        no ``add`` can append to a journal that is being renamed)."""
        if not self._open:
            return
        key, records = self._open_key or self.kind.new_key(), self._open
        self._open, self._open_key = [], None
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
                    f.write(self.kind.encode(records))
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
                "cannot write %s spool file in %s (%s); the batch %s is only in memory",
                self.kind.what, self.spool_dir, e, key,
            )  # fmt: skip

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
                    # Conditional: a batch an earlier attempt stored (the PUT timed out after the store took it,
                    # or the server died before removing its spool file) is not rewritten, so its upload time,
                    # by which the operator counts, does not move and it is not counted twice.
                    fresh = self.store.put_new(key, self.kind.encode(records), "application/x-ndjson")
                except Exception as e:  # noqa: BLE001 — any failure leaves the batch pending; retried later
                    self._failures += 1
                    delay = min(60.0, 0.5 * 2 ** min(self._failures, 7))
                    self._retry_at = self.clock() + delay
                    self.kind.metrics.flush_errors.inc()
                    log.warning(
                        "could not store %s batch %s (%d records) in s3://%s: %s; %d records kept in memory "
                        "and in %s, next try in %.0fs",
                        self.kind.what, key, len(records), self.store.bucket, e, self.backlog, self.spool_dir, delay,
                    )  # fmt: skip
                    break
                if not fresh:
                    log.info("%s batch %s was already stored by an earlier attempt; not rewritten", self.kind.what, key)
                with self._lock:
                    self._pending.pop(key, None)
                    self._pending_bytes.pop(key, None)
                with contextlib.suppress(OSError):
                    (self.spool_dir / PurePosixPath(key).name).unlink()
                self._failures = 0
                self._retry_at = 0.0
                stored += len(records)
                self.kind.metrics.flushed.inc(len(records))
            self._update_gauge()
            return stored

    def _update_gauge(self) -> None:
        with self._lock:
            records, held = self._backlog_locked(), self._bytes_locked()
        self.kind.metrics.backlog.set(records)
        self.kind.metrics.backlog_bytes.set(held)
