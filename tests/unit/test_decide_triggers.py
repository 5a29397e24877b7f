"""The retrain trigger, table-driven: thresholds at the boundary, suspend, in-flight, cron, annotations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelloop.api.retrainpolicy import RetrainPolicySpec
from modelloop.decide.durations import parse_duration
from modelloop.decide.triggers import TriggerSnapshot, decide_trigger

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def spec(**triggers: Any) -> RetrainPolicySpec:
    suspend = triggers.pop("suspend", False)
    fb = {"minSamples": 100, "urgentSamples": 500, "minInterval": "168h"}
    fb.update(triggers.pop("feedback", {}))
    return RetrainPolicySpec.model_validate(
        {
            "model": "digits",
            "suspend": suspend,
            "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "trainer:1"},
            "triggers": {"feedback": fb, **triggers},
        }
    )


BASE = TriggerSnapshot(
    any_version=True,
    in_flight=None,
    active_version="v1",
    pending_corrections=0,
    pending_reviews=0,
    last_training_time=NOW - timedelta(days=8),
    last_schedule_time=None,
    created_at=NOW - timedelta(days=30),
    retrain_now=None,
    handled_retrain_now=None,
)

CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool, str]] = [
    ("bootstrap", {}, {"any_version": False, "active_version": None, "last_training_time": None}, True, "Bootstrap"),
    ("bootstrap waits while suspended", {"suspend": True}, {"any_version": False}, False, "Suspended"),
    ("nothing pending", {}, {}, False, "BelowThreshold"),
    ("one below minSamples", {}, {"pending_corrections": 99}, False, "BelowThreshold"),
    ("exactly minSamples after minInterval", {}, {"pending_corrections": 100}, True, "FeedbackThreshold"),
    (
        "minSamples but minInterval not passed",
        {},
        {"pending_corrections": 100, "last_training_time": NOW - timedelta(days=6)},
        False,
        "MinInterval",
    ),
    (
        "minInterval passed exactly",
        {},
        {"pending_corrections": 100, "last_training_time": NOW - timedelta(hours=168)},
        True,
        "FeedbackThreshold",
    ),
    (
        "exactly urgentSamples ignores minInterval",
        {},
        {"pending_corrections": 500, "last_training_time": NOW - timedelta(minutes=1)},
        True,
        "UrgentFeedback",
    ),
    (
        "one below urgentSamples within minInterval",
        {},
        {"pending_corrections": 499, "last_training_time": NOW - timedelta(minutes=1)},
        False,
        "MinInterval",
    ),
    (
        "no urgent threshold configured",
        {"feedback": {"urgentSamples": None}},
        {"pending_corrections": 10_000, "last_training_time": NOW},
        False,
        "MinInterval",
    ),
    ("in flight blocks urgent", {}, {"pending_corrections": 10_000, "in_flight": "v2"}, False, "InFlight"),
    ("in flight blocks retrain-now", {}, {"retrain_now": "a", "in_flight": "v2"}, False, "InFlight"),
    ("suspend blocks urgent", {"suspend": True}, {"pending_corrections": 10_000}, False, "Suspended"),
    ("retrain-now new value", {}, {"retrain_now": "2026-03-10"}, True, "RetrainRequested"),
    ("retrain-now already handled", {}, {"retrain_now": "x", "handled_retrain_now": "x"}, False, "BelowThreshold"),
    ("retrain-now changed value", {}, {"retrain_now": "y", "handled_retrain_now": "x"}, True, "RetrainRequested"),
    (
        "schedule fired with reviews pending",
        {"schedule": "0 12 * * *"},
        {"pending_reviews": 1, "last_schedule_time": NOW - timedelta(days=1)},
        True,
        "Schedule",
    ),
    (
        "schedule fired, nothing pending",
        {"schedule": "0 12 * * *"},
        {"last_schedule_time": NOW - timedelta(days=1)},
        False,
        "NothingPending",
    ),
    (
        "schedule fired, no active version yet",
        {"schedule": "0 12 * * *"},
        {"active_version": None, "last_schedule_time": NOW - timedelta(days=1)},
        True,
        "Schedule",
    ),
    (
        "schedule already handled this fire",
        {"schedule": "0 12 * * *"},
        {"pending_reviews": 5, "last_schedule_time": NOW.replace(minute=0)},
        False,
        "BelowThreshold",
    ),
    (
        "schedule never recorded: counts from creation",
        {"schedule": "0 12 * * *"},
        {"pending_reviews": 5, "created_at": NOW - timedelta(minutes=10)},
        False,
        "BelowThreshold",
    ),
]


@pytest.mark.parametrize(("spec_kw", "snap_kw", "act", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_trigger(spec_kw: dict[str, Any], snap_kw: dict[str, Any], act: bool, reason: str) -> None:
    d = decide_trigger(spec(**spec_kw), replace(BASE, **snap_kw), NOW)
    assert (d.act, d.reason) == (act, reason), d.message
    assert d.message


def test_retrain_now_reports_the_value_it_consumes() -> None:
    d = decide_trigger(spec(), replace(BASE, retrain_now="please"), NOW)
    assert d.retrain_now_handled == "please"


def test_schedule_fire_time_is_reported_even_when_nothing_is_pending() -> None:
    d = decide_trigger(spec(schedule="0 12 * * *"), replace(BASE, last_schedule_time=NOW - timedelta(days=1)), NOW)
    assert d.schedule_time == NOW.replace(minute=0)


def test_invalid_cron_names_itself() -> None:
    with pytest.raises(ValueError, match="not a valid 5-field cron"):
        decide_trigger(spec(schedule="every tuesday"), BASE, NOW)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("168h", 604800), ("1h30m", 5400), ("500ms", 0.5), ("1.5d", 129600), ("10m", 600), ("45s", 45)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "10", "h", "1x", "1h-2m", " 1h"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="is not of the form"):
        parse_duration(bad)
