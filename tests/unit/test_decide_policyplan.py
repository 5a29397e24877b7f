"""The policy pass's pure plan, table-driven: each main state transition from a snapshot to its actions,
Events and status (decide/policyplan.py). No I/O: the snapshot is built here, as the gatherer would."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, encode_batch
from modelloop.api.modelversion import Phase
from modelloop.decide.errors import Failure, Stage
from modelloop.decide.feedback import ListedObject
from modelloop.decide.policyplan import (
    CreateVersion,
    DeleteVersion,
    FeedbackRead,
    MarkVersion,
    Plan,
    PolicySnapshot,
    ReadBatch,
    ServingView,
    StorageRead,
    plan,
)
from modelloop.decide.rollout import PodView

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DIGEST = {v: "sha256:" + str(i) * 64 for i, v in enumerate(["v1", "v2", "v3", "v4", "v5", "v6"])}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_spec(**extra: Any) -> dict[str, Any]:
    return {
        "model": "digits",
        "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
        "dataset": {"path": "datasets/digits"},
        "training": {"image": "trainer:1"},
        "serving": {"deployment": "web"},
        "triggers": {"feedback": {"minSamples": 3, "minInterval": "1h"}},
        **extra,
    }


def mv(version: str, phase: Phase, attempt: int = 1, created: datetime = NOW - timedelta(days=3)) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase.value, "message": f"{version} is {phase.value}"}
    if phase not in (Phase.PENDING, Phase.TRAINING, Phase.FAILED):
        status["artifact"] = {"uri": f"s3://models/digits/{version}/", "manifestDigest": DIGEST[version]}
    return {
        "metadata": {"name": f"digits-{version}", "creationTimestamp": iso(created)},
        "spec": {"model": "digits", "version": version, "policy": "digits", "attempt": attempt},
        "status": status,
    }


def desired(version: str, reason: str = "Promotion", since: datetime = NOW - timedelta(minutes=1)) -> dict[str, Any]:
    return {
        "version": version,
        "artifactURI": f"s3://models/digits/{version}/",
        "manifestDigest": DIGEST[version],
        "since": iso(since),
        "reason": reason,
    }


def canary_step0(since: datetime) -> dict[str, Any]:
    """Status with v3 answering the first canary step (10 %) beside v2 since ``since``, undecided."""
    return {
        "canary": {
            "version": "v3",
            "activeVersion": "v2",
            "step": 0,
            "percent": 10,
            "stepStartedAt": iso(since),
            "verdict": "Collect",
        }
    }


def serving(active: dict[str, Any] | None = None) -> dict[str, Any]:
    """Status of a policy serving v2 (v1 before it), last trained two hours ago."""
    return {
        "observedGeneration": 1,
        "activeVersion": "v2",
        "previousVersion": "v1",
        "latestVersion": "v2",
        "desired": desired("v2", since=NOW - timedelta(days=1)),
        "lastTrainingTime": iso(NOW - timedelta(hours=2)),
        "feedback": {"cursor": "digits/feedback/0", "lastCountedAt": iso(NOW - timedelta(minutes=1))},
        "liveAccuracy": {"version": "v2"},
        **(active or {}),
    }


def record(i: int, version: str = "v2", correct: bool = False) -> FeedbackRecord:
    return FeedbackRecord.model_validate(
        {"id": f"p{i}", "version": version, "predicted": 1, "label": 1 if correct else 2, "reviewedAt": iso(NOW)}
    )


def feedback(*batches: list[FeedbackRecord]) -> FeedbackRead:
    objs = [ListedObject(f"digits/feedback/{i + 1}.jsonl", 100, NOW) for i in range(len(batches))]
    return FeedbackRead(tuple(objs), tuple(ReadBatch(o, encode_batch(b)) for o, b in zip(objs, batches, strict=True)))


@dataclass
class Case:
    name: str
    spec: dict[str, Any] = field(default_factory=policy_spec)
    status: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    storage: StorageRead = field(default_factory=StorageRead)
    serving: ServingView | None = None
    # expected
    actions: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, version, phase/reason): CreateVersion's trigger reason, MarkVersion's phase, '' for DeleteVersion."""
    events: list[tuple[str, str]] = field(default_factory=list)
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """type -> (status, reason) for the conditions this case is about."""
    status_has: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    needs_serving: bool = False


def snapshot(case: Case) -> PolicySnapshot:
    body = {
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "generation": 1,
            "creationTimestamp": iso(NOW - timedelta(days=30)),
            "annotations": case.annotations,
        },
        "spec": case.spec,
        "status": case.status,
    }
    return PolicySnapshot("ml", "digits", body, tuple(case.versions), case.storage, case.serving)


def summary(action: CreateVersion | MarkVersion | DeleteVersion) -> tuple[str, str, str]:
    if isinstance(action, CreateVersion):
        return ("Create", action.version, str(action.spec["trigger"]).split(":")[0])
    if isinstance(action, MarkVersion):
        return ("Mark", action.version, action.phase.value)
    return ("Delete", action.version, "")


SERVING_ALL = ServingView(2, (PodView("web-a", DIGEST["v3"], False), PodView("web-b", DIGEST["v3"], False)))
STALLED = ServingView(2, (PodView("web-a", DIGEST["v3"], False), PodView("web-b", DIGEST["v2"], False)))
SHADOW_ON = {"rollout": {"shadow": {"enabled": True}}}
CANARY_ON = {"rollout": {"shadow": {"enabled": False}, "canary": {"enabled": True, "steps": [10, 50]}}}

PAST_KEEP_VERSIONS: dict[str, Any] = {
    "spec": policy_spec(retention={"keepVersions": 2}),
    "status": serving(
        {"activeVersion": "v4", "previousVersion": "v3", "latestVersion": "v4", "desired": desired("v4")}
    ),
    "versions": [
        mv("v1", Phase.SUPERSEDED),
        mv("v2", Phase.SUPERSEDED),
        mv("v3", Phase.SUPERSEDED),
        mv("v4", Phase.ACTIVE),
    ],
}
"""v4 serving, v3 before it, v1 and v2 past keepVersions 2."""

CASES = [
    Case(
        "bootstrap v1: a new policy trains from the base dataset",
        actions=[("Create", "v1", "Bootstrap")],
        events=[("Normal", "TrainingStarted")],
        conditions={"Training": ("True", "InFlight"), "Ready": ("False", "NoActiveVersion")},
        status_has={"latestVersion": "v1", "trainingVersion": "v1", "trainingStarts": [iso(NOW)]},
        metrics=["TRAININGS_STARTED"],
    ),
    Case(
        "trigger: counted corrections reach minSamples after minInterval",
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(feedback=feedback([record(1), record(2)], [record(3), record(4, correct=True)])),
        actions=[("Create", "v3", "FeedbackThreshold")],
        events=[("Normal", "TrainingStarted")],
        conditions={"Training": ("True", "InFlight"), "FeedbackReadable": ("True", "Readable")},
        status_has={
            "latestVersion": "v3",
            "liveAccuracy": {"version": "v2", "reviews": 4, "correct": 1, "accuracy": 0.25},
        },
        metrics=["TRAININGS_STARTED"],
    ),
    Case(
        "below the threshold nothing starts",
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(feedback=feedback([record(1, correct=True)])),
        conditions={"Training": ("False", "BelowThreshold"), "Ready": ("True", "Serving")},
    ),
    Case(
        "promote: a verified version (shadow stage off) becomes desired; the pods are asked for",
        spec=policy_spec(rollout={"shadow": {"enabled": False}}),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        actions=[("Mark", "v3", "Promoting")],
        status_has={"desired": desired("v3", since=NOW) | {"since": iso(NOW)}},
        needs_serving=True,
    ),
    Case(
        "promote, with the pods read: rolling out",
        spec=policy_spec(rollout={"shadow": {"enabled": False}}),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        serving=ServingView(2),
        actions=[("Mark", "v3", "Promoting")],
        conditions={"RolloutComplete": ("False", "RollingOut"), "Ready": ("True", "RollingOut")},
    ),
    Case(
        "rollout complete: every replica serves v3",
        status=serving({"desired": desired("v3")}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.PROMOTING)],
        serving=SERVING_ALL,
        actions=[("Mark", "v2", "Superseded"), ("Mark", "v3", "Active")],
        events=[("Normal", "Promoted")],
        conditions={"RolloutComplete": ("True", "AllReplicasUpdated"), "RolledBack": ("False", "Promoted")},
        status_has={"activeVersion": "v3", "previousVersion": "v2", "liveAccuracy": {"version": "v3"}},
        metrics=["ROLLOUT_DURATION", "PROMOTIONS"],
    ),
    Case(
        "shadow hold: the paired test has too few reviews, promotion waits",
        spec=policy_spec(**SHADOW_ON),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        conditions={"ShadowStage": ("True", "CollectingReviews")},
        status_has={
            "candidate": {"version": "v3", "artifactURI": "s3://models/digits/v3/", "manifestDigest": DIGEST["v3"]}
        },
    ),
    Case(
        "canary start: the candidate answers the first step's share",
        spec=policy_spec(**CANARY_ON),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        events=[("Normal", "CanaryStarted")],
        conditions={"CanaryStage": ("True", "CollectingReviews")},
    ),
    Case(
        "canary step expired undecided: the candidate is rolled back (Rejected), and retried",
        spec=policy_spec(**CANARY_ON),
        status=serving(canary_step0(since=NOW - timedelta(days=2))),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        actions=[("Mark", "v3", "Rejected"), ("Create", "v4", "Retry")],
        events=[("Warning", "CanaryRejected"), ("Normal", "TrainingRetried")],
        conditions={"CanaryStage": ("False", "CanaryTimedOut"), "RetriesExhausted": ("False", "Retrying")},
        metrics=["CANARY_DECISIONS", "TRAININGS_STARTED", "TRAINING_RETRIES"],
    ),
    Case(
        "rollback request in a stalled rollout: the promotion is abandoned, v2 stays",
        status=serving({"desired": desired("v3", since=NOW - timedelta(hours=2))}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.PROMOTING)],
        annotations={c.ANNOTATION_ROLLBACK_TO: "previous"},
        serving=STALLED,
        actions=[("Mark", "v3", "RolledBack")],
        events=[("Warning", "RolledBack")],
        conditions={"RolloutComplete": ("True", "RolloutAbandoned"), "RolledBack": ("True", "Rollback")},
        status_has={"handled": {"rollbackTo": "previous"}, "desired": desired("v2", "Rollback", since=NOW)},
        metrics=["ROLLBACKS"],
    ),
    Case(
        "rollback request mid-canary: the split ends, the candidate is RolledBack, the active version stays",
        spec=policy_spec(**CANARY_ON),
        status=serving(canary_step0(since=NOW - timedelta(minutes=5))),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        annotations={c.ANNOTATION_ROLLBACK_TO: "previous"},
        actions=[("Mark", "v3", "RolledBack")],
        events=[("Warning", "RolledBack")],
        conditions={"CanaryStage": ("False", "Rollback"), "RolledBack": ("True", "Rollback")},
        status_has={"desired": desired("v2", "Rollback", since=NOW)},
        metrics=["CANARY_DECISIONS", "ROLLBACKS"],
    ),
    Case(
        "stalled rollout without a request: RolloutStalled, once",
        status=serving({"desired": desired("v3", since=NOW - timedelta(hours=2))}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.PROMOTING)],
        serving=STALLED,
        events=[("Warning", "RolloutStalled")],
        conditions={"RolloutComplete": ("False", "RolloutStalled")},
    ),
    Case(
        "auto rollback: live accuracy below the floor moves desired to the previous version",
        spec=policy_spec(autoRollback={"enabled": True, "minLiveAccuracy": 0.8, "minReviews": 3}),
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(feedback=feedback([record(1, correct=True), record(2)], [record(3)])),
        events=[("Warning", "AutoRollingBack")],
        conditions={"RolledBack": ("Unknown", "AutoRollback"), "Training": ("False", "BelowThreshold")},
        status_has={"desired": desired("v1", "AutoRollback", since=NOW)},
        metrics=["ROLLBACKS"],
        needs_serving=True,
    ),
    Case(
        "auto rollback held: v1 was itself rolled back, so reviews going bad again do not bounce back to it",
        spec=policy_spec(autoRollback={"enabled": True, "minLiveAccuracy": 0.8, "minReviews": 3}),
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.ROLLED_BACK), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(feedback=feedback([record(1, correct=True), record(2)], [record(3)])),
        events=[("Warning", "AutoRollbackHeld")],
        conditions={"AutoRollback": ("False", "PreviousWasRolledBack"), "Training": ("False", "BelowThreshold")},
        status_has={"desired": None},  # unchanged: v2 keeps serving
    ),
    Case(
        "rollout complete: the replaced version's live accuracy is kept for autoRollback to compare with",
        status=serving({"desired": desired("v3"), "liveAccuracy": {"version": "v2", "reviews": 80, "correct": 72}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.PROMOTING)],
        serving=SERVING_ALL,
        actions=[("Mark", "v2", "Superseded"), ("Mark", "v3", "Active")],
        events=[("Normal", "Promoted")],
        conditions={"RolloutComplete": ("True", "AllReplicasUpdated")},
        status_has={
            "previousLiveAccuracy": {"version": "v2", "reviews": 80, "correct": 72, "accuracy": None},
            "liveAccuracy": {"version": "v3", "reviews": 0, "correct": 0, "accuracy": None},
        },
        metrics=["ROLLOUT_DURATION", "PROMOTIONS"],
    ),
    Case(
        "retry: a rejected first attempt is trained again as the next version",
        spec=policy_spec(retry={"maxAttempts": 3}),
        status=serving({"latestVersion": "v3"}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.REJECTED)],
        actions=[("Create", "v4", "Retry")],
        events=[("Normal", "TrainingRetried")],
        conditions={"RetriesExhausted": ("False", "Retrying")},
        metrics=["TRAININGS_STARTED", "TRAINING_RETRIES"],
    ),
    Case(
        "retries exhausted: no new attempt, one Warning",
        spec=policy_spec(retry={"maxAttempts": 2}),
        status=serving({"latestVersion": "v3"}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.FAILED, attempt=2)],
        events=[("Warning", "RetriesExhausted")],
        conditions={"RetriesExhausted": ("True", "RetriesExhausted")},
    ),
    Case(
        "budget block: a retrain-now waits for the training budget",
        spec=policy_spec(triggers={"maxTrainingsPerDay": 1, "feedback": {"minSamples": 3}}),
        status=serving({"trainingStarts": [iso(NOW - timedelta(hours=2))]}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        annotations={c.ANNOTATION_RETRAIN_NOW: "now"},
        events=[("Warning", "BudgetExhausted")],
        conditions={"Training": ("False", "BudgetExhausted")},
    ),
    Case(
        "retention prune: versions past keepVersions are deleted with their artifacts",
        **PAST_KEEP_VERSIONS,
        actions=[("Delete", "v1", ""), ("Delete", "v2", "")],
        events=[("Normal", "RetentionPruned")],
    ),
    Case(
        "retention waits while the bucket is unreadable (the artifacts could not be removed)",
        **PAST_KEEP_VERSIONS,
        storage=StorageRead(Failure(Stage.STORAGE, "S3Error", "AccessDenied", s3_code="AccessDenied")),
        events=[("Warning", "StorageAccessDenied")],
        conditions={"FeedbackReadable": ("False", "StorageAccessDenied"), "Ready": ("True", "Serving")},
    ),
    Case(
        "spec invalid: Ready=False InvalidSpec, nothing else decided",
        spec=policy_spec(triggers={"schedule": "not a cron"}),
        events=[("Warning", "InvalidSpec")],
        conditions={"Ready": ("False", "InvalidSpec")},
        status_has={"observedGeneration": 1},
    ),
    Case(
        "storage unreadable before any version: Ready says why",
        storage=StorageRead(
            Failure(Stage.CREDENTIALS, "ApiException", "404 Not Found", http_status=404, subject="Secret ml/s3")
        ),
        actions=[("Create", "v1", "Bootstrap")],
        events=[("Warning", "SecretNotFound"), ("Normal", "TrainingStarted")],
        conditions={"FeedbackReadable": ("False", "SecretNotFound"), "Ready": ("False", "SecretNotFound")},
        metrics=["TRAININGS_STARTED"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c_.name for c_ in CASES])
def test_plan(case: Case) -> None:
    p = plan(snapshot(case), NOW)
    assert [summary(a) for a in p.actions] == case.actions
    assert sorted((e.type, e.reason) for e in p.events) == sorted(case.events)
    conds = {x["type"]: (x["status"], x["reason"]) for x in p.status.get("conditions") or []}
    for type_, expected in case.conditions.items():
        assert conds.get(type_) == expected, f"{type_}: {conds.get(type_)} != {expected}"
    for key, value in case.status_has.items():
        got = p.status.get(key)
        if isinstance(value, dict) and isinstance(got, dict):
            assert {k: got.get(k) for k in value} == value, key
        else:
            assert got == value, key
    assert sorted(m.metric for m in p.metrics) == sorted(case.metrics)
    assert p.needs_serving == case.needs_serving


def test_plan_is_pure_and_repeatable() -> None:
    """The same snapshot gives the same plan, and planning does not touch the snapshot."""
    case = CASES[1]
    snap = snapshot(case)
    before = repr(snap)
    assert plan(snap, NOW) == plan(snap, NOW)
    assert repr(snap) == before


def test_an_idle_policy_plans_no_action_and_no_status_write() -> None:
    case = Case("idle", status=serving(), versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)])
    first = plan(snapshot(case), NOW)
    settled = replace(case, status={**case.status, **first.status})
    again = plan(snapshot(settled), NOW)
    assert (again.actions, again.events, again.status) == ([], [], {})


def test_a_partial_read_keeps_what_was_counted_and_reports_the_failure() -> None:
    """A download failing part way: the batches before it count, the listing state does not move on."""
    full = feedback([record(1)], [record(2)])
    partial = FeedbackRead(full.listing, full.batches[:1])
    case = Case(
        "partial",
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(Failure(Stage.STORAGE, "S3Error", "SlowDown", s3_code="SlowDown"), partial),
    )
    p: Plan = plan(snapshot(case), NOW)
    fb = p.status["feedback"]
    assert (fb["cursor"], fb["pendingCorrections"], fb.get("lastCountedAt")) == ("digits/feedback/1.jsonl", 1, None)
    readable = next(x for x in p.status["conditions"] if x["type"] == "FeedbackReadable")
    assert (readable["status"], [e.reason for e in p.events]) == ("False", [readable["reason"]])


def test_a_quarantined_batch_is_an_event_and_is_not_counted() -> None:
    obj = ListedObject("digits/feedback/1.jsonl", 100, NOW)
    case = Case(
        "quarantine",
        status=serving({"feedback": {"cursor": "digits/feedback/0"}}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        storage=StorageRead(feedback=FeedbackRead((obj,), (ReadBatch(obj, b"not json\n"),))),
    )
    p = plan(snapshot(case), NOW)
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "FeedbackQuarantined")]
    assert p.status["feedback"]["quarantinedTotal"] == 1
    assert p.status["feedback"].get("pendingReviews", 0) == 0
    assert [m.metric for m in p.metrics] == ["FEEDBACK_QUARANTINED"]


WAKES = [
    Case(
        "idle: nothing the clock changes",
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
    ),
    Case(
        "corrections wait for minInterval",
        status=serving(
            {"feedback": {"cursor": "k", "pendingCorrections": 5}, "lastTrainingTime": iso(NOW - timedelta(minutes=20))}
        ),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        status_has={"at": NOW + timedelta(minutes=40), "reason": "MinIntervalPassed"},
    ),
    Case(
        "the next cron fire",
        spec=policy_spec(triggers={"schedule": "15 12 * * *", "feedback": {"minSamples": 3}}),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        status_has={"at": NOW + timedelta(minutes=15), "reason": "ScheduleFires"},
    ),
    Case(
        "a training held back by the budget",
        spec=policy_spec(triggers={"maxTrainingsPerDay": 1, "feedback": {"minSamples": 3}}),
        status=serving({"trainingStarts": [iso(NOW - timedelta(hours=2))]}),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE)],
        annotations={c.ANNOTATION_RETRAIN_NOW: "now"},
        status_has={"at": NOW + timedelta(hours=22), "reason": "BudgetFrees"},
    ),
    Case(
        "a canary step collecting reviews",
        spec=policy_spec(**CANARY_ON),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        status_has={"at": NOW + timedelta(days=1), "reason": "CanaryStepExpires"},
    ),
    Case(
        "a shadow stage collecting reviews",
        spec=policy_spec(**SHADOW_ON),
        status=serving(),
        versions=[mv("v1", Phase.SUPERSEDED), mv("v2", Phase.ACTIVE), mv("v3", Phase.VERIFIED)],
        status_has={"at": NOW + timedelta(days=7), "reason": "ShadowStageExpires"},
    ),
]


@pytest.mark.parametrize("case", WAKES, ids=[c_.name for c_ in WAKES])
def test_the_plan_says_when_the_clock_alone_changes_a_decision(case: Case) -> None:
    """What the daemon's idle ticks wait for (decide/wake.py): the same plan, not a copy of its decisions."""
    wake = plan(snapshot(case), NOW).wake
    if not case.status_has:
        assert wake is None
    else:
        assert wake is not None and (wake.at, wake.reason) == (case.status_has["at"], case.status_has["reason"])
