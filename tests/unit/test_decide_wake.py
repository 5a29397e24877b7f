"""When an idle policy's daemon runs a full (API-reading) pass, table-driven: each reason and idle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import CanaryRolloutSpec, RetrainPolicySpec, RetrainPolicyStatus
from modelloop.decide.wake import Feedback, full_pass_reason

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
PHASES = {"v1": Phase.SUPERSEDED, "v2": Phase.ACTIVE}


def spec(**triggers: Any) -> RetrainPolicySpec:
    return RetrainPolicySpec.model_validate(
        {
            "model": "digits",
            "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "trainer:1"},
            "triggers": {"feedback": {"minSamples": 100}, **triggers},
            "autoRollback": {"enabled": True, "minLiveAccuracy": 0.8, "minReviews": 10},
        }
    )


def canary_spec() -> RetrainPolicySpec:
    s = spec()
    s.rollout.canary = CanaryRolloutSpec(enabled=True, maxStepDuration="6h")
    return s


def canary_status(step_started: datetime) -> dict[str, Any]:
    return {"version": "v3", "activeVersion": "v2", "percent": 10, "stepStartedAt": step_started, "verdict": "Collect"}


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
        "spec": spec(),
        "status": idle_status(),
        "generation": 3,
        "annotations": {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "1"},
        "phases": PHASES,
        "phases_at_last_pass": PHASES,
        "feedback": Feedback.NONE,
        "seconds_since_pass": 30.0,
        "resync_seconds": 600.0,
        "created_at": NOW - timedelta(days=30),
        "now": NOW,
    }
    args.update(kw)
    return full_pass_reason(
        args["spec"],
        RetrainPolicyStatus.model_validate(args["status"]),
        args["generation"],
        args["annotations"],
        args["phases"],
        args["phases_at_last_pass"],
        args["feedback"],
        args["seconds_since_pass"],
        args["resync_seconds"],
        args["created_at"],
        args["now"],
        c.ANNOTATION_ROLLBACK_TO,
        c.ANNOTATION_RETRAIN_NOW,
    )


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
    (
        "retrain-now set to a new value",
        {"annotations": {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "2"}},
        "RetrainRequested",
    ),
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
    (
        "counted corrections reached the threshold",
        {
            "status": idle_status(
                feedback={"cursor": "k", "pendingCorrections": 100, "pendingReviews": 100},
                lastTrainingTime="2026-01-01T00:00:00Z",
            )
        },
        "TrainingDue",
    ),
    (
        "threshold reached but a version is in flight",
        {
            "status": idle_status(feedback={"cursor": "k", "pendingCorrections": 100, "pendingReviews": 100}),
            "phases": {**PHASES, "v3": Phase.TRAINING},
            "phases_at_last_pass": {**PHASES, "v3": Phase.TRAINING},
        },
        None,
    ),
    ("cron fired with reviews pending", {"spec": spec(schedule="15 12 * * *")}, "TrainingDue"),
    (
        "cron fired, but the day's training budget is spent: no pass until it frees",
        {
            "spec": spec(schedule="15 12 * * *", maxTrainingsPerDay=1),
            "status": idle_status(trainingStarts=[NOW - timedelta(hours=2)]),
        },
        None,
    ),
    (
        "cron fired, budget left",
        {
            "spec": spec(schedule="15 12 * * *", maxTrainingsPerDay=2),
            "status": idle_status(trainingStarts=[NOW - timedelta(hours=2)]),
        },
        "TrainingDue",
    ),
    (
        "retrain-now while the budget is spent waits too",
        {
            "spec": spec(maxTrainingsPerDay=1),
            "status": idle_status(trainingStarts=[NOW - timedelta(hours=23)]),
            "annotations": {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "2"},
        },
        None,
    ),
    (
        "retrain-now once the oldest start left the window",
        {
            "spec": spec(maxTrainingsPerDay=1),
            "status": idle_status(trainingStarts=[NOW - timedelta(hours=25)]),
            "annotations": {c.ANNOTATION_ROLLBACK_TO: "previous", c.ANNOTATION_RETRAIN_NOW: "2"},
        },
        "RetrainRequested",
    ),
    (
        "cron fired, nothing pending: the fire is recorded",
        {"spec": spec(schedule="15 12 * * *"), "status": idle_status(feedback={"cursor": "k"})},
        "ScheduleFired",
    ),
    ("cron fire already recorded", {"spec": spec(schedule="0 12 * * *")}, None),
    (
        "live accuracy below the floor",
        {"status": idle_status(liveAccuracy={"version": "v2", "reviews": 20, "correct": 10, "accuracy": 0.5})},
        "AutoRollback",
    ),
    ("invalid spec, already reported", {"spec": None}, None),
    (
        "a training waited for the budget, which has freed",
        {
            "spec": spec(maxTrainingsPerDay=1),
            "status": idle_status(
                trainingStarts=[NOW - timedelta(hours=24, seconds=1)],
                conditions=[
                    {
                        **idle_status()["conditions"][0],
                        "type": "Training",
                        "status": "False",
                        "reason": "BudgetExhausted",
                    }
                ],
            ),
        },
        "BudgetFreed",
    ),
    (
        "a training waits for the budget, still spent",
        {
            "spec": spec(maxTrainingsPerDay=1),
            "status": idle_status(
                trainingStarts=[NOW - timedelta(hours=23)],
                conditions=[
                    {
                        **idle_status()["conditions"][0],
                        "type": "Training",
                        "status": "False",
                        "reason": "BudgetExhausted",
                    }
                ],
            ),
        },
        None,
    ),
    (
        "a canary step past maxStepDuration",
        {"spec": canary_spec(), "status": idle_status(canary=canary_status(NOW - timedelta(hours=7)))},
        "CanaryStepExpired",
    ),
    (
        "a canary step within maxStepDuration",
        {"spec": canary_spec(), "status": idle_status(canary=canary_status(NOW))},
        None,
    ),
    (
        "a decided canary is not woken for",
        {
            "spec": canary_spec(),
            "status": idle_status(canary={**canary_status(NOW - timedelta(hours=7)), "verdict": "Reject"}),
        },
        None,
    ),
    ("safety-net resync", {"seconds_since_pass": 601.0}, "Resync"),
]


@pytest.mark.parametrize(("kw", "want"), [x[1:] for x in CASES], ids=[x[0] for x in CASES])
def test_full_pass_reason(kw: dict[str, Any], want: str | None) -> None:
    assert reason(**kw) == want
