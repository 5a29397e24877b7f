"""The canary stage's decisions: step, promote, roll back or keep collecting, per step, from the reviews
of each version's own answers (modelloop.decide.canary)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.api.retrainpolicy import CanaryRolloutSpec, CanaryStatus, RolloutSpec, ShadowRolloutSpec
from modelloop.decide.canary import (
    CanarySettings,
    CanaryTally,
    CanaryVerdict,
    after,
    answering,
    canary_for,
    canary_settings,
    count_canary_review,
    decide_canary,
    difference_bounds,
    ended_by_rollback,
    in_progress,
    tally_of,
)

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
S = CanarySettings(steps=(10, 50), min_reviews_per_step=100, max_step_duration=timedelta(hours=6), margin=0.02)
C, P, R, S_ = CanaryVerdict.COLLECT, CanaryVerdict.PROMOTE, CanaryVerdict.REJECT, CanaryVerdict.STEP


@pytest.mark.parametrize(
    ("step", "tally", "age", "verdict", "reason", "percent"),
    [
        (0, CanaryTally(0, 0, 0, 0), timedelta(0), C, "CollectingReviews", 10),
        (0, CanaryTally(99, 99, 900, 800), timedelta(hours=1), C, "CollectingReviews", 10),  # below minReviews
        (0, CanaryTally(500, 450, 99, 90), timedelta(hours=1), C, "CollectingReviews", 10),  # active too few
        (0, CanaryTally(50, 50, 900, 880), timedelta(hours=6), R, "CanaryTimedOut", 0),  # never held forever
        (0, CanaryTally(200, 198, 1800, 1710), timedelta(hours=1), S_, "Better", 50),  # 99% vs 95%
        (0, CanaryTally(2000, 1900, 8000, 7600), timedelta(hours=1), S_, "NotWorse", 50),  # equal, 95% each
        (1, CanaryTally(2000, 1900, 8000, 7600), timedelta(hours=1), P, "NotWorse", 0),  # last step: promote
        (1, CanaryTally(200, 198, 200, 180), timedelta(hours=1), P, "Better", 0),
        (0, CanaryTally(200, 150, 1800, 1710), timedelta(hours=1), R, "Worse", 0),  # 75% vs 95%
        (1, CanaryTally(1000, 850, 1000, 950), timedelta(hours=1), R, "Worse", 0),  # 85% vs 95%
        (1, CanaryTally(1000, 900, 1000, 950), timedelta(hours=1), C, "Inconclusive", 50),  # 90%: not yet sure
        (0, CanaryTally(120, 112, 1000, 950), timedelta(hours=1), C, "Inconclusive", 10),  # 93% vs 95%: unsure
        (0, CanaryTally(120, 112, 1000, 950), timedelta(hours=6), R, "Inconclusive", 0),  # ...past the limit
        (5, CanaryTally(2000, 1900, 8000, 7600), timedelta(hours=1), P, "NotWorse", 0),  # a stale index: the last
    ],
)  # fmt: skip
def test_a_step_is_decided_on_its_own_reviews(
    step: int, tally: CanaryTally, age: timedelta, verdict: CanaryVerdict, reason: str, percent: int
) -> None:
    d = decide_canary(S, step, tally, T0 - age, T0)
    assert (d.verdict, d.reason, d.percent) == (verdict, reason, percent), d.message
    assert "candidate" in d.message and "active" in d.message


def test_the_bounds_hold_the_observed_difference_and_narrow_with_reviews() -> None:
    small = difference_bounds(CanaryTally(100, 95, 100, 95), 0.025)
    large = difference_bounds(CanaryTally(10_000, 9_500, 10_000, 9_500), 0.025)
    assert small[0] < 0 < small[1] and large[0] < 0 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5
    # perfect accuracy on both sides still has a width (Agresti-Caffo), so 100 of 100 is not proof
    lo, hi = difference_bounds(CanaryTally(100, 100, 100, 100), 0.025)
    assert lo < 0 < hi


def test_a_rollout_with_one_step_promotes_from_it() -> None:
    one = CanarySettings(steps=(25,), min_reviews_per_step=10)
    assert decide_canary(one, 0, CanaryTally(0, 0, 0, 0), T0, T0).percent == 25
    assert decide_canary(one, 0, CanaryTally(400, 390, 400, 380), T0, T0).verdict is P


def test_settings_take_margin_and_alpha_from_the_shadow_stage() -> None:
    spec = RolloutSpec(
        shadow=ShadowRolloutSpec(margin=0.05, alpha=0.1),
        canary=CanaryRolloutSpec(enabled=True, steps=[5, 20, 60], minReviewsPerStep=30, maxStepDuration="36h"),
    )
    assert canary_settings(spec) == CanarySettings((5, 20, 60), 30, timedelta(hours=36), 0.05, 0.1)


def test_the_stage_starts_at_the_first_step_and_follows_its_candidate() -> None:
    new = canary_for(None, "v2", "v1", S, T0)
    assert (new.version, new.active_version, new.step, new.percent, new.step_started_at) == ("v2", "v1", 0, 10, T0)
    assert in_progress(new, "v2") and not in_progress(new, "v3") and not in_progress(None, "v2")
    assert canary_for(new, "v2", "v1", S, T0 + timedelta(hours=1)) is new
    assert canary_for(new, "v3", "v1", S, T0).version == "v3"
    assert canary_for(new, "v2", "v0", S, T0) is not new  # the active version changed under it: start over


@pytest.mark.parametrize(
    ("version", "correct", "counted", "cell"),
    [
        ("v2", True, True, (1, 1, 0, 0)),
        ("v2", False, True, (1, 0, 0, 0)),
        ("v1", True, True, (0, 0, 1, 1)),
        ("v1", False, True, (0, 0, 1, 0)),
        ("v0", True, False, (0, 0, 0, 0)),  # an answer of a version that is neither
    ],
)
def test_reviews_count_toward_the_version_that_answered(
    version: str, correct: bool, counted: bool, cell: tuple[int, int, int, int]
) -> None:
    st = canary_for(None, "v2", "v1", S, T0)
    assert count_canary_review(st, version, correct) is counted
    t = tally_of(st)
    assert (t.candidate_reviews, t.candidate_correct, t.active_reviews, t.active_correct) == cell


def test_a_decided_stage_counts_no_more_reviews() -> None:
    st = CanaryStatus(version="v2", activeVersion="v1", verdict="Reject", candidateReviews=3)
    assert not count_canary_review(st, "v2", True)
    assert st.candidate_reviews == 3 and not in_progress(st, "v2")


def test_a_step_starts_with_an_empty_tally_and_a_decision_keeps_its_evidence() -> None:
    st = canary_for(None, "v2", "v1", S, T0)
    st.candidate_reviews, st.candidate_correct, st.active_reviews, st.active_correct = 200, 196, 1800, 1710
    stepped = after(st, decide_canary(S, 0, tally_of(st), T0, T0), T0 + timedelta(hours=1))
    assert (stepped.step, stepped.percent, stepped.verdict, stepped.step_started_at) == (
        1, 50, "Step", T0 + timedelta(hours=1)
    )  # fmt: skip
    assert tally_of(stepped) == CanaryTally() and in_progress(stepped, "v2")
    assert st.step == 0, "the decision must not change the status it was given"
    stepped.candidate_reviews, stepped.candidate_correct, stepped.active_reviews, stepped.active_correct = (
        200, 150, 200, 190
    )  # fmt: skip
    rejected = after(stepped, decide_canary(S, 1, tally_of(stepped), T0, T0), T0)
    assert (rejected.verdict, rejected.reason, rejected.percent) == ("Reject", "Worse", 0)
    assert tally_of(rejected) == CanaryTally(200, 150, 200, 190)
    assert not in_progress(rejected, "v2")


ANSWERING = [
    # name, status, active, answering
    ("no stage", None, "v1", None),
    ("collecting beside v1", CanaryStatus(version="v2", activeVersion="v1", verdict="Collect", percent=10), "v1", "v2"),
    ("stepped", CanaryStatus(version="v2", activeVersion="v1", verdict="Step", percent=50), "v1", "v2"),
    ("decided", CanaryStatus(version="v2", activeVersion="v1", verdict="Reject"), "v1", None),
    ("promoted", CanaryStatus(version="v2", activeVersion="v1", verdict="Promote"), "v2", None),
    ("beside another active version", CanaryStatus(version="v3", activeVersion="v1", verdict="Collect"), "v2", None),
]  # fmt: skip


@pytest.mark.parametrize(("status", "active", "want"), [c[1:] for c in ANSWERING], ids=[c[0] for c in ANSWERING])
def test_the_candidate_answering_now(status: CanaryStatus | None, active: str, want: str | None) -> None:
    assert answering(status, active) == want


def test_a_rollback_ends_the_stage_and_keeps_its_tally() -> None:
    st = canary_for(None, "v2", "v1", S, T0)
    st.percent, st.candidate_reviews, st.candidate_correct, st.active_reviews, st.active_correct = 50, 9, 8, 30, 27
    ended = ended_by_rollback(st, "Rollback", "canary ended at 50% of requests")
    assert (ended.verdict, ended.reason, ended.percent, ended.message) == (
        "Reject", "Rollback", 0, "canary ended at 50% of requests"
    )  # fmt: skip
    assert tally_of(ended) == CanaryTally(9, 8, 30, 27) and answering(ended, "v1") is None
    assert not count_canary_review(ended, "v2", True), "no later review counts toward an ended stage"
    assert st.percent == 50, "the status it was given is unchanged"


@pytest.mark.parametrize(
    ("steps", "ok"),
    [([10, 50], True), ([1, 99], True), ([25], True), ([50, 10], False), ([10, 10], False), ([0, 10], False),
     ([10, 100], False), ([], False)],
)  # fmt: skip
def test_steps_are_strictly_increasing_percentages(steps: list[int], ok: bool) -> None:
    if ok:
        assert CanaryRolloutSpec(steps=steps).steps == steps
    else:
        with pytest.raises(ValueError, match="steps"):
            CanaryRolloutSpec(steps=steps)


def test_the_false_promotion_rate_of_a_worse_candidate_is_small() -> None:
    """Seeded simulation at the defaults (margin 2 points, alpha 0.05, 100 reviews per step, a look every 25
    reviews of the candidate): a candidate 5 points worse (90% vs 95%) passes both steps in under 1% of runs,
    and an equally good one (95% each) is rolled back as Worse in under 5%."""
    import random

    def run(p_candidate: float, rng: random.Random) -> CanaryVerdict:
        step, t = 0, CanaryTally()
        for _ in range(400):  # looks
            share = S.steps[step] / 100
            cr, cc, ar, ac = t.candidate_reviews, t.candidate_correct, t.active_reviews, t.active_correct
            for _ in range(25):
                if rng.random() < share:
                    cr, cc = cr + 1, cc + (rng.random() < p_candidate)
                else:
                    ar, ac = ar + 1, ac + (rng.random() < 0.95)
            t = CanaryTally(cr, cc, ar, ac)
            d = decide_canary(S, step, t, T0, T0)
            if d.verdict is CanaryVerdict.STEP:
                step, t = step + 1, CanaryTally()
            elif d.verdict in (P, R):
                return d.verdict
        return C

    rng = random.Random(16)
    worse = [run(0.90, rng) for _ in range(300)]
    same = [run(0.95, rng) for _ in range(300)]
    assert worse.count(P) / len(worse) < 0.01, worse.count(P)
    assert same.count(R) / len(same) < 0.05, same.count(R)
