"""Each prediction id counts once, its latest label winning: a record revising a stored review moves the
counts instead of adding to them (modelloop.decide.reviewcount)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.api.feedback import FeedbackRecord, latest_per_id
from modelloop.api.retrainpolicy import LiveAccuracy, RetrainPolicyStatus, ShadowStatus
from modelloop.decide.canary import CanarySettings, canary_for, tally_of
from modelloop.decide.reviewcount import contributions, count_record

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def review(
    label: int, predicted: int = 1, version: str = "v1", after: FeedbackRecord | None = None, **kw: object
) -> FeedbackRecord:
    """A review of prediction ``p1``; ``after``: the stored review it replaces (what the server puts in ``revises``)."""
    return FeedbackRecord(
        id="p1",
        version=version,
        predicted=predicted,
        label=label,
        reviewed_at=T0 + timedelta(seconds=1 if after else 0),
        revises=after.counted_as() if after else None,
        **kw,  # type: ignore[arg-type]
    )


def fresh(**kw: object) -> RetrainPolicyStatus:
    st = RetrainPolicyStatus(activeVersion="v1", **kw)  # type: ignore[arg-type]
    st.live_accuracy = LiveAccuracy(version="v1")
    return st


CONFIRM, CORRECT, RECORRECT, V0 = review(1), review(2), review(3), review(1, version="v0")


@pytest.mark.parametrize(
    ("records", "reviews", "corrections", "live"),
    [
        ([CONFIRM], 1, 0, (1, 1)),
        ([CORRECT], 1, 1, (1, 0)),
        ([CORRECT, review(1, after=CORRECT)], 1, 0, (1, 1)),  # corrected, then confirmed: latest wins
        ([CONFIRM, review(2, after=CONFIRM)], 1, 1, (1, 0)),  # confirmed on one replica, corrected on another
        ([CORRECT, review(3, after=CORRECT)], 1, 1, (1, 0)),  # another wrong label: still one correction
        ([CORRECT, review(3, after=CORRECT), review(1, after=RECORRECT)], 1, 0, (1, 1)),  # a chain of three
        ([review(1, after=CORRECT)], 0, 0, (0, 0)),  # what it revises was counted before a reset: clamped at 0
        ([V0, review(2, version="v0", after=V0)], 1, 1, (0, 0)),  # another version than the active: no live tally
    ],
)
def test_one_id_counts_once_with_its_latest_label(
    records: list[FeedbackRecord], reviews: int, corrections: int, live: tuple[int, int]
) -> None:
    st = fresh()
    for r in records:
        count_record(st, r)
    assert (st.feedback.pending_reviews, st.feedback.pending_corrections) == (reviews, corrections)
    assert (st.live_accuracy.reviews, st.live_accuracy.correct) == live
    if records[0].revises is None:  # the counts agree with what the trainer keeps of the same records
        kept = latest_per_id(records)
        assert len(kept) == reviews and sum(r.is_correction for r in kept) == corrections


def test_a_first_review_adds_and_a_revision_also_takes_back() -> None:
    assert [s for _, s in contributions(CORRECT)] == [1]
    revised = review(1, after=CORRECT)
    assert [(f.label, s) for f, s in contributions(revised)] == [(1, 1), (2, -1)]


def test_a_revision_moves_the_shadow_pair_tally_from_the_old_label_to_the_new() -> None:
    st = fresh(shadow=ShadowStatus(version="v2", activeVersion="v1"))
    first = review(2, shadow_version="v2", shadow_predicted=2)  # active wrong, candidate right
    count_record(st, first)
    assert st.shadow is not None and (st.shadow.only_candidate, st.shadow.both_right) == (1, 0)
    count_record(st, review(1, after=first, shadow_version="v2", shadow_predicted=2))  # active right now
    assert (st.shadow.only_candidate, st.shadow.only_active, st.shadow.both_right, st.shadow.both_wrong) == (0, 1, 0, 0)


def test_a_revision_moves_the_canary_tally_and_never_goes_below_zero() -> None:
    settings = CanarySettings(steps=(10,), min_reviews_per_step=1, max_step_duration=timedelta(hours=1), margin=0.0)
    st = fresh(canary=canary_for(None, "v2", "v1", settings, T0))
    first = review(2, version="v2")  # a correction of the candidate's answer
    count_record(st, first)
    count_record(st, review(1, version="v2", after=first))  # revised: it was right
    assert st.canary is not None
    t = tally_of(st.canary)
    assert (t.candidate_reviews, t.candidate_correct) == (1, 1)
    st = fresh(canary=canary_for(None, "v2", "v1", settings, T0))
    count_record(st, review(1, version="v2", after=review(2, version="v2")))  # its first was counted in another step
    assert st.canary is not None
    t = tally_of(st.canary)
    assert (t.candidate_reviews, t.candidate_correct) == (0, 0)
