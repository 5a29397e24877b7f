"""Write-through reviews: ``POST /v1/feedback`` answers only once the batch holding the review is in the bucket.

The default durability (``MODELLOOP_FEEDBACK_DURABILITY=write-through``). A review joins the open
group; the group is stored with one PUT under a fresh batch key when its window has passed since
its first review (``MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS``) or it is full, and never while the
previous PUT is in flight: reviews that arrive meanwhile form the next group, so concurrent
reviewers share an upload (group commit) and throughput grows with concurrency rather than
with the number of PUTs. Each caller is answered from its group's outcome: stored → 2xx; not
stored (the object store is down, refuses, or does not confirm within the commit timeout) → 503
with Retry-After, and the caller retries. So nothing answered 2xx lives only in this process or on
the Pod's disk: deleting the Pod, or killing the process right after an answer, cannot lose it.

A group's key is chosen once and every retry of its PUT is conditional (``If-None-Match: *``,
``ObjectStore.put_new``): an attempt that timed out after the store took the batch is not rewritten
(its upload time, by which the operator tracks what it counted, does not move), and the retry's
refusal means "stored". A group confirmed only after its callers gave up (the store did not answer
within the commit timeout) is remembered as accepted (``on_stored``), and the reviews whose callers
gave up are passed to ``on_late`` (their review markers are written then), so the client's retry,
on this replica or another, is answered as a replay rather than stored and counted twice. A retry
that arrives before the late confirmation is still stored again: the trainer keeps one review per
prediction id, and the counts carry one extra review of that id until the next training.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.clients.objectstore import ObjectStore

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

COMMIT_RETRY_AFTER_SECONDS = 5  # the store was down a moment ago: a client should not hammer it


class StoreUnavailable(RuntimeError):
    """The review's batch was not confirmed stored; the message says why and that the review was not accepted."""


@dataclass
class _Group:
    opened: float
    done: asyncio.Future[tuple[str | None, str]]  # (key, "") when stored, (None, why) when not
    records: list[FeedbackRecord] = field(default_factory=list)
    abandoned: list[FeedbackRecord] = field(default_factory=list)  # their callers were answered 503 (timeout)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    full: bool = False


class GroupCommit:
    def __init__(
        self,
        model: str,
        store: ObjectStore,
        pool: ThreadPoolExecutor,
        metrics: ServerMetrics,
        window: float = 0.01,
        max_records: int = 1000,
        max_bytes: int = 8 << 20,
        timeout: float = 10.0,
        on_stored: Callable[[list[FeedbackRecord]], None] = lambda _records: None,
        on_late: Callable[[list[FeedbackRecord]], object] = lambda _records: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.window = window
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.on_stored = on_stored
        self.on_late = on_late
        self.clock = clock
        self._groups: deque[_Group] = deque()  # the last one is open; the first is stored next
        self._work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="feedback-group-commit")

    async def close(self) -> None:
        """Stop committing; callers still waiting (none, after a graceful HTTP shutdown) are refused."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups:
            if not group.done.done():
                group.done.set_result((None, "the server is shutting down; the review was not accepted, retry"))
        self._groups.clear()

    async def commit(self, record: FeedbackRecord) -> str:
        """The batch key once ``record`` is stored; :class:`StoreUnavailable` if it was not (or not in time)."""
        line = encode_batch([record])
        group = self._groups[-1] if self._groups else None
        if group is None or group.full or (group.records and group.size + len(line) > self.max_bytes):
            if group is not None:
                group.full = True
            group = _Group(self.clock(), asyncio.get_running_loop().create_future())
            self._groups.append(group)
        group.records.append(record)
        group.lines.append(line)
        group.size += len(line)
        if len(group.records) >= self.max_records or group.size >= self.max_bytes:
            group.full = True
        if group.full or len(self._groups) > 1:
            self._full.set()
        self._work.set()
        try:
            key, why = await asyncio.wait_for(asyncio.shield(group.done), self.timeout)
        except TimeoutError:
            group.abandoned.append(record)
            raise StoreUnavailable(
                f"the object store did not confirm the review's batch within {self.timeout:g}s "
                "(MODELLOOP_FEEDBACK_COMMIT_TIMEOUT_SECONDS); the review was not accepted, retry later"
            ) from None
        if key is None:
            raise StoreUnavailable(why)
        return key

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            if not self._groups:
                self._work.clear()
                continue
            group = self._groups[0]
            left = group.opened + self.window - self.clock()
            if left > 0 and len(self._groups) == 1 and not group.full:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), left)
            self._groups.popleft()
            if not self._groups:
                self._work.clear()
            try:
                await self._store(group)
            except asyncio.CancelledError:
                if not group.done.done():
                    group.done.set_result((None, "the server is shutting down; the review was not accepted, retry"))
                raise

    async def _store(self, group: _Group) -> None:
        key = batch_key(self.model)
        try:
            fresh = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.store.put_new, key, b"".join(group.lines), "application/x-ndjson"
            )
        except Exception as e:  # noqa: BLE001 - any failure refuses the group; its callers retry
            self.metrics.feedback_flush_errors.inc()
            log.warning(
                "could not store feedback batch %s (%d reviews) in s3://%s: %s; answering 503",
                key, len(group.records), self.store.bucket, e,
            )  # fmt: skip
            group.done.set_result(
                (
                    None,
                    f"the object store s3://{self.store.bucket} could not store the review ({type(e).__name__}: "
                    f"{str(e)[:200]}); the review was not accepted, retry later",
                )
            )
            return
        self.metrics.feedback_flushed.inc(len(group.records))
        self.metrics.feedback_commit_records.observe(len(group.records))
        if not fresh:
            log.info("feedback batch %s was stored by an attempt that timed out; not rewritten", key)
        self.on_stored(group.records)
        if group.abandoned:
            self.on_late(group.abandoned)
        group.done.set_result((key, ""))
