"""Version numbering and the one-in-flight rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelloop.api import constants as c
from modelloop.api.modelversion import Phase, phase_of
from modelloop.decide.versions import (
    PhaseDecision,
    in_flight,
    mirrored_status,
    modelversion_name,
    next_version,
    promotion_candidate,
    version_phase,
)


@pytest.mark.parametrize(
    ("existing", "latest", "expected"),
    [
        ([], None, "v1"),
        (["v1"], None, "v2"),
        (["v9", "v10"], None, "v11"),
        (["v2"], "v7", "v8"),  # v3..v7 pruned: never reuse a number
        ([], "v3", "v4"),
        (["v12"], "v3", "v13"),  # status lagging behind (a lost write) does not go backwards
    ],
)
def test_next_version(existing: list[str], latest: str | None, expected: str) -> None:
    assert next_version(existing, latest) == expected


def test_next_version_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="not of the form v<N>"):
        next_version(["v01"], None)


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ({}, None),
        ({"v1": Phase.ACTIVE, "v2": Phase.REJECTED}, None),
        ({"v1": Phase.ACTIVE, "v2": Phase.PENDING}, "v2"),
        ({"v2": Phase.VERIFYING, "v10": Phase.TRAINING}, "v2"),
        ({"v1": Phase.VERIFIED}, None),
    ],
)
def test_in_flight(phases: dict[str, Phase], expected: str | None) -> None:
    assert in_flight(phases) == expected


def test_name() -> None:
    assert modelversion_name("digits", "v3") == "digits-v3"


@pytest.mark.parametrize(
    ("phases", "active", "expected"),
    [
        ({}, None, None),
        ({"v1": Phase.VERIFIED}, None, "v1"),
        ({"v1": Phase.ACTIVE, "v2": Phase.VERIFIED, "v3": Phase.VERIFIED}, "v1", "v3"),
        ({"v1": Phase.ACTIVE, "v2": Phase.REJECTED}, "v1", None),
        ({"v3": Phase.ACTIVE, "v2": Phase.VERIFIED}, "v3", None),  # older than what serves: never promoted
        # marked Promoting, then the crash lost the policy's desired write: promote it again
        ({"v1": Phase.ACTIVE, "v2": Phase.PROMOTING}, "v1", "v2"),
        ({"v1": Phase.PROMOTING}, None, "v1"),
        ({"v1": Phase.ACTIVE, "v2": Phase.TRAINING}, "v1", None),
    ],
)
def test_promotion_candidate(phases: dict[str, Phase], active: str | None, expected: str | None) -> None:
    assert promotion_candidate(phases, active) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [({}, Phase.PENDING), ({"phase": None}, Phase.PENDING), ({"phase": "Verified"}, Phase.VERIFIED),
     ({"phase": "Exploded"}, Phase.PENDING)],
)  # fmt: skip
def test_phase_of_reads_an_untouched_or_unknown_phase_as_pending(
    status: dict[str, str | None], expected: Phase
) -> None:
    assert phase_of(status) == expected


def _mv(phase: str, decision: PhaseDecision | None = None, **status: str) -> dict[str, object]:
    annotations = {c.ANNOTATION_PHASE_DECISION: decision.encode()} if decision is not None else {}
    return {"metadata": {"annotations": annotations}, "status": {"phase": phase, **status}}


PROMOTING = PhaseDecision(Phase.PROMOTING, "waiting for serving replicas")
ACTIVE = PhaseDecision(Phase.ACTIVE, "serving on 2/2 replicas", datetime(2026, 3, 10, 12, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("mv", "phase", "mirror"),
    [
        (_mv("Verified"), Phase.VERIFIED, {}),
        (
            _mv("Verified", PROMOTING),
            Phase.PROMOTING,
            {"phase": "Promoting", "message": "waiting for serving replicas"},
        ),
        (_mv("Promoting", PROMOTING, message="waiting for serving replicas"), Phase.PROMOTING, {}),
        (
            _mv("Promoting", ACTIVE, message="waiting for serving replicas"),
            Phase.ACTIVE,
            {"phase": "Active", "message": "serving on 2/2 replicas", "promotedAt": "2026-03-10T12:00:00Z"},
        ),
        (_mv("Training", PROMOTING), Phase.TRAINING, {}),  # in flight: its own handler's, never overridden
        (
            {"metadata": {"annotations": {c.ANNOTATION_PHASE_DECISION: "{not json"}}, "status": {"phase": "Verified"}},
            Phase.VERIFIED,
            {},
        ),
    ],
    ids=["no decision", "decided, not copied", "copied", "next decision", "in flight", "garbled annotation"],
)
def test_a_policy_decision_counts_at_once_and_is_copied_into_status(
    mv: dict[str, object], phase: Phase, mirror: dict[str, str]
) -> None:
    assert version_phase(mv) == phase
    assert mirrored_status(mv) == mirror
