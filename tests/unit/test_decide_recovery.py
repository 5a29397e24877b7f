"""Repairing the policy status after a pass created a ModelVersion but its status write was lost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelloop.api.retrainpolicy import RetrainPolicyStatus
from modelloop.decide.recovery import CreatedVersion, adopt_unrecorded, unrecorded_creation

T0 = datetime(2026, 11, 23, 6, 0, 30, tzinfo=UTC)


def created(version: str, retrain_now: str | None = None, through: str | None = None) -> CreatedVersion:
    return CreatedVersion(version=version, created_at=T0, feedback_through=through, retrain_now=retrain_now)


@pytest.mark.parametrize(
    ("versions", "latest", "expected"),
    [
        ([], None, None),
        (["v1"], None, "v1"),  # the bootstrap's write was lost
        (["v1"], "v1", None),
        (["v1", "v2", "v3"], "v2", "v3"),
        (["v2", "v10"], "v9", "v10"),  # by number, not as strings
        (["v4"], "v7", None),  # v5..v7 pruned: status is ahead, nothing lost
    ],
)
def test_unrecorded_creation(versions: list[str], latest: str | None, expected: str | None) -> None:
    found = unrecorded_creation([created(v) for v in versions], latest)
    assert (found.version if found else None) == expected


def _status(**fields: object) -> RetrainPolicyStatus:
    base: dict[str, object] = {
        "latestVersion": "v2",
        "lastTrainingTime": "2026-11-23T05:00:00Z",
        "feedback": {"cursor": "digits/feedback/a.jsonl", "pendingCorrections": 5, "pendingReviews": 9},
        "handled": {"retrainNow": "loop-2"},
    }
    return RetrainPolicyStatus.model_validate({**base, **fields})


def test_adopting_a_retrain_now_version_consumes_the_request_and_the_feedback() -> None:
    out = adopt_unrecorded(_status(), created("v3", retrain_now="loop-3", through="digits/feedback/b.jsonl"), None)
    assert out.latest_version == "v3"
    assert out.last_training_time == T0
    assert (out.feedback.cursor, out.feedback.pending_corrections, out.feedback.pending_reviews) == (
        "digits/feedback/b.jsonl",
        0,
        0,
    )
    assert out.handled.retrain_now == "loop-3"
    assert out.last_schedule_time is None
    # the upload-time state of the lost pass is gone with it: count from the restored cursor once
    assert (out.feedback.seen_through, out.feedback.recent_keys) == (None, [])


def test_adopting_a_feedback_version_leaves_the_retrain_now_record_alone() -> None:
    before = _status()
    out = adopt_unrecorded(before, created("v3", through=None), None)
    assert out.handled.retrain_now == "loop-2"
    assert out.feedback.cursor == "digits/feedback/a.jsonl", "no snapshot key: the cursor stays"
    assert out.feedback.pending_corrections == 0
    assert before.latest_version == "v2" and before.feedback.pending_corrections == 5, "the input is not mutated"


def test_adopting_records_the_schedule_fire_the_lost_pass_consumed() -> None:
    out = adopt_unrecorded(_status(lastScheduleTime="2026-11-22T00:00:00Z"), created("v3"), "0 * * * *")
    assert out.last_schedule_time == datetime(2026, 11, 23, 6, 0, tzinfo=UTC), "the fire before the creation"
    later = adopt_unrecorded(_status(lastScheduleTime="2026-11-23T07:00:00Z"), created("v3"), "0 * * * *")
    assert later.last_schedule_time == datetime(2026, 11, 23, 7, 0, tzinfo=UTC), "never moves backwards"
