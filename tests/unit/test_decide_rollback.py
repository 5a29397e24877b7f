"""Rollback requests and automatic rollback."""

from __future__ import annotations

import pytest

from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import AutoRollbackSpec, LiveAccuracy
from modelloop.decide.rollback import decide_auto_rollback, decide_rollback_request

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
    d = decide_auto_rollback(spec, live, "v5", "v1", False)
    assert (d.act, d.reason) == (act, reason)
    if act:
        assert d.target == "v1" and "0.780" in d.message


def test_auto_rollback_waits_for_rollout_and_needs_a_previous_version() -> None:
    bad = LiveAccuracy(version="v5", reviews=100, correct=0, accuracy=0.0)
    assert not decide_auto_rollback(AUTO, bad, "v5", "v1", True).act
    d = decide_auto_rollback(AUTO, bad, "v5", None, False)
    assert (d.act, d.reason) == (False, "NoPreviousVersion")
