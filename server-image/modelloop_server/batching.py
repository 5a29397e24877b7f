"""Opportunistic batching: concurrent predict calls on the same model share one forward pass.

Each request used to pay a thread hand-off and a forward pass of its own; under load that
per-call cost, not the arithmetic, bounded throughput. Requests that arrive while the inference
threads are busy now queue, and the next free runner takes every queued request on the same model
(up to ``max_rows`` rows) in one pass. Nothing ever waits for a batch to fill: a request that finds
a runner idle starts at once, so a lightly loaded server answers exactly as fast as before.

A batch never mixes models. Each request was bound to the model it found when it arrived (that is
what makes a hot swap atomic per request), so a queue that straddles a swap is cut at the swap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import LoadedModel


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
    """Runs forward passes on ``pool`` with at most ``runners`` in flight, coalescing what queues meanwhile."""

    def __init__(
        self, pool: Executor, runners: int, max_rows: int, observe_rows: Callable[[int], None] | None = None
    ) -> None:
        self._pool = pool
        self._max_rows = max_rows
        self._observe_rows = observe_rows
        self._queue: deque[_Call] = deque()
        self._wakeup = asyncio.Event()
        self._runners = [asyncio.create_task(self._run(), name=f"infer-runner-{i}") for i in range(max(1, runners))]

    @property
    def queued(self) -> int:
        """Calls waiting for a runner."""
        return len(self._queue)

    async def probabilities(self, model: LoadedModel, x: Tensor) -> Tensor:
        """``model.probabilities(x)``, possibly computed together with other callers' rows."""
        call = _Call(model, x, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._wakeup.set()
        return await call.answer

    async def close(self) -> None:
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        while self._queue:
            call = self._queue.popleft()
            if not call.answer.done():
                call.answer.set_exception(RuntimeError("the server is shutting down"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if not self._queue:
                self._wakeup.clear()
                continue
            batch = [c for c in take_batch(self._queue, self._max_rows) if not c.answer.done()]
            if not batch:
                continue
            model = batch[0].model
            x = batch[0].x if len(batch) == 1 else torch.cat([c.x for c in batch])
            if self._observe_rows is not None:
                self._observe_rows(x.shape[0])
            try:
                probs = await loop.run_in_executor(self._pool, model.probabilities, x)
            except BaseException as e:  # every caller in the batch hears of it; none is left hanging
                for c in batch:
                    if not c.answer.done():
                        c.answer.set_exception(e if isinstance(e, Exception) else RuntimeError("inference cancelled"))
                if not isinstance(e, Exception):
                    raise
                continue
            start = 0
            for c in batch:
                n = c.x.shape[0]
                if not c.answer.done():
                    c.answer.set_result(probs[start : start + n])
                start += n
