"""Rollback requests and automatic rollback."""

from __future__ import annotations

import random

import pytest

from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import AutoRollbackSpec, LiveAccuracy
from modelloop.decide.rollback import (
    abandoned_version,
    decide_auto_rollback,
    decide_rollback_request,
    ended_canary,
)

PHASES = {
    "v1": Phase.SUPERSEDED,
    "v2": Phase.ROLLED_BACK,
    "v3": Phase.REJECTED,
    "v4": Phase.FAILED,
    "v5": Phase.ACTIVE,
    "v6": Phase.TRAINING,
}

REQUESTS = [
    ("no annotation", None, None, False, None, "NoRequest"),
    ("already handled", "v1", "v1", False, None, "NoRequest"),
    ("previous", "previous", None, True, "v1", "Rollback"),
    ("explicit superseded", "v1", None, True, "v1", "Rollback"),
    ("explicit rolled back", "v2", "v1", True, "v2", "Rollback"),
    ("rejected has no verified artifacts", "v3", None, False, None, "InvalidRollbackTarget"),
    ("failed", "v4", None, False, None, "InvalidRollbackTarget"),
    ("in flight", "v6", None, False, None, "InvalidRollbackTarget"),
    ("unknown version", "v99", None, False, None, "InvalidRollbackTarget"),
    ("garbage", "yesterday", None, False, None, "InvalidRollbackTarget"),
    ("the active one", "v5", None, False, None, "AlreadyServing"),
]


@pytest.mark.parametrize(
    ("request_", "handled", "act", "target", "reason"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_rollback_request(
    request_: str | None, handled: str | None, act: bool, target: str | None, reason: str
) -> None:
    d = decide_rollback_request(request_, handled, "v5", "v1", None, PHASES)
    assert (d.act, d.target, d.reason) == (act, target, reason), d.message
    if request_ and request_ != handled:
        assert d.handled == request_, "every new value is remembered, valid or not, so it is not retried every pass"
        assert request_ in d.message


def test_previous_without_previous_version() -> None:
    d = decide_rollback_request("previous", None, "v1", None, None, {"v1": Phase.ACTIVE})
    assert (d.act, d.reason) == (False, "InvalidRollbackTarget")
    assert "no previous version" in d.message


AUTO = AutoRollbackSpec(enabled=True, min_live_accuracy=0.8, min_reviews=50)

AUTO_CASES = [
    (
        "disabled",
        AutoRollbackSpec(enabled=False),
        LiveAccuracy(version="v5", reviews=100, correct=10, accuracy=0.1),
        False,
        "NotApplicable",
    ),
    ("too few reviews", AUTO, LiveAccuracy(version="v5", reviews=49, correct=0, accuracy=0.0), False, "TooFewReviews"),
    (
        "exactly at floor is healthy",
        AUTO,
        LiveAccuracy(version="v5", reviews=50, correct=40, accuracy=0.8),
        False,
        "Healthy",
    ),
    ("below floor", AUTO, LiveAccuracy(version="v5", reviews=50, correct=39, accuracy=0.78), True, "AutoRollback"),
    (
        "reviews of another version",
        AUTO,
        LiveAccuracy(version="v4", reviews=500, correct=0, accuracy=0.0),
        False,
        "NotApplicable",
    ),
]


@pytest.mark.parametrize(("spec", "live", "act", "reason"), [c[1:] for c in AUTO_CASES], ids=[c[0] for c in AUTO_CASES])
def test_auto_rollback(spec: AutoRollbackSpec, live: LiveAccuracy, act: bool, reason: str) -> None:
    d = decide_auto_rollback(spec, live, "v5", "v1", "v5", "Promotion")
    assert (d.act, d.reason) == (act, reason)
    if act:
        assert d.target == "v1" and "0.780" in d.message


def test_auto_rollback_needs_a_previous_version() -> None:
    bad = LiveAccuracy(version="v5", reviews=100, correct=0, accuracy=0.0)
    d = decide_auto_rollback(AUTO, bad, "v5", None, "v5", "Promotion")
    assert (d.act, d.reason) == (False, "NoPreviousVersion")


DEFAULT = AutoRollbackSpec()  # on, no floor, margin 0.05, alpha 0.05, 50 reviews


def live(version: str, reviews: int, correct: int) -> LiveAccuracy:
    return LiveAccuracy(version=version, reviews=reviews, correct=correct, accuracy=correct / reviews)


# The default compares the active v5 with what v1 measured while it served (before), never with a floor.
COMPARED = [
    # name, active's tally, v1's tally, v1's phase, act, reason
    ("on by default: clearly worse than v1 was", live("v5", 200, 140), live("v1", 400, 360), Phase.SUPERSEDED,
     True, "AutoRollback"),
    ("worse, but not by more than the margin", live("v5", 200, 174), live("v1", 400, 360), Phase.SUPERSEDED,
     False, "Healthy"),
    ("worse by more than the margin on too few reviews to prove it", live("v5", 50, 39), live("v1", 50, 45),
     Phase.SUPERSEDED, False, "Healthy"),
    ("better than v1 was", live("v5", 200, 190), live("v1", 400, 360), Phase.SUPERSEDED, False, "Healthy"),
    ("v1 had too few reviews while it served", live("v5", 200, 20), live("v1", 49, 49), Phase.SUPERSEDED,
     False, "Healthy"),
    ("a tally of another version is not v1's", live("v5", 200, 20), live("v0", 400, 400), Phase.SUPERSEDED,
     False, "Healthy"),
    ("no floor by default: a low accuracy alone is no proof", live("v5", 200, 20), None, Phase.SUPERSEDED,
     False, "Healthy"),
    ("hysteresis: never back to a version that was itself rolled back", live("v5", 200, 140),
     live("v1", 400, 360), Phase.ROLLED_BACK, False, "PreviousWasRolledBack"),
    ("every tally perfect but a margin of 0 is not crossed", live("v5", 100, 100), live("v1", 100, 100),
     Phase.SUPERSEDED, False, "Healthy"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("active", "before", "phase", "act", "reason"), [c[1:] for c in COMPARED], ids=[c[0] for c in COMPARED]
)
def test_auto_rollback_compares_with_the_previous_version(
    active: LiveAccuracy, before: LiveAccuracy | None, phase: Phase, act: bool, reason: str
) -> None:
    d = decide_auto_rollback(DEFAULT, active, "v5", "v1", "v5", "Promotion", before, phase)
    assert (d.act, d.reason) == (act, reason), d.message
    assert d.target == ("v1" if act else None)
    if reason == "PreviousWasRolledBack":
        assert "v1 was itself rolled back" in d.message and "rollback-to" in d.message


def test_a_declared_floor_still_acts_alone() -> None:
    spec = AutoRollbackSpec(min_live_accuracy=0.8)
    d = decide_auto_rollback(spec, live("v5", 60, 45), "v5", "v1", "v5", "Promotion", None, Phase.SUPERSEDED)
    assert (d.act, d.target, d.reason) == (True, "v1", "AutoRollback")
    assert "minLiveAccuracy 0.8" in d.message


def test_the_default_false_rollback_rate_at_the_margin_is_at_most_alpha() -> None:
    """200 seeded runs where v5 is worse than v1 by exactly the margin (0.85 vs 0.90, 200 and 400 reviews):
    rolled back in at most alpha of them; worse by 20 points: rolled back in nearly all."""
    rng = random.Random(20261202)

    def rate(p_active: float) -> float:
        acts = 0
        for _ in range(200):
            a = sum(rng.random() < p_active for _ in range(200))
            b = sum(rng.random() < 0.90 for _ in range(400))
            acts += decide_auto_rollback(DEFAULT, live("v5", 200, a), "v5", "v1", "v5", "Promotion",
                                         live("v1", 400, b), Phase.SUPERSEDED).act  # fmt: skip
        return acts / 200

    at_margin, far_worse = rate(0.85), rate(0.70)
    print(f"rolled back: at the margin {at_margin:.1%}, 20 points worse {far_worse:.1%}")
    assert at_margin <= DEFAULT.alpha + 0.02
    assert far_worse >= 0.95


# Rollback in every state: active v5 (previous v1), something else may be rolling out.
BAD = LiveAccuracy(version="v5", reviews=100, correct=10, accuracy=0.1)
AUTO_STATES = [
    # name, desired, desired reason, act, target, reason
    ("settled", "v5", "Promotion", True, "v1", "AutoRollback"),
    ("no desired recorded", None, None, True, "v1", "AutoRollback"),
    ("promotion of v6 half-finished or stalled", "v6", "Promotion", True, "v1", "AutoRollback"),
    ("rollback to v1 under way", "v1", "Rollback", False, None, "AlreadyRollingBack"),
    ("manual rollback to v3 under way is not overridden", "v3", "Rollback", False, None, "AlreadyRollingBack"),
    ("auto rollback under way", "v1", "AutoRollback", False, None, "AlreadyRollingBack"),
]


@pytest.mark.parametrize(
    ("desired", "desired_reason", "act", "target", "reason"),
    [c[1:] for c in AUTO_STATES],
    ids=[c[0] for c in AUTO_STATES],
)
def test_auto_rollback_in_every_rollout_state(
    desired: str | None, desired_reason: str | None, act: bool, target: str | None, reason: str
) -> None:
    d = decide_auto_rollback(AUTO, BAD, "v5", "v1", desired, desired_reason)
    assert (d.act, d.target, d.reason) == (act, target, reason), d.message
    if act and desired not in (None, "v5"):
        assert f"abandoning the rollout of {desired}" in d.message


# The request during a rollout: active v5, previous v1, desired v6 (Promoting, stalled or half-way).
ROLLOUT_PHASES = {**PHASES, "v6": Phase.PROMOTING}
DURING_ROLLOUT = [
    # name, request, desired, act, target, reason
    ("previous means the active one: abandon the rollout", "previous", "v6", True, "v5", "Rollback"),
    ("explicitly the active one", "v5", "v6", True, "v5", "Rollback"),
    ("an older version", "v1", "v6", True, "v1", "Rollback"),
    ("the version rolling out", "v6", "v6", False, None, "AlreadyServing"),
    ("a rejected version, still refused", "v3", "v6", False, None, "InvalidRollbackTarget"),
    ("rolling back to v1: previous returns to the active v5", "previous", "v1", True, "v5", "Rollback"),
]


@pytest.mark.parametrize(
    ("request_", "desired", "act", "target", "reason"),
    [c[1:] for c in DURING_ROLLOUT],
    ids=[c[0] for c in DURING_ROLLOUT],
)
def test_rollback_request_during_a_rollout(
    request_: str, desired: str, act: bool, target: str | None, reason: str
) -> None:
    d = decide_rollback_request(request_, None, "v5", "v1", desired, ROLLOUT_PHASES)
    assert (d.act, d.target, d.reason) == (act, target, reason), d.message
    assert d.handled == request_
    if act:
        assert f"abandoning the rollout of {desired}" in d.message


def test_previous_during_the_first_rollout_is_refused() -> None:
    d = decide_rollback_request("previous", None, None, None, "v1", {"v1": Phase.PROMOTING})
    assert (d.act, d.reason) == (False, "InvalidRollbackTarget")


ABANDONED = [
    # name, desired, desired phase, active, target, abandoned
    ("nothing rolling out", "v5", Phase.ACTIVE, "v5", "v1", None),
    ("no desired", None, None, "v5", "v1", None),
    ("a promotion is abandoned", "v6", Phase.PROMOTING, "v5", "v5", "v6"),
    ("a promotion is abandoned for an older version", "v6", Phase.PROMOTING, "v5", "v1", "v6"),
    ("a rollback target coming back keeps its phase", "v1", Phase.SUPERSEDED, "v5", "v5", None),
    ("re-targeting the same version", "v6", Phase.PROMOTING, "v5", "v6", None),
]


@pytest.mark.parametrize(
    ("desired", "phase", "active", "target", "want"), [c[1:] for c in ABANDONED], ids=[c[0] for c in ABANDONED]
)
def test_abandoned_version(
    desired: str | None, phase: Phase | None, active: str, target: str, want: str | None
) -> None:
    assert abandoned_version(desired, phase, active, target) == want


# The request during a canary: active v5 (previous v1), v6 verified and answering a share of requests;
# desired is the active version (a canary is not a rollout of status.desired).
CANARY_PHASES = {**PHASES, "v6": Phase.VERIFIED}
DURING_CANARY = [
    # name, request, act, target, reason, in the message
    ("previous means the active one: end the canary", "previous", True, "v5", "Rollback", "ending the canary of v6"),
    ("the active one by name ends the canary", "v5", True, "v5", "Rollback", "only v5 answers"),
    ("an older version ends it too", "v1", True, "v1", "Rollback", "ending the canary of v6 and rolling back"),
    ("the candidate itself is not a rollback", "v6", True, "v6", "Rollback", "rolling back from v5 to v6"),
    ("a rejected version, still refused", "v3", False, None, "InvalidRollbackTarget", "v3 is Rejected"),
]


@pytest.mark.parametrize(
    ("request_", "act", "target", "reason", "says"), [c[1:] for c in DURING_CANARY], ids=[c[0] for c in DURING_CANARY]
)
def test_rollback_request_during_a_canary(request_: str, act: bool, target: str | None, reason: str, says: str) -> None:
    d = decide_rollback_request(request_, None, "v5", "v1", "v5", CANARY_PHASES, canary="v6")
    assert (d.act, d.target, d.reason) == (act, target, reason), d.message
    assert says in d.message and d.handled == request_


def test_without_a_canary_the_active_one_is_already_served() -> None:
    d = decide_rollback_request("v5", None, "v5", "v1", "v5", CANARY_PHASES, canary=None)
    assert (d.act, d.reason) == (False, "AlreadyServing")


ENDED = [
    # name, canary, target, ended
    ("no canary", None, "v5", None),
    ("back to the active version", "v6", "v5", "v6"),
    ("back to an older version", "v6", "v1", "v6"),
    ("the candidate named itself", "v6", "v6", None),
]


@pytest.mark.parametrize(("canary", "target", "want"), [c[1:] for c in ENDED], ids=[c[0] for c in ENDED])
def test_ended_canary(canary: str | None, target: str, want: str | None) -> None:
    assert ended_canary(canary, target) == want
