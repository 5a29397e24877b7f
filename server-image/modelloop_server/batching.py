"""Opportunistic batching: concurrent predict calls on the same model share one forward pass.

Each request used to pay a thread hand-off and a forward pass of its own; under load that
per-call cost, not the arithmetic, bounded throughput. Requests that arrive while the inference
threads are busy now queue, and the next pass to start takes every queued request on the same model
(up to ``max_rows`` rows) in one pass. Nothing ever waits for a batch to fill: a request that finds
a slot free starts its pass at once, so a lightly loaded server answers as fast as without batching.

The queue is bounded (``max_queued_rows``): a request that would take it past the bound is refused
at once with :class:`Overloaded` (the server answers 429 with ``Retry-After``) instead of joining a
queue whose wait already exceeds any client's timeout. Shedding early keeps the latency of the
requests that are accepted bounded and lets a load balancer or client retry elsewhere.

A pass takes at most its slot's share of what is queued (:func:`plan_passes`): the queued rows
divided by the number of slots. Each pass runs single-threaded on one core, so a slot that freed
first and took the whole queue would run it alone on one core while the other slots, freeing a
moment later, find nothing queued and serve the next arrivals in passes of one. Under closed-loop
load that split the clients into a few served at once, over and over, and the rest waiting for
one long pass (measured: p99 31.6 s against a p50 of 3.6 s with 32 clients of a ResNet-18 on a
loaded machine; in ``tests/unit/test_server_batching.py``'s model of it, some clients got 15x the
answers of others). Sharing the queue keeps every core's pass about the same size: the same
throughput, and every request waits about as long as any other.

A batch never mixes models. Each request was bound to the model it found when it arrived (that is
what makes a hot swap atomic per request), so a queue that straddles a swap is cut at the swap.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import LoadedModel

RETRY_AFTER_SECONDS = 1  # what a shed request's Retry-After says, whichever protocol it came by


class Overloaded(RuntimeError):
    """The inference queue is full; the message says how full, for the 429 the client sees."""


@dataclass(eq=False)
class _Call:
    model: LoadedModel
    x: Tensor
    answer: asyncio.Future[Tensor]


def share_rows(rows: int, slots: int, max_rows: int) -> int:
    """The rows one pass may take: its slot's share of ``rows`` (rounded up), within 1..``max_rows``."""
    return max(1, min(max_rows, -(-rows // max(1, slots))))


def plan_passes(queue: deque[_Call], queued_rows: int, free_slots: int, slots: int, max_rows: int) -> list[list[_Call]]:
    """The passes to start now on ``free_slots`` of ``slots``, taken from the head of ``queue`` in order.

    Each takes at most one slot's share of the ``queued_rows`` (:func:`share_rows`), so a slot that
    frees next finds its share still queued instead of one pass holding everything. (Sharing the
    rows queued and running instead evens out pass sizes too, but in the closed-loop model of
    ``tests/unit/test_server_batching.py`` its p99 is 12 % higher.)
    """
    limit = share_rows(queued_rows, slots, max_rows)
    passes: list[list[_Call]] = []
    while queue and len(passes) < free_slots:
        passes.append(take_batch(queue, limit))
    return passes


def take_batch(queue: deque[_Call], max_rows: int) -> list[_Call]:
    """Pops the head call and every following call on the same model while the rows fit.

    The head is always taken, whatever its size, so a request as large as ``max_rows`` still runs.
    Order is kept: a call that does not fit ends the batch rather than letting later ones overtake it.
    """
    head = queue.popleft()
    batch, rows = [head], head.x.shape[0]
    while queue and queue[0].model is head.model and rows + queue[0].x.shape[0] <= max_rows:
        call = queue.popleft()
        batch.append(call)
        rows += call.x.shape[0]
    return batch


class InferenceBatcher:
    """Starts forward passes on ``pool`` with at most ``slots`` in flight, coalescing what queues meanwhile.

    Driven by callbacks on the event loop, not by runner tasks: a request that finds a slot free
    starts its pass at once, and a finished pass starts the next from the queue, so batching costs a
    lightly loaded server no extra scheduling hops.
    """

    def __init__(
        self,
        pool: Executor,
        slots: int,
        max_rows: int,
        observe_rows: Callable[[int], None] | None = None,
        max_queued_rows: int = 4096,
    ) -> None:
        self._pool = pool
        self._slots = max(1, slots)
        self._max_rows = max_rows
        self._observe_rows = observe_rows
        self._max_queued_rows = max_queued_rows
        self._queued_rows = 0
        self._queue: deque[_Call] = deque()
        self._busy = 0
        self._closed = False

    @property
    def queued(self) -> int:
        """Calls waiting for a free slot."""
        return len(self._queue)

    async def probabilities(self, model: LoadedModel, x: Tensor) -> Tensor:
        """``model.probabilities(x)``, possibly computed together with other callers' rows.

        Raises :class:`Overloaded` without queueing when the queued rows would pass the bound; a
        request that finds the queue empty is always taken, however large (it fits ``max_batch``).
        """
        if self._closed:
            raise RuntimeError("the server is shutting down")
        rows = x.shape[0]
        if self._queue and self._queued_rows + rows > self._max_queued_rows:
            raise Overloaded(
                f"the server is overloaded: {self._queued_rows} input rows are already waiting for inference "
                f"(limit {self._max_queued_rows}, MODELLOOP_MAX_QUEUED_ROWS); retry shortly or on another replica"
            )
        call = _Call(model, x, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._queued_rows += rows
        self._pump()
        return await call.answer

    def close(self) -> None:
        """Refuse new calls and fail queued ones; passes already running finish and answer."""
        self._closed = True
        self._queued_rows = 0
        while self._queue:
            call = self._queue.popleft()
            if not call.answer.done():
                call.answer.set_exception(RuntimeError("the server is shutting down"))

    def _pump(self) -> None:
        while self._queue and self._busy < self._slots:
            free = self._slots - self._busy
            for taken in plan_passes(self._queue, self._queued_rows, free, self._slots, self._max_rows):
                self._start(taken)

    def _start(self, taken: list[_Call]) -> None:
        self._queued_rows -= sum(c.x.shape[0] for c in taken)
        batch = [c for c in taken if not c.answer.done()]
        if batch:  # else every caller in it gave up, and the slot stays free for the next plan
            x = batch[0].x if len(batch) == 1 else torch.cat([c.x for c in batch])
            if self._observe_rows is not None:
                self._observe_rows(x.shape[0])
            self._busy += 1
            done = asyncio.get_running_loop().run_in_executor(self._pool, batch[0].model.probabilities, x)
            done.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: list[_Call], done: asyncio.Future[Tensor]) -> None:
        self._busy -= 1
        error = RuntimeError("inference cancelled") if done.cancelled() else done.exception()
        if error is not None:  # every caller in the pass hears of it; none is left hanging
            for c in batch:
                if not c.answer.done():
                    c.answer.set_exception(error)
        else:
            for c, rows in zip(batch, torch.split(done.result(), [c.x.shape[0] for c in batch]), strict=True):
                if not c.answer.done():
                    c.answer.set_result(rows)
        self._pump()
