"""The elector's loops against an in-memory Lease with the API server's optimistic concurrency.

No process and no network: ``modelloop.clients.leases`` is replaced by :class:`FakeLeases`, which
answers like the API server (a write with a stale resourceVersion is a conflict). The timings are
short (lease 1 s, renew deadline 0.5 s, retry 0.1 s) so the real loops run in about a second.
The real API server is exercised by ``tests/integration/test_leader_election.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from modelloop.clients.leases import LeaseSnapshot
from modelloop.decide.leadership import LeaseRecord
from modelloop.handlers import leadership
from modelloop.handlers.leadership import ElectionConfig, Elector, Lost

NS, NAME = "modelloop-system", "modelloop"


class FakeLeases:
    """One Lease, as the API server keeps it: every write bumps the resourceVersion; stale writes fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: LeaseSnapshot | None = None
        self.version = 0
        self.failing = False  # every call raises, as when the API server is unreachable

    def _check(self) -> None:
        if self.failing:
            raise ConnectionError("API server unreachable")

    def _store(self, record: LeaseRecord) -> LeaseSnapshot:
        self.version += 1
        self.current = LeaseSnapshot(record, str(self.version))
        return self.current

    def read_lease(self, namespace: str, name: str, timeout: float) -> LeaseSnapshot | None:
        with self.lock:
            self._check()
            return self.current

    def create_lease(self, namespace: str, name: str, record: LeaseRecord, timeout: float) -> LeaseSnapshot | None:
        with self.lock:
            self._check()
            return None if self.current is not None else self._store(record)

    def replace_lease(
        self, namespace: str, name: str, record: LeaseRecord, resource_version: str, timeout: float
    ) -> LeaseSnapshot | None:
        with self.lock:
            self._check()
            if self.current is None or self.current.resource_version != resource_version:
                return None
            return self._store(record)

    def holder(self) -> str:
        return self.current.record.holder if self.current else ""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLeases]:
    f = FakeLeases()
    monkeypatch.setattr(leadership, "leases", f)
    yield f


def config(identity: str) -> ElectionConfig:
    return ElectionConfig(NAME, NS, identity, lease_duration=1, renew_deadline=0.5, retry_period=0.1)


async def never() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def test_two_standbys_racing_for_an_absent_lease_make_one_leader(fake: FakeLeases) -> None:
    async def scenario() -> None:
        a, b = Elector(config("a")), Elector(config("b"))
        stop = await never()
        racing = {asyncio.ensure_future(a.acquire(stop)), asyncio.ensure_future(b.acquire(stop))}
        done, pending = await asyncio.wait(racing, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and done.pop().result() is True
        assert fake.holder() in ("a", "b")
        assert [a.leading, b.leading].count(True) == 1
        stop.set_result(None)
        (loser,) = pending
        assert await asyncio.wait_for(loser, 2) is False, "the standby returns when stopped, without the lease"
        assert [a.leading, b.leading].count(True) == 1
        a.close()
        b.close()

    asyncio.run(scenario())


def test_a_standby_takes_a_dead_leaders_lease_only_after_a_lease_duration(fake: FakeLeases) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a, b = Elector(config("a")), Elector(config("b"))
        stop = await never()
        assert await a.acquire(stop)
        renewals_done = await never()
        holding = asyncio.ensure_future(a.hold(renewals_done))
        taking = asyncio.ensure_future(b.acquire(stop))
        await asyncio.sleep(1.5)  # a renews every 0.1 s: b must not take a live lease
        assert not taking.done() and fake.holder() == "a"
        renewals_done.set_result(None)  # a dies without releasing
        assert await holding is None
        died = loop.time()
        assert await asyncio.wait_for(taking, 5)
        waited = loop.time() - died
        assert 0.8 <= waited <= 1.6, waited
        assert fake.current is not None and fake.current.record.transitions == 1
        a.close()
        b.close()

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_by_its_renew_deadline(fake: FakeLeases) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a = Elector(config("a"))
        assert await a.acquire(await never())
        fake.failing = True
        started = loop.time()
        lost = await asyncio.wait_for(a.hold(await never()), 5)
        assert isinstance(lost, Lost)
        assert "not renewed for" in lost.why and "renew deadline 0.5 s" in lost.why
        assert "ConnectionError: API server unreachable" in lost.why
        assert loop.time() - started < 1.0, "it must stop before the lease (1 s) could expire"
        a.close()

    asyncio.run(scenario())


def test_a_leader_that_finds_another_holder_stops_at_once(fake: FakeLeases) -> None:
    async def scenario() -> None:
        a = Elector(config("a"))
        assert await a.acquire(await never())
        with fake.lock:
            assert fake.current is not None
            fake._store(replace(fake.current.record, holder="b"))
        lost = await asyncio.wait_for(a.hold(await never()), 2)
        assert lost == Lost("another replica (b) holds it")
        a.close()

    asyncio.run(scenario())


def test_release_lets_a_standby_take_over_within_a_retry_period(fake: FakeLeases) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a, b = Elector(config("a")), Elector(config("b"))
        stop = await never()
        assert await a.acquire(stop)
        taking = asyncio.ensure_future(b.acquire(stop))
        await asyncio.sleep(0.3)
        await a.release()
        released = loop.time()
        assert not a.leading
        assert await asyncio.wait_for(taking, 2)
        assert loop.time() - released < 0.5
        assert fake.holder() == "b"
        a.close()
        b.close()

    asyncio.run(scenario())
