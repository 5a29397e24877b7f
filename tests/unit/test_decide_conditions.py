"""Conditions: lastTransitionTime moves only when status changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelloop.decide.conditions import get_condition, parse_rfc3339, rfc3339, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_now() -> None:
    conds = set_condition([], "Ready", "False", "Training", "training v1", T0, 3)
    assert conds == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Training",
            "message": "training v1",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        }
    ]


def test_same_status_keeps_transition_time_but_updates_reason_and_message() -> None:
    conds = set_condition([], "Ready", "False", "Training", "a", T0)
    conds = set_condition(conds, "Ready", "False", "Verifying", "b", T1, 4)
    c = get_condition(conds, "Ready")
    assert c is not None
    assert (c["lastTransitionTime"], c["reason"], c["message"], c["observedGeneration"]) == (
        "2026-01-01T00:00:00Z",
        "Verifying",
        "b",
        4,
    )


def test_status_change_moves_transition_time_and_keeps_others() -> None:
    conds = set_condition([], "Training", "True", "InFlight", "", T0)
    conds = set_condition(conds, "Ready", "False", "NoActiveVersion", "", T0)
    before = list(conds)
    conds = set_condition(conds, "Ready", "True", "Serving", "v1", T1)
    assert [c["type"] for c in conds] == ["Training", "Ready"]
    assert conds[0] == before[0]
    assert conds[1]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert before[1]["status"] == "False", "the input list is not mutated"


def test_parse_rfc3339_reads_what_rfc3339_writes_and_the_api_servers_timestamps() -> None:
    assert parse_rfc3339(rfc3339(T1)) == T1
    assert parse_rfc3339("2026-01-01T00:05:00Z") == T1
    assert parse_rfc3339(None) is None
    assert parse_rfc3339("") is None
