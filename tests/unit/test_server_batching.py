"""Opportunistic batching: who shares a forward pass, and that every caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from modelloop_server.batching import InferenceBatcher, Overloaded, _Call, take_batch
from modelloop_server.model import LoadedModel


class Gated(nn.Module):
    """A linear layer whose forward passes wait for ``gate`` (so a test can make requests queue) and can be told to fail."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(4, 3)
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.rows: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        assert self.gate.wait(10), "the test never opened the gate"
        self.rows.append(x.shape[0])
        if self.fail:
            raise RuntimeError("forward exploded")
        out: Tensor = self.linear(x)
        return out


def model(version: str, seed: int) -> LoadedModel:
    return LoadedModel(version=version, digest=f"sha256:{version}", path=Path("/nonexistent"), network=Gated(seed))


def gated(m: LoadedModel) -> Gated:
    assert isinstance(m.network, Gated)
    return m.network


A, B = model("a", 1), model("b", 2)


def calls(*spec: tuple[LoadedModel, int]) -> deque[_Call]:
    loop = asyncio.new_event_loop()
    try:
        return deque(_Call(m, torch.zeros(n, 4), loop.create_future()) for m, n in spec)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("queued", "max_rows", "taken", "left"),
    [
        pytest.param([(A, 1)], 8, [1], 0, id="alone"),
        pytest.param([(A, 1), (A, 2), (A, 3)], 8, [1, 2, 3], 0, id="same-model-coalesces"),
        pytest.param([(A, 4), (A, 4), (A, 1)], 8, [4, 4], 1, id="stops-at-the-row-limit"),
        pytest.param([(A, 1), (A, 9), (A, 1)], 8, [1], 2, id="no-overtaking-a-call-that-does-not-fit"),
        pytest.param([(A, 20), (A, 1)], 8, [20], 1, id="an-oversized-head-still-runs-alone"),
        pytest.param([(A, 1), (B, 1), (A, 1)], 8, [1], 2, id="cut-at-a-swap"),
        pytest.param([(A, 1), (A, 1)], 1, [1], 1, id="max-rows-1-disables-coalescing"),
    ],
)
def test_take_batch(queued: list[tuple[LoadedModel, int]], max_rows: int, taken: list[int], left: int) -> None:
    q = calls(*queued)
    batch = take_batch(q, max_rows)
    assert [c.x.shape[0] for c in batch] == taken
    assert len({id(c.model) for c in batch}) == 1
    assert len(q) == left


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yields to the event loop until ``cond`` holds; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def hold_the_slot(batcher: InferenceBatcher, m: LoadedModel, observed: list[int]) -> asyncio.Task[Tensor]:
    """Starts a one-row pass on ``m`` that blocks on its gate: the batcher's one slot is busy, later calls queue."""
    gated(m).gate.clear()
    running = asyncio.create_task(batcher.probabilities(m, torch.randn(1, 4)))
    await until(lambda: observed == [1])
    return running


def test_requests_queued_behind_a_busy_pass_share_the_next_one_and_get_their_own_rows() -> None:
    m = model("a", 3)
    net = gated(m)
    inputs = [torch.randn(1 + i % 3, 4) for i in range(10)]
    observed: list[int] = []

    async def scenario() -> list[Tensor]:
        with ThreadPoolExecutor(1) as pool:
            batcher = InferenceBatcher(pool, slots=1, max_rows=256, observe_rows=observed.append)
            first = await hold_the_slot(batcher, m, observed)
            rest = [asyncio.create_task(batcher.probabilities(m, x)) for x in inputs]
            await until(lambda: batcher.queued == len(inputs))
            net.gate.set()
            await first
            answers = list(await asyncio.gather(*rest))
            batcher.close()
            return answers

    answers = asyncio.run(scenario())
    assert observed == [1, sum(x.shape[0] for x in inputs)]
    for x, got in zip(inputs, answers, strict=True):
        assert torch.allclose(got, m.probabilities(x), atol=1e-6)


def test_a_batch_never_mixes_the_models_before_and_after_a_swap() -> None:
    old, new = model("old", 4), model("new", 5)
    x = torch.randn(1, 4)
    observed: list[int] = []

    async def scenario() -> tuple[list[Tensor], list[Tensor]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = InferenceBatcher(pool, slots=1, max_rows=256, observe_rows=observed.append)
            blocker = await hold_the_slot(batcher, old, observed)
            on_old = [asyncio.create_task(batcher.probabilities(old, x)) for _ in range(3)]
            on_new = [asyncio.create_task(batcher.probabilities(new, x)) for _ in range(3)]
            await until(lambda: batcher.queued == 6)
            gated(old).gate.set()
            await blocker
            got = list(await asyncio.gather(*on_old)), list(await asyncio.gather(*on_new))
            batcher.close()
            return got

    got_old, got_new = asyncio.run(scenario())
    assert (gated(old).rows, gated(new).rows) == ([1, 3], [3]), "one pass per model, never a mixed one"
    assert all(torch.allclose(p, old.probabilities(x)) for p in got_old)
    assert all(torch.allclose(p, new.probabilities(x)) for p in got_new)
    assert not torch.allclose(old.probabilities(x), new.probabilities(x))


def test_a_failing_pass_fails_every_caller_in_it_and_the_next_pass_still_runs() -> None:
    m = model("a", 6)
    net = gated(m)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = InferenceBatcher(pool, slots=1, max_rows=256)
            net.fail = True
            outcomes = await asyncio.gather(
                *(batcher.probabilities(m, torch.randn(1, 4)) for _ in range(4)), return_exceptions=True
            )
            assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes), outcomes
            net.fail = False
            probs = await asyncio.wait_for(batcher.probabilities(m, torch.randn(2, 4)), 10)
            assert probs.shape == (2, 3)
            batcher.close()

    asyncio.run(scenario())


def test_close_fails_queued_callers_and_refuses_new_ones_while_the_running_pass_still_answers() -> None:
    m = model("a", 7)
    net = gated(m)
    observed: list[int] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = InferenceBatcher(pool, slots=1, max_rows=256, observe_rows=observed.append)
            running = await hold_the_slot(batcher, m, observed)
            queued = asyncio.create_task(batcher.probabilities(m, torch.randn(1, 4)))
            await until(lambda: batcher.queued == 1)
            batcher.close()
            net.gate.set()
            assert (await running).shape == (1, 3)
            with pytest.raises(RuntimeError, match="shutting down"):
                await queued
            with pytest.raises(RuntimeError, match="shutting down"):
                await batcher.probabilities(m, torch.randn(1, 4))

    asyncio.run(scenario())
    assert observed == [1]


def test_a_full_queue_sheds_new_requests_at_once_and_accepts_again_once_it_drains() -> None:
    m = model("a", 8)
    net = gated(m)
    observed: list[int] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = InferenceBatcher(pool, slots=1, max_rows=256, observe_rows=observed.append, max_queued_rows=5)
            running = await hold_the_slot(batcher, m, observed)
            queued = [asyncio.create_task(batcher.probabilities(m, torch.randn(n, 4))) for n in (3, 2)]
            await until(lambda: batcher.queued == 2)
            with pytest.raises(Overloaded, match=r"5 input rows are already waiting for inference \(limit 5"):
                await batcher.probabilities(m, torch.randn(1, 4))
            assert batcher.queued == 2, "a shed request is not queued"
            net.gate.set()
            await running
            assert [p.shape[0] for p in await asyncio.gather(*queued)] == [3, 2]
            assert (await batcher.probabilities(m, torch.randn(4, 4))).shape == (4, 3), "accepted again once drained"
            net.gate.clear()
            blocked = asyncio.create_task(batcher.probabilities(m, torch.randn(1, 4)))
            await until(lambda: len(observed) == 4)
            big = asyncio.create_task(batcher.probabilities(m, torch.randn(9, 4)))
            await until(lambda: batcher.queued == 1)
            net.gate.set()
            assert (await big).shape == (9, 3), "a request larger than the bound is taken when the queue is empty"
            await blocked
            batcher.close()

    asyncio.run(scenario())
    assert observed == [1, 5, 4, 1, 9]
