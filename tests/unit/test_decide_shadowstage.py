"""The shadow stage: which reviews fill the paired tally, and when it holds a verified candidate back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.api.retrainpolicy import ShadowRolloutSpec, ShadowStatus
from modelloop.decide.paired import Verdict
from modelloop.decide.shadowstage import count_review, shadow_gate, tally_for

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
ON = ShadowRolloutSpec(enabled=True, minReviews=20, margin=0.02, maxDuration="1d")


@pytest.mark.parametrize(
    ("current", "candidate", "active", "expected"),
    [
        (None, None, "v1", None),
        (None, "v2", None, None),  # no active version to compare with: no tally
        (None, "v2", "v1", ("v2", "v1", T0)),
        (ShadowStatus(version="v2", activeVersion="v1", since=T0 - timedelta(hours=1), bothRight=5), "v2", "v1",
         ("v2", "v1", T0 - timedelta(hours=1))),  # same pair: kept, with its counts
        (ShadowStatus(version="v2", activeVersion="v1", since=T0 - timedelta(hours=1)), "v3", "v1", ("v3", "v1", T0)),
        (ShadowStatus(version="v2", activeVersion="v1", since=T0 - timedelta(hours=1)), "v3", "v2", ("v3", "v2", T0)),
        (ShadowStatus(version="v2", activeVersion="v1", since=T0 - timedelta(hours=1)), None, "v2",
         ("v2", "v1", T0 - timedelta(hours=1))),  # decided: the last tally stays as the evidence
    ],
)  # fmt: skip
def test_the_tally_follows_the_candidate_and_active_pair(
    current: ShadowStatus | None, candidate: str | None, active: str | None, expected: tuple[str, str, datetime] | None
) -> None:
    out = tally_for(current, candidate, active, T0)
    assert (None if out is None else (out.version, out.active_version, out.since)) == expected
    if current is not None and expected == (current.version, current.active_version, current.since):
        assert out is current


@pytest.mark.parametrize(
    ("version", "predicted", "label", "shadow_version", "shadow_predicted", "cell"),
    [
        ("v1", 3, 3, "v2", 3, "both_right"),
        ("v1", 3, 3, "v2", 5, "only_active"),
        ("v1", 5, 3, "v2", 3, "only_candidate"),
        ("v1", 5, 3, "v2", 4, "both_wrong"),
        ("v1", 3, 3, None, None, None),  # joined on a replica without the pair
        ("v1", 3, 3, "v9", 3, None),  # another candidate's pair
        ("v0", 3, 3, "v2", 3, None),  # answered by a version that is no longer active
    ],
)
def test_a_review_counts_in_one_cell_only_when_it_labels_this_pair(
    version: str, predicted: int, label: int, shadow_version: str | None, shadow_predicted: int | None, cell: str | None
) -> None:
    tally = ShadowStatus(version="v2", activeVersion="v1", since=T0)
    counted = count_review(tally, version, predicted, label, shadow_version, shadow_predicted)
    cells = {k: getattr(tally, k) for k in ("both_right", "only_active", "only_candidate", "both_wrong")}
    assert counted == (cell is not None)
    assert cells == {k: int(k == cell) for k in cells}


def _tally(both: int, active: int, candidate: int, wrong: int, since: datetime = T0) -> ShadowStatus:
    return ShadowStatus(
        version="v2", activeVersion="v1", since=since,
        bothRight=both, onlyActive=active, onlyCandidate=candidate, bothWrong=wrong,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "tally", "active", "now", "expected"),
    [
        (ShadowRolloutSpec(), _tally(0, 0, 0, 0), "v1", T0, Verdict.COLLECT),  # on by default: v2 is held
        (ShadowRolloutSpec(), None, None, T0, None),  # by default too, the first version is promoted at once
        (ShadowRolloutSpec(enabled=False), _tally(0, 0, 0, 0), "v1", T0, None),  # turned off: promoted at once
        (ON, None, None, T0, None),  # the first version has nothing to be compared with
        (ON, _tally(5, 0, 0, 0), "v1", T0, Verdict.COLLECT),  # below minReviews
        (ON, _tally(5, 0, 0, 0), "v1", T0 + timedelta(days=2), Verdict.REJECT),  # too few reviews in maxDuration
        (ON, _tally(150, 0, 40, 10), "v1", T0, Verdict.PROMOTE),  # clearly better
        (ON, _tally(150, 40, 0, 10), "v1", T0, Verdict.REJECT),  # clearly worse
    ],
)
def test_the_stage_holds_promotion_until_the_paired_test_decides(
    spec: ShadowRolloutSpec, tally: ShadowStatus | None, active: str | None, now: datetime, expected: Verdict | None
) -> None:
    gate = shadow_gate(spec, tally, "v2", active, now)
    assert (None if gate is None else gate[0].verdict) == expected
    if gate is not None and tally is not None:
        assert gate[1] is tally, "the decision is made on the tally in status, not a copy"
