"""When an idle policy's daemon runs a full (API-reading) pass, table-driven: each reason and idle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import RetrainPolicyStatus
from modelloop.decide.policyplan import Wake
from modelloop.decide.wake import Feedback, full_pass_reason

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
PHASES = {"v1": Phase.SUPERSEDED, "v2": Phase.ACTIVE}


def idle_status(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 3,
        "activeVersion": "v2",
        "previousVersion": "v1",
        "latestVersion": "v2",
        "desired": {
            "version": "v2",
            "artifactURI": "s3://models/digits/v2/",
            "manifestDigest": "sha256:" + "0" * 64,
            "since": "2026-03-10T12:00:00Z",
            "reason": "Promotion",
        },
        "lastTrainingTime": "2026-03-10T11:00:00Z",
        "lastScheduleTime": "2026-03-10T12:00:00Z",
        "handled": {"rollbackTo": "previous", "retrainNow": "1"},
        "feedback": {"cursor": "k", "pendingCorrections": 5, "pendingReviews": 9},
        "liveAccuracy": {"version": "v2", "reviews": 20, "correct": 19, "accuracy": 0.95},
        "conditions": [
            {
                "type": "FeedbackReadable",
                "status": "True",
                "reason": "Readable",
                "message": "",
                "lastTransitionTime": "2026-03-10T12:00:00Z",
            }
        ],
    }
    status.update(changes)
    return status


def reason(**kw: Any) -> str | None:
    args: dict[str, Any] = {
        "status": idle_status(),
        "generation": 3,
        "annotations": {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "1"},
        "phases": PHASES,
        "phases_at_last_pass": PHASES,
        "retrain_seen": "1",
        "feedback": Feedback.NONE,
        "wake": None,
        "seconds_since_pass": 30.0,
        "resync_seconds": 600.0,
        "now": NOW,
    }
    args.update(kw)
    return full_pass_reason(
        RetrainPolicyStatus.model_validate(args["status"]),
        args["generation"],
        args["annotations"],
        args["phases"],
        args["phases_at_last_pass"],
        args["retrain_seen"],
        args["feedback"],
        args["wake"],
        args["seconds_since_pass"],
        args["resync_seconds"],
        args["now"],
        c.ANNOTATION_ROLLBACK_TO,
        c.ANNOTATION_RETRAIN_NOW,
    )


RETRAIN_2 = {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "2"}

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("idle: handled annotations, nothing new", {}, None),
    ("idle: feedback not peeked this tick", {"feedback": Feedback.UNCHECKED}, None),
    ("first tick after a start", {"phases_at_last_pass": None}, "Start"),
    ("spec edited", {"generation": 4}, "SpecChanged"),
    (
        "rollback-to set to a new value",
        {"annotations": {c.ANNOTATION_ROLLBACK_TO: "v1", c.ANNOTATION_RETRAIN_NOW: "1"}},
        "RollbackRequested",
    ),
    ("retrain-now set to a new value", {"annotations": RETRAIN_2}, "RetrainRequested"),
    ("annotations removed: nothing to do", {"annotations": {}}, None),
    (
        "rollout in progress",
        {"status": idle_status(desired={**idle_status()["desired"], "version": "v1"})},
        "RollingOut",
    ),
    ("a new version", {"phases": {**PHASES, "v3": Phase.PENDING}}, "VersionsChanged"),
    ("a version changed phase", {"phases": {**PHASES, "v2": Phase.SUPERSEDED}}, "VersionsChanged"),
    ("the watch has not delivered every version yet", {"phases": {"v2": Phase.ACTIVE}}, None),
    ("new feedback in the bucket", {"feedback": Feedback.NEW}, "NewFeedback"),
    ("bucket unreadable", {"feedback": Feedback.UNREADABLE}, "FeedbackUnreadable"),
    (
        "bucket readable again after a failure",
        {"status": idle_status(conditions=[{**idle_status()["conditions"][0], "status": "False"}])},
        "FeedbackReadableAgain",
    ),
    # The clock's part comes from the last pass's plan (Plan.wake, tested in test_decide_policyplan.py).
    ("the plan's minInterval has passed", {"wake": Wake(NOW, "MinIntervalPassed")}, "MinIntervalPassed"),
    ("a cron fire the plan named", {"wake": Wake(NOW - timedelta(minutes=1), "ScheduleFires")}, "ScheduleFires"),
    ("the plan's next time is still ahead", {"wake": Wake(NOW + timedelta(seconds=1), "ScheduleFires")}, None),
    (
        "retrain-now the last pass saw while the budget is spent waits",
        {"annotations": RETRAIN_2, "retrain_seen": "2", "wake": Wake(NOW + timedelta(hours=1), "BudgetFrees")},
        None,
    ),
    (
        "retrain-now once the budget frees",
        {"annotations": RETRAIN_2, "retrain_seen": "2", "wake": Wake(NOW, "BudgetFrees")},
        "BudgetFrees",
    ),
    ("a canary step past maxStepDuration", {"wake": Wake(NOW, "CanaryStepExpires")}, "CanaryStepExpires"),
    ("safety-net resync", {"seconds_since_pass": 601.0}, "Resync"),
]


@pytest.mark.parametrize(("kw", "want"), [x[1:] for x in CASES], ids=[x[0] for x in CASES])
def test_full_pass_reason(kw: dict[str, Any], want: str | None) -> None:
    assert reason(**kw) == want
