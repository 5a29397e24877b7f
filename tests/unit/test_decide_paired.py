"""The paired shadow decision (McNemar's exact test with a non-inferiority margin): tables of tallies,
the binomial arithmetic against known values, and a seeded simulation of the error rates at the
defaults, looking every 25 reviews as the operator would."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from modelloop.api.retrainpolicy import ShadowRolloutSpec
from modelloop.decide.paired import (
    DEFAULT_MIN_REVIEWS,
    PairedSettings,
    PairedTally,
    Verdict,
    binomial_lower_tail,
    binomial_upper_tail,
    decide_paired,
    discordance_lower_bound,
    discordance_upper_bound,
    look_level,
    paired_settings,
)

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
DEFAULTS = PairedSettings()


@pytest.mark.parametrize(
    ("k", "n", "p", "upper", "lower"),
    [
        (0, 10, 0.5, 1.0, 1 / 1024),
        (10, 10, 0.5, 1 / 1024, 1.0),
        (8, 10, 0.5, 56 / 1024, 1013 / 1024),
        (3, 20, 0.1, 0.3230732, 0.8670467),  # scipy.stats.binom.sf(2, 20, 0.1), .cdf(3, 20, 0.1)
        (1, 5, 0.0, 0.0, 1.0),
        (5, 5, 1.0, 1.0, 1.0),
        (4, 5, 1.0, 1.0, 0.0),
    ],
)
def test_binomial_tails(k: int, n: int, p: float, upper: float, lower: float) -> None:
    assert binomial_upper_tail(k, n, p) == pytest.approx(upper, abs=1e-7)
    assert binomial_lower_tail(k, n, p) == pytest.approx(lower, abs=1e-7)


@pytest.mark.parametrize(
    ("m", "n", "alpha", "upper", "lower"),
    [
        (0, 200, 0.05, 1 - 0.05 ** (1 / 200), 0.0),  # no disagreement: (1-q)^n = alpha
        (10, 100, 0.05, 0.1637, 0.0553),  # one-sided 95 % Clopper-Pearson (scipy beta.ppf)
        (100, 100, 0.05, 1.0, 0.05 ** (1 / 100)),
    ],
)
def test_discordance_bounds(m: int, n: int, alpha: float, upper: float, lower: float) -> None:
    assert discordance_upper_bound(m, n, alpha) == pytest.approx(upper, abs=2e-4)
    assert discordance_lower_bound(m, n, alpha) == pytest.approx(lower, abs=2e-4)


@pytest.mark.parametrize(
    ("reviews", "level"),
    [(199, 0.025), (200, 0.025), (399, 0.025), (400, 0.0125), (800, 0.00625), (1700, 0.003125)],
)
def test_the_level_halves_each_time_the_reviews_double(reviews: int, level: float) -> None:
    assert look_level(reviews, 200, 0.05) == pytest.approx(level)


def _tally(both_right: int, only_active: int, only_candidate: int, both_wrong: int) -> PairedTally:
    return PairedTally(both_right, only_active, only_candidate, both_wrong)


@pytest.mark.parametrize(
    ("tally", "started_ago", "verdict", "reason"),
    [
        # below minReviews nothing is decided, however lopsided
        (_tally(100, 0, 50, 10), timedelta(hours=1), Verdict.COLLECT, "CollectingReviews"),
        # ... until maxDuration: never promoted without evidence
        (_tally(100, 0, 50, 10), timedelta(days=8), Verdict.REJECT, "TooFewReviews"),
        # clearly better: more disagreements go the candidate's way
        (_tally(170, 4, 20, 6), timedelta(hours=1), Verdict.PROMOTE, "Better"),
        # clearly worse than the 2-point margin
        (_tally(160, 25, 5, 10), timedelta(hours=1), Verdict.REJECT, "Worse"),
        # identical answers on every reviewed request: the disagreement bound alone is within the margin
        (_tally(270, 0, 0, 30), timedelta(hours=1), Verdict.PROMOTE, "NotWorse"),
        # too few to tell: a balanced handful of disagreements, the bound on them still above the margin
        (_tally(180, 4, 4, 12), timedelta(hours=1), Verdict.COLLECT, "Inconclusive"),
        # ... and the same tally after maxDuration is rejected as not proven
        (_tally(180, 4, 4, 12), timedelta(days=7), Verdict.REJECT, "Inconclusive"),
        # a large sample, many disagreements, the candidate a little (not significantly) better: no worse
        (_tally(2400, 140, 160, 300), timedelta(hours=1), Verdict.PROMOTE, "NotWorse"),
        # a large sample 1 point worse (inside the 2-point margin) is not rejected: it is what the margin allows
        (_tally(2400, 165, 135, 300), timedelta(hours=1), Verdict.COLLECT, "Inconclusive"),
        # no start time known (the stage's start was lost): never times out
        (_tally(180, 4, 4, 12), None, Verdict.COLLECT, "Inconclusive"),
    ],
)
def test_decisions(tally: PairedTally, started_ago: timedelta | None, verdict: Verdict, reason: str) -> None:
    started = NOW - started_ago if started_ago is not None else None
    d = decide_paired(tally, DEFAULTS, started, NOW)
    assert (d.verdict, d.reason) == (verdict, reason), d.message
    assert f"{tally.reviews}" in d.message, "the message must give the tally the on-call sees"


def test_a_zero_margin_is_mcnemars_test() -> None:
    settings = PairedSettings(min_reviews=10, margin=0.0, alpha=0.1)  # 60 reviews: 2 doublings, level 0.1/8 = 0.0125
    # 9 of 10 discordant pairs for the candidate: exact one-sided p = 11/1024 = 0.0107
    d = decide_paired(_tally(50, 1, 9, 0), settings, NOW, NOW)
    assert d.verdict == Verdict.PROMOTE and d.reason == "Better"
    assert d.p_promote == pytest.approx(11 / 1024)
    # identical models are never shown to be "not worse" with no margin to spend
    assert decide_paired(_tally(60, 0, 0, 0), settings, NOW, NOW).verdict == Verdict.COLLECT


def test_the_defaults_are_the_policy_defaults() -> None:
    assert paired_settings(ShadowRolloutSpec()) == DEFAULTS
    spec = ShadowRolloutSpec.model_validate({"minReviews": 50, "margin": 0.0, "alpha": 0.01, "maxDuration": "36h"})
    assert paired_settings(spec) == PairedSettings(50, 0.0, 0.01, timedelta(hours=36))


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="only_active"):
        PairedTally(1, -1, 0, 0)


def _run(rng: random.Random, cells: tuple[float, float, float, float], settings: PairedSettings, cap: int) -> Verdict:
    """Reviews arrive one by one with the cell probabilities; the decision is looked at every 25 reviews."""
    counts = [0, 0, 0, 0]
    edges = [sum(cells[: i + 1]) for i in range(4)]
    for n in range(1, cap + 1):
        u = rng.random()
        counts[next(i for i, e in enumerate(edges) if u < e or i == 3)] += 1
        if n % 25 == 0 and n >= settings.min_reviews:
            d = decide_paired(PairedTally(*counts), settings, NOW, NOW)
            if d.verdict != Verdict.COLLECT:
                return d.verdict
    return Verdict.COLLECT


# (both right, only active right, only candidate right, both wrong); active accuracy 0.90 in all
WORSE_BY_5 = (0.82, 0.08, 0.03, 0.07)  # candidate 0.85
AT_THE_MARGIN = (0.85, 0.05, 0.03, 0.07)  # candidate 0.88: worse by exactly the 2-point margin
BETTER_BY_5 = (0.88, 0.02, 0.07, 0.03)  # candidate 0.95


@pytest.mark.parametrize(
    ("name", "cells", "wrong", "bound"),
    [
        ("worse by 5 points is promoted", WORSE_BY_5, Verdict.PROMOTE, 0.01),
        ("worse by exactly the margin is promoted", AT_THE_MARGIN, Verdict.PROMOTE, DEFAULTS.alpha),
        ("better by 5 points is rejected", BETTER_BY_5, Verdict.REJECT, 0.01),
    ],
)
def test_simulated_error_rates_at_the_defaults(
    name: str, cells: tuple[float, float, float, float], wrong: Verdict, bound: float
) -> None:
    """False-promotion and false-rejection rates at the defaults (minReviews 200, margin 0.02, alpha 0.05),
    200 seeded runs of up to 1,600 reviews each, looked at every 25 reviews."""
    rng = random.Random(20261202)
    runs = 200
    outcomes = [_run(rng, cells, DEFAULTS, 1600) for _ in range(runs)]
    rate = outcomes.count(wrong) / runs
    decided = sum(o != Verdict.COLLECT for o in outcomes) / runs
    print(f"{name}: {rate:.1%} of runs (bound {bound:.0%}); decided in 1,600 reviews: {decided:.0%}")
    assert rate <= bound, f"{name} in {rate:.1%} of runs, above the stated bound {bound:.0%}"
    if wrong == Verdict.REJECT:
        assert outcomes.count(Verdict.PROMOTE) / runs >= 0.95, "a candidate 5 points better must be promoted"
    if cells is WORSE_BY_5:  # the undecided rest are rejected at maxDuration: never promoted without proof
        assert outcomes.count(Verdict.REJECT) / runs >= 0.85, "a candidate 5 points worse must be rejected"
    assert DEFAULTS.min_reviews == DEFAULT_MIN_REVIEWS
