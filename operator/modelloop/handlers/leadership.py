"""Leader election for ``modelloop-operator``: one active replica, hot standbys, no split brain.

``modelloop.handlers.main`` runs every replica as a standby first: the process is up, its
imports are done, its liveness and metrics endpoints answer, but no handler runs. The
:class:`Elector` polls the Lease every retry period and takes it when it is absent, released,
or not renewed for a lease duration (the rules are :mod:`modelloop.decide.leadership`); only
then are the kopf handlers started. While leading, it renews every retry period; a leader that
has not renewed for the renew deadline (or finds another holder) stops at once and exits
non-zero, before any standby may take the lease, and the kubelet restarts it as a standby.
That is how client-go based controllers (kube-controller-manager, controller-runtime) avoid
two active replicas, and the same timings are the defaults (15 s / 10 s / 2 s).

On SIGTERM the handlers are stopped first (renewals go on meanwhile), then the lease is
released, so a standby (or the next pod of a rolling update) takes over at once instead of
after a lease duration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from modelloop import metrics
from modelloop.clients import leases
from modelloop.clients.leases import LeaseSnapshot
from modelloop.decide.leadership import (
    Action,
    LeaseDecision,
    LeaseRecord,
    Observation,
    check_timings,
    decide_lease,
    must_step_down,
    observe,
    released,
)

log = logging.getLogger("modelloop.leadership")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOST_LEASE_EXIT_CODE = 3
"""The exit status of a leader that lost its lease (the kubelet restarts it as a standby)."""

T = TypeVar("T")


class ElectionConfigError(Exception):
    """Leader election cannot start with this environment (the message says what to set)."""


@dataclass(frozen=True)
class ElectionConfig:
    lease_name: str
    namespace: str
    identity: str
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.lease_name}"

    @property
    def request_timeout(self) -> float:
        """One API request may take this long: a renewal that hangs must not outlive the renew deadline."""
        return max(1.0, min(self.retry_period * 2, self.renew_deadline / 2))


def config_from_env(
    lease_name: str, env: Mapping[str, str] = os.environ, namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE
) -> ElectionConfig:
    """The election's settings: the chart passes POD_NAME and POD_NAMESPACE through the downward API."""
    namespace = env.get("POD_NAMESPACE", "").strip()
    if not namespace:
        try:
            namespace = namespace_file.read_text().strip()
        except OSError:
            namespace = ""
    if not namespace:
        raise ElectionConfigError(
            "leader election needs the namespace of its Lease: set POD_NAMESPACE (the Helm chart sets it "
            f"from the downward API) or run in a pod ({namespace_file} is missing); "
            "or pass --standalone to run a single replica without election"
        )
    # The suffix tells a restarted container from its predecessor, which may still hold the lease.
    identity = f"{env.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"

    def seconds(name: str, default: float) -> float:
        raw = env.get(name, "")
        try:
            return float(raw) if raw else default
        except ValueError:
            raise ElectionConfigError(f"{name}={raw!r} is not a number of seconds") from None

    duration = seconds("MODELLOOP_LEASE_DURATION", 15)
    deadline = seconds("MODELLOOP_LEASE_RENEW_DEADLINE", 10)
    retry = seconds("MODELLOOP_LEASE_RETRY_PERIOD", 2)
    problem = check_timings(duration, deadline, retry)
    if problem:
        raise ElectionConfigError(
            f"leader election timings (MODELLOOP_LEASE_DURATION, MODELLOOP_LEASE_RENEW_DEADLINE, "
            f"MODELLOOP_LEASE_RETRY_PERIOD): {problem}"
        )
    return ElectionConfig(lease_name, namespace, identity, int(duration), deadline, retry)


@dataclass(frozen=True)
class Lost:
    """Why this replica is no longer the leader (a sentence for the log)."""

    why: str


class Elector:
    """One replica's side of the election: wait for the lease, hold it, release it.

    The Lease I/O runs on its own small thread pool (kopf's sync handlers share the default one,
    and a renewal must never queue behind them), and the waits use plain futures rather than
    tasks: kopf cancels every task created after it started when it stops, and the renewals must
    outlive the handlers' graceful stop.
    """

    def __init__(
        self,
        cfg: ElectionConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._monotonic = monotonic
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="lease")
        self._observed: Observation | None = None
        self._held: LeaseSnapshot | None = None  # the lease as this replica last wrote it
        self._leading_since: float | None = None

    @property
    def leading(self) -> bool:
        return self._held is not None

    async def _io(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the lease pool; every request in it has a timeout, so this wait is bounded."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def acquire(self, stop: asyncio.Future[None]) -> bool:
        """Waits as a standby until this replica holds the lease (True) or ``stop`` is done (False).

        A round that has started is finished (its requests have timeouts): a lease taken just as
        ``stop`` came is held, and the caller releases it.
        """
        cfg = self.cfg
        started = self._monotonic()
        last_said: tuple[str, str] | None = None
        log.info(
            "standby: replica %s waits for lease %s (duration %d s, retry every %g s) before handling anything",
            cfg.identity, cfg.lease, cfg.lease_duration, cfg.retry_period,
        )  # fmt: skip
        while not stop.done():
            try:
                outcome = await self._io(self._try_acquire)
            except Exception as e:  # noqa: BLE001 - the API server may be away for a while; keep trying
                outcome = None
                said = ("error", f"{type(e).__name__}: {e}")
                if said != last_said:
                    log.warning("standby: cannot read or write lease %s: %s (retrying)", cfg.lease, said[1])
                    last_said = said
            if isinstance(outcome, LeaseDecision):
                if outcome.action is not Action.WAIT:
                    waited = self._monotonic() - started
                    self._leading_since = self._monotonic()
                    metrics.set_leader(True)
                    metrics.LEADER_TRANSITIONS.inc()
                    log.info(
                        "became leader of lease %s after %.1f s as standby: %s; starting the handlers",
                        cfg.lease, waited, _acquired_because(outcome),
                    )  # fmt: skip
                    return True
                said = ("holder", outcome.holder)
                if said != last_said:
                    log.info(
                        "standby: lease %s is held by %s; this replica (%s) takes over if it is released or "
                        "not renewed for %d s",
                        cfg.lease, outcome.holder, cfg.identity, self._observed_duration(),
                    )  # fmt: skip
                    last_said = said
                else:
                    log.debug("standby: %s", outcome.message)
            # Jitter as client-go does: standbys that started together do not poll in lockstep.
            await _sleep(stop, cfg.retry_period * random.uniform(1.0, 1.2))
        return False

    def _observed_duration(self) -> int:
        rec = self._observed.record if self._observed else None
        return rec.duration_seconds if rec else self.cfg.lease_duration

    def _try_acquire(self) -> LeaseDecision | None:
        """One standby round (in a pool thread): read, decide, and write if it is ours to take.

        Returns the decision when it was carried out (WAIT, or a write that succeeded); None when
        another replica wrote first (409: the next round reads what it wrote).
        """
        cfg = self.cfg
        snap = leases.read_lease(cfg.namespace, cfg.lease_name, cfg.request_timeout)
        now = self._clock()
        self._observed = observe(self._observed, snap.record if snap else None, now)
        decision = decide_lease(self._observed, cfg.identity, now, cfg.lease_duration)
        if decision.action is Action.WAIT:
            return decision
        assert decision.record is not None
        written = self._write(decision.record, snap)
        if written is None:
            log.info("standby: another replica wrote lease %s first; reading it again", cfg.lease)
            return None
        self._held = written
        return decision

    def _write(self, record: LeaseRecord, read: LeaseSnapshot | None) -> LeaseSnapshot | None:
        cfg = self.cfg
        if read is None:
            return leases.create_lease(cfg.namespace, cfg.lease_name, record, cfg.request_timeout)
        return leases.replace_lease(cfg.namespace, cfg.lease_name, record, read.resource_version, cfg.request_timeout)

    def _renew(self) -> Lost | None:
        """One renewal (in a pool thread): write with the resourceVersion this replica last wrote.

        A conflict means someone else wrote the Lease: read it, and either renew over it (it is
        still ours, or nobody's) or report who took it.
        """
        cfg = self.cfg
        held = self._held
        assert held is not None, "renewing a lease that is not held"
        now = self._clock()
        renewed = leases.replace_lease(
            cfg.namespace, cfg.lease_name, _renewal(held.record, now, cfg.lease_duration),
            held.resource_version, cfg.request_timeout,
        )  # fmt: skip
        if renewed is None:
            snap = leases.read_lease(cfg.namespace, cfg.lease_name, cfg.request_timeout)
            holder = snap.record.holder if snap else ""
            if holder not in ("", cfg.identity):
                return Lost(f"another replica ({holder}) holds it")
            if snap is not None and holder == cfg.identity:
                record = _renewal(snap.record, now, cfg.lease_duration)
            else:
                log.warning(
                    "lease %s was %s while this replica held it (by hand?); taking it again",
                    cfg.lease, "released" if snap else "deleted",
                )  # fmt: skip
                record = LeaseRecord(
                    cfg.identity, cfg.lease_duration, now, now, snap.record.transitions + 1 if snap else 0
                )
            renewed = self._write(record, snap)
            if renewed is None:
                raise ConflictError(f"lease {cfg.lease} changed again while it was being renewed")
        self._held = renewed
        return None

    async def hold(self, done: asyncio.Future[None]) -> Lost | None:
        """Renews every retry period until ``done`` (None), or returns why the lease is lost.

        The renew deadline is counted from the start of the last renewal that succeeded, so the
        replica stops acting before a standby (which counts a whole lease duration from when it
        saw that renewal) may take over.
        """
        cfg = self.cfg
        last_ok = self._monotonic()
        last_error = ""
        while True:
            await _sleep(done, cfg.retry_period)
            if done.done():
                return None
            attempt = self._monotonic()
            left = last_ok + cfg.renew_deadline - attempt
            if must_step_down(attempt - last_ok, cfg.renew_deadline):
                return Lost(self._not_renewed(attempt - last_ok, last_error))
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self._renew)
            await asyncio.wait({fut}, timeout=left)
            if not fut.done():
                return Lost(self._not_renewed(self._monotonic() - last_ok, "the API server did not answer"))
            try:
                lost = fut.result()
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried until the deadline
                last_error = f"{type(e).__name__}: {e}"
                remaining = last_ok + cfg.renew_deadline - self._monotonic()
                log.warning(
                    "could not renew lease %s: %s; retrying, %.1f s left before this replica stops acting",
                    cfg.lease, last_error, max(remaining, 0),
                )  # fmt: skip
                continue
            if lost is not None:
                return lost
            if last_error:
                log.info("renewed lease %s again after %.1f s", cfg.lease, self._monotonic() - last_ok)
                last_error = ""
            last_ok = attempt

    def _not_renewed(self, seconds: float, error: str) -> str:
        detail = f"; last error: {error}" if error else ""
        return f"not renewed for {seconds:.1f} s (renew deadline {self.cfg.renew_deadline:g} s{detail})"

    async def release(self) -> None:
        """Gives the lease up after the handlers stopped, so a standby takes over at once.

        Bounded by the renew deadline: if the API server does not answer, the lease simply expires.
        """
        cfg = self.cfg
        held = self._held
        if held is None:
            return
        led = self._monotonic() - (self._leading_since or self._monotonic())

        def give_up() -> bool:
            snap: LeaseSnapshot | None = held
            for _ in range(3):
                assert snap is not None
                if snap.record.holder != cfg.identity:
                    return False
                out = leases.replace_lease(
                    cfg.namespace, cfg.lease_name, released(snap.record, self._clock()),
                    snap.resource_version, cfg.request_timeout,
                )  # fmt: skip
                if out is not None:
                    return True
                snap = leases.read_lease(cfg.namespace, cfg.lease_name, cfg.request_timeout)
                if snap is None:
                    return False
            return False

        self._held = None
        metrics.set_leader(False)
        fut = asyncio.get_running_loop().run_in_executor(self._pool, give_up)
        await asyncio.wait({fut}, timeout=cfg.renew_deadline)
        if fut.done() and fut.exception() is None and fut.result():
            log.info("released lease %s after leading for %.1f s; a standby can take over at once", cfg.lease, led)
        else:
            error = fut.exception() if fut.done() else "no answer"
            log.warning(
                "could not release lease %s (%s); a standby takes over when it expires, within %d s",
                cfg.lease, error or "another replica holds it", cfg.lease_duration,
            )  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ConflictError(RuntimeError):
    """The Lease kept changing under a renewal; the next renewal tries again."""


def _renewal(rec: LeaseRecord, now: datetime, duration: int) -> LeaseRecord:
    return LeaseRecord(rec.holder, duration, rec.acquire_time or now, now, rec.transitions)


def _acquired_because(d: LeaseDecision) -> str:
    return {
        "Absent": "no replica held it before",
        "Released": "the previous holder released it",
        "Held": "this replica already held it",
    }.get(d.reason, d.message)


async def _sleep(stop: asyncio.Future[None], seconds: float) -> None:
    """Sleeps ``seconds`` or until ``stop`` is done, without creating a task."""
    await asyncio.wait({stop}, timeout=seconds)
