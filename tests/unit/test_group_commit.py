"""Write-through group commit: concurrent reviews share a PUT; none is answered before its PUT succeeded."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from modelloop.api.feedback import FeedbackRecord, decode_batch
from modelloop_server.groupcommit import GroupCommit, StoreUnavailable
from modelloop_server.metrics import ServerMetrics

MODEL = "digits"


class FakeStore:
    """Records PUTs; ``down`` makes them fail as a refused connection does; ``gate`` holds them until set."""

    bucket = "models"

    def __init__(self) -> None:
        self.puts: list[tuple[str, list[str]]] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def put_new(self, key: str, data: bytes, content_type: str = "") -> bool:
        self.entered.set()
        self.gate.wait(10)
        if self.down:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        fresh = key not in {k for k, _ in self.puts}
        if fresh:
            self.puts.append((key, [r.id for r in decode_batch(data)]))
        return fresh


def record(i: int) -> FeedbackRecord:
    return FeedbackRecord(
        id=f"r{i}", version="v1", input=[0.0], predicted=1, label=2, reviewed_at=datetime(2026, 12, 2, tzinfo=UTC)
    )


async def with_commit(store: FakeStore, body: Any, **kw: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        gc = GroupCommit(MODEL, store, pool, ServerMetrics(), **kw)  # type: ignore[arg-type]
        gc.start()
        try:
            return await body(gc)
        finally:
            await gc.close()


def test_reviews_posted_together_share_one_put_and_each_caller_gets_its_key() -> None:
    store = FakeStore()

    async def body(gc: GroupCommit) -> list[str]:
        return await asyncio.gather(*(gc.commit(record(i)) for i in range(50)))

    keys = asyncio.run(with_commit(store, body, window=0.05))
    assert len(store.puts) == 1 and sorted(store.puts[0][1]) == sorted(f"r{i}" for i in range(50))
    assert set(keys) == {store.puts[0][0]} and keys[0].startswith(f"{MODEL}/feedback/")


def test_reviews_arriving_during_a_put_form_the_next_group() -> None:
    store = FakeStore()
    store.gate.clear()

    async def body(gc: GroupCommit) -> None:
        first = asyncio.ensure_future(gc.commit(record(0)))
        assert await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 5), "the first PUT began"
        rest = [asyncio.ensure_future(gc.commit(record(i))) for i in range(1, 20)]
        await asyncio.sleep(0.05)  # time to answer, were anything answered before its PUT returned
        assert not first.done() and not any(r.done() for r in rest), "answered before stored"
        store.gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(with_commit(store, body, window=0.0))
    assert [ids for _, ids in store.puts] == [["r0"], [f"r{i}" for i in range(1, 20)]]


def test_a_group_is_cut_at_max_records() -> None:
    store = FakeStore()

    async def body(gc: GroupCommit) -> None:
        await asyncio.gather(*(gc.commit(record(i)) for i in range(25)))

    asyncio.run(with_commit(store, body, window=0.5, max_records=10))
    assert [len(ids) for _, ids in store.puts] == [10, 10, 5]


def test_a_failed_put_refuses_every_review_of_its_group_and_the_next_one_stores() -> None:
    store = FakeStore()
    store.down = True

    async def body(gc: GroupCommit) -> list[Any]:
        refused = await asyncio.gather(*(gc.commit(record(i)) for i in range(5)), return_exceptions=True)
        store.down = False
        await gc.commit(record(9))
        return refused

    refused = asyncio.run(with_commit(store, body, window=0.02))
    assert all(isinstance(e, StoreUnavailable) and "not accepted, retry later" in str(e) for e in refused)
    assert "Connection refused" in str(refused[0])
    assert [ids for _, ids in store.puts] == [["r9"]]


def test_a_put_confirmed_after_the_caller_gave_up_is_still_remembered_as_accepted() -> None:
    store = FakeStore()
    store.gate.clear()
    remembered: list[str] = []
    late: list[str] = []

    async def body(gc: GroupCommit) -> None:
        with pytest.raises(StoreUnavailable, match=r"did not confirm the review.s batch within 0\.1s"):
            await gc.commit(record(1))
        store.gate.set()
        for _ in range(100):
            if remembered:
                break
            await asyncio.sleep(0.02)

    asyncio.run(
        with_commit(
            store,
            body,
            window=0.0,
            timeout=0.1,
            on_stored=lambda rs: remembered.extend(r.id for r in rs),
            on_late=lambda rs: late.extend(r.id for r in rs),
        )
    )
    assert remembered == ["r1"] and [ids for _, ids in store.puts] == [["r1"]]
    assert late == ["r1"], "its review marker is written then, so the client's retry is a replay on any replica"
