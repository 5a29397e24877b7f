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
            taken = take_batch(self._queue, self._max_rows)
            self._queued_rows -= sum(c.x.shape[0] for c in taken)
            batch = [c for c in taken if not c.answer.done()]
            if not batch:  # every caller in it gave up
                continue
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
