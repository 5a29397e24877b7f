"""Leader election decisions, table-driven: acquire, renew or wait, on this replica's clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from modelloop.decide.leadership import (
    Action,
    LeaseRecord,
    Observation,
    check_timings,
    decide_lease,
    must_step_down,
    observe,
    released,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ME = "modelloop-7d9f-abcde-1a2b3c"
OTHER = "modelloop-7d9f-fghij-4d5e6f"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held_by(holder: str, renewed: float = 0, duration: int = 15, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder, duration, at(-100), at(renewed), transitions)


@dataclass(frozen=True)
class Case:
    name: str
    record: LeaseRecord | None
    seen_since: float  # when (seconds after T0) this replica first saw the record as it is
    now: float
    action: Action
    reason: str
    holder: str = ""
    expires: float | None = None
    transitions: int | None = None


CASES = [
    Case("no lease yet", None, 0, 0, Action.ACQUIRE, "Absent", transitions=0),
    Case("released by its holder", held_by(""), 0, 0, Action.ACQUIRE, "Released", transitions=4),
    Case("released with a 1 s duration, seen just now", released(held_by(OTHER), at(0)), 0, 0.1, Action.ACQUIRE,
         "Released", transitions=4),
    Case("held by me", held_by(ME), 0, 2, Action.RENEW, "Held", transitions=3),
    Case("held by me, even when my last renewal looks old", held_by(ME, renewed=-60), 0, 30, Action.RENEW, "Held",
         transitions=3),
    Case("held by another, just renewed", held_by(OTHER), 0, 2, Action.WAIT, "HeldByOther", OTHER, 15),
    Case("held by another, 1 s before expiry", held_by(OTHER), 0, 14, Action.WAIT, "HeldByOther", OTHER, 15),
    Case("held by another, unrenewed for exactly one duration", held_by(OTHER), 0, 15, Action.ACQUIRE, "Expired",
         transitions=4),
    Case("held by another, long dead", held_by(OTHER), 0, 600, Action.ACQUIRE, "Expired", transitions=4),
    # Expiry follows our clock, not the holder's renewTime: a holder whose clock is an hour behind
    # ours is still alive while we see its record change.
    Case("holder's clock an hour behind, renewed as we watch", held_by(OTHER, renewed=-3600), 10, 12, Action.WAIT,
         "HeldByOther", OTHER, 25),
    # ... and a stale lease found at a start is waited out once, not taken at once.
    Case("stale lease found at start", held_by(OTHER, renewed=-3600), 0, 1, Action.WAIT, "HeldByOther", OTHER, 15),
    Case("holder asked for a short duration", held_by(OTHER, duration=5), 0, 5, Action.ACQUIRE, "Expired",
         transitions=4),
    Case("holder with a longer duration than ours", held_by(OTHER, duration=60), 0, 30, Action.WAIT, "HeldByOther",
         OTHER, 60),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_lease(case: Case) -> None:
    observed = Observation(case.record, at(case.seen_since))
    d = decide_lease(observed, ME, at(case.now), 15)
    assert (d.action, d.reason) == (case.action, case.reason), d.message
    assert d.message
    if case.action is Action.WAIT:
        assert d.record is None
        assert d.holder == case.holder
        assert d.expires == at(case.expires if case.expires is not None else -1)
        assert case.holder in d.message
        return
    assert d.record is not None
    assert d.record.holder == ME
    assert d.record.duration_seconds == 15
    assert d.record.renew_time == at(case.now)
    assert d.record.transitions == case.transitions
    if case.action is Action.RENEW:
        assert case.record is not None
        assert d.record.acquire_time == case.record.acquire_time, "a renewal keeps the acquire time"
    else:
        assert d.record.acquire_time == at(case.now), "a new holder's acquire time is now"


def test_expired_message_names_the_holder_and_how_long() -> None:
    d = decide_lease(Observation(held_by(OTHER), at(0)), ME, at(17.5), 15)
    assert d.action is Action.ACQUIRE
    assert d.message == f"{OTHER} has not renewed the lease for 17.5 s (lease duration 15 s)"


def test_a_renewal_restarts_the_observation_clock() -> None:
    first = observe(None, held_by(OTHER, renewed=0), at(0))
    assert first.since == at(0)
    same = observe(first, held_by(OTHER, renewed=0), at(10))
    assert same.since == at(0), "an unchanged record keeps the time it was first seen"
    renewed = observe(same, held_by(OTHER, renewed=10), at(12))
    assert renewed.since == at(12)
    assert decide_lease(renewed, ME, at(20), 15).action is Action.WAIT
    assert decide_lease(same, ME, at(20), 15).action is Action.ACQUIRE


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, held_by(OTHER)),
        (held_by(OTHER), None),
        (held_by(OTHER), held_by("")),
        (held_by(OTHER), held_by(ME)),
        (held_by(OTHER), held_by(OTHER, transitions=4)),
        (held_by(OTHER), held_by(OTHER, duration=30)),
    ],
)
def test_any_change_is_a_new_observation(before: LeaseRecord | None, after: LeaseRecord | None) -> None:
    assert observe(Observation(before, at(0)), after, at(5)).since == at(5)


def test_release_keeps_a_valid_record_that_anyone_takes_at_once() -> None:
    rec = held_by(ME, renewed=3)
    out = released(rec, at(4))
    assert out.holder == ""
    assert out.duration_seconds == 1, "a 0 duration is invalid; 1 s also expires it for time-only readers"
    assert (out.acquire_time, out.transitions) == (rec.acquire_time, rec.transitions)
    assert out.renew_time == at(4)
    d = decide_lease(Observation(out, at(4)), OTHER, at(4), 15)
    assert (d.action, d.reason) == (Action.ACQUIRE, "Released")


@pytest.mark.parametrize(
    ("since_renewal", "deadline", "stop"),
    [(0, 10, False), (2, 10, False), (9.99, 10, False), (10, 10, True), (14, 10, True)],
)
def test_must_step_down(since_renewal: float, deadline: float, stop: bool) -> None:
    assert must_step_down(since_renewal, deadline) is stop


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "problem"),
    [
        (15, 10, 2, None),  # client-go's defaults
        (137, 107, 26, None),  # kube-controller-manager's --leader-elect-* in large clusters
        (10, 10, 2, "must be longer than the renew deadline"),
        (15, 2, 2, "longer than 1.2 x the retry period"),
        (15, 10, 0, "retry period must be positive"),
        (0.5, 0.2, 0.1, "whole number of seconds"),
        (15.5, 10, 2, "whole number of seconds"),
    ],
)
def test_check_timings(duration: float, deadline: float, retry: float, problem: str | None) -> None:
    found = check_timings(duration, deadline, retry)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
