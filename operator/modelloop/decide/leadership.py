"""Leader election over a ``coordination.k8s.io/v1`` Lease: who may act, decided from one snapshot.

The operator runs with one active replica and hot standbys. Every replica reads the Lease each
retry period and asks :func:`decide_lease` what to do: take it (absent, released, or not renewed
for a whole lease duration), renew it (it holds it), or wait for the holder. The handler
(``modelloop.handlers.leadership``) does the reads and writes, with optimistic concurrency, so of
two replicas that decide "acquire" at the same moment only one write succeeds.

The same rules as client-go's ``leaderelection`` package, so on-call people who know
kube-controller-manager find no surprises:

- Expiry is judged on *this* replica's clock: a lease expires ``leaseDurationSeconds`` after this
  replica last saw it change (:func:`observe`), never by comparing the holder's ``renewTime`` with
  our clock, so clock skew between nodes cannot make two replicas act at once. The price: a
  replica that starts next to a stale lease waits one lease duration before taking it.
- A holder that stops cleanly releases the lease (empty ``holderIdentity``, 1 s duration), and a
  released lease is taken at once: a rolling update hands over without waiting.
- A leader whose renewals have not succeeded for ``renew deadline`` seconds (shorter than the lease
  duration) stops acting before anyone else may take over (:func:`must_step_down`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's ``spec``, as the API server holds it (times are the writers' wall clocks)."""

    holder: str
    """``holderIdentity``; empty when nobody holds it (released)."""
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int = 0


@dataclass(frozen=True)
class Observation:
    """A record as this replica last saw it, and since when (its own clock) it has looked like that."""

    record: LeaseRecord | None
    since: datetime


class Action(Enum):
    ACQUIRE = "acquire"
    RENEW = "renew"
    WAIT = "wait"


@dataclass(frozen=True)
class LeaseDecision:
    action: Action
    reason: str
    """One CamelCase word for logs and tests: Absent, Released, Expired, Held, HeldByOther."""
    message: str
    record: LeaseRecord | None = None
    """ACQUIRE / RENEW: the record to write (with the resourceVersion that was read)."""
    holder: str = ""
    """WAIT: who holds it."""
    expires: datetime | None = None
    """WAIT: when the holder's lease runs out (this replica's clock) unless it is renewed meanwhile."""


def observe(previous: Observation | None, record: LeaseRecord | None, now: datetime) -> Observation:
    """The observation after reading ``record`` at ``now``: its clock restarts only when the record changed.

    Any change counts (a renewal moves ``renewTime``; a new holder, a release): an unchanged record
    means the holder has not renewed since ``since``.
    """
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide_lease(observed: Observation, identity: str, now: datetime, duration_seconds: int) -> LeaseDecision:
    """What ``identity`` does with the lease it observed; ``now`` is this replica's clock.

    ``duration_seconds`` is the lease duration this replica writes when it acquires or renews. The
    record it returns keeps ``acquireTime`` and ``leaseTransitions`` on a renewal and counts a
    transition when the holder changes (released included), as client-go does.
    """
    rec = observed.record
    if rec is None:
        return LeaseDecision(
            Action.ACQUIRE,
            "Absent",
            "the lease does not exist yet",
            record=LeaseRecord(identity, duration_seconds, now, now, 0),
        )
    if rec.holder == identity:
        return LeaseDecision(
            Action.RENEW,
            "Held",
            "this replica holds the lease",
            record=replace(
                rec, duration_seconds=duration_seconds, acquire_time=rec.acquire_time or now, renew_time=now
            ),
        )
    taken = LeaseRecord(identity, duration_seconds, now, now, rec.transitions + 1)
    if not rec.holder:
        return LeaseDecision(Action.ACQUIRE, "Released", "the lease was released by its last holder", record=taken)
    expires = observed.since + timedelta(seconds=max(rec.duration_seconds, 0))
    if now >= expires:
        unrenewed = (now - observed.since).total_seconds()
        return LeaseDecision(
            Action.ACQUIRE,
            "Expired",
            f"{rec.holder} has not renewed the lease for {unrenewed:.1f} s (lease duration {rec.duration_seconds} s)",
            record=taken,
        )
    return LeaseDecision(
        Action.WAIT,
        "HeldByOther",
        f"{rec.holder} holds the lease; it expires in {(expires - now).total_seconds():.1f} s unless renewed",
        holder=rec.holder,
        expires=expires,
    )


def released(rec: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a holder writes when it stops cleanly: nobody holds it, and it is expired in 1 s.

    Both, so that replicas of an older version that only compare times also take it at once; the
    other fields stay valid (a 0 duration is rejected by the API server).
    """
    return replace(rec, holder="", duration_seconds=1, renew_time=now)


def must_step_down(seconds_since_renewal: float, renew_deadline_seconds: float) -> bool:
    """Whether a leader that last renewed ``seconds_since_renewal`` ago has to stop acting now.

    The renew deadline is shorter than the lease duration: a leader that cannot renew stops before
    a standby may consider the lease expired, so the two never act at the same time.
    """
    return seconds_since_renewal >= renew_deadline_seconds


def check_timings(duration_seconds: float, renew_deadline_seconds: float, retry_period_seconds: float) -> str | None:
    """Why these timings would allow two leaders at once (None when they are sound), as client-go checks."""
    if retry_period_seconds <= 0:
        return f"the retry period must be positive (got {retry_period_seconds:g} s)"
    if duration_seconds < 1 or duration_seconds != int(duration_seconds):
        return f"the lease duration must be a whole number of seconds >= 1 (got {duration_seconds:g} s)"
    if not duration_seconds > renew_deadline_seconds:
        return (
            f"the lease duration ({duration_seconds:g} s) must be longer than the renew deadline "
            f"({renew_deadline_seconds:g} s)"
        )
    if not renew_deadline_seconds > 1.2 * retry_period_seconds:
        return (
            f"the renew deadline ({renew_deadline_seconds:g} s) must be longer than 1.2 x the retry period "
            f"({retry_period_seconds:g} s)"
        )
    return None
