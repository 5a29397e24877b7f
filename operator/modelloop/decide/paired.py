"""Promote, reject or keep collecting: the paired test on reviewed shadow-scored requests.

In the shadow stage the candidate scores the same live inputs as the active version, and a review
labels both answers at once. Each reviewed request is one of four cells: both right, only the
active right (``b``), only the candidate right (``c``), both wrong. Only the discordant pairs
carry information about which model is better (McNemar): given ``m = b + c`` discordant pairs,
``c`` is binomial with ``pi = P(candidate right | they disagree)``.

The hypothesis is non-inferiority with a declared ``margin`` on the accuracy difference
``d = acc(candidate) - acc(active) = (c - b) / n``:

* **promote** when ``d <= -margin`` is rejected at level ``alpha_k``: the exact binomial upper
  tail ``P(X >= c | m, pi0) <= alpha_k / 2`` with ``pi0 = (q - margin) / (2q)``, the conditional
  probability that ``d = -margin`` implies at discordance rate ``q`` (McNemar's exact test shifted
  by the margin; with ``margin = 0`` it is McNemar's test itself). ``q`` is unknown, so the test
  takes its one-sided Clopper-Pearson upper bound at ``alpha_k / 2`` (``pi0`` grows with ``q``:
  the cautious side); the two halves keep a look's false-promotion probability within ``alpha_k``
  exactly, not approximately. When that bound is itself within the margin, non-inferiority is
  proven whichever way the few disagreements went (``d >= -q`` always).
* **reject** when ``d >= -margin`` is rejected at ``alpha_k`` (lower tail ``P(X <= c | m, pi0)``
  at the observed ``q = m/n``): the candidate is worse than the margin allows. This side uses the
  plug-in estimate (its error is a good candidate kept back, which the simulation bounds).
* otherwise **collect** more reviews; nothing is decided below ``minReviews``; after
  ``maxDuration`` in the stage an undecided candidate is rejected (not proven no worse: a
  candidate is never promoted without evidence).

The decision is re-evaluated as reviews arrive, and repeated looks at a fixed level inflate the
error rate. The level therefore halves each time the reviews double past ``minReviews``
(``alpha_k = alpha / 2^(k+1)`` for ``n`` in ``[minReviews*2^k, minReviews*2^(k+1))``): a
Bonferroni spend over the doublings that sums to ``alpha``. The error rates this gives at the
defaults, measured by a seeded simulation with a look every 25 reviews (tests/unit/test_decide_paired.py),
are what is promised: a candidate 5 points worse is promoted in under 1 % of runs, one worse by
exactly the margin in under ``alpha``, and a candidate 5 points better is rejected in under 1 %.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from modelloop.api.retrainpolicy import ShadowRolloutSpec

from .durations import parse_duration

DEFAULT_MIN_REVIEWS = 200
DEFAULT_MARGIN = 0.02
DEFAULT_ALPHA = 0.05
DEFAULT_MAX_DURATION = timedelta(days=7)


class Verdict(StrEnum):
    PROMOTE = "Promote"
    REJECT = "Reject"
    COLLECT = "Collect"


@dataclass(frozen=True)
class PairedTally:
    """Reviewed shadow-scored requests, by which of the two models the review found right."""

    both_right: int = 0
    only_active: int = 0
    only_candidate: int = 0
    both_wrong: int = 0

    def __post_init__(self) -> None:
        for name in ("both_right", "only_active", "only_candidate", "both_wrong"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    @property
    def reviews(self) -> int:
        return self.both_right + self.only_active + self.only_candidate + self.both_wrong

    @property
    def discordant(self) -> int:
        return self.only_active + self.only_candidate

    @property
    def active_accuracy(self) -> float:
        return (self.both_right + self.only_active) / self.reviews if self.reviews else 0.0

    @property
    def candidate_accuracy(self) -> float:
        return (self.both_right + self.only_candidate) / self.reviews if self.reviews else 0.0


@dataclass(frozen=True)
class PairedSettings:
    """``spec.rollout.shadow`` as the decision needs it."""

    min_reviews: int = DEFAULT_MIN_REVIEWS
    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    max_duration: timedelta = DEFAULT_MAX_DURATION


@dataclass(frozen=True)
class PairedDecision:
    verdict: Verdict
    reason: str
    message: str
    level: float
    """The significance level spent at this look (``alpha_k``); 0 while below minReviews."""
    p_promote: float | None = None
    """p-value against "worse by the margin or more" (small: promote)."""
    p_reject: float | None = None
    """p-value against "no worse than the margin" (small: reject)."""


def paired_settings(spec: ShadowRolloutSpec) -> PairedSettings:
    """``spec.rollout.shadow`` (the schema has checked every field) as the decision's settings."""
    return PairedSettings(
        min_reviews=spec.min_reviews,
        margin=spec.margin,
        alpha=spec.alpha,
        max_duration=parse_duration(spec.max_duration),
    )


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def _tail(k: int, n: int, p: float, step: int) -> float:
    """Sum of the pmf from ``k`` outwards (``step`` +1: upper tail, -1: lower tail), by the pmf's
    term ratio, stopping once the terms no longer change the sum: O(sqrt(n)) terms, not O(n)."""
    term = math.exp(_log_pmf(k, n, p))
    total, i = term, k
    if p <= 0.0 or p >= 1.0:
        return total
    odds = p / (1 - p)
    while 0 <= i + step <= n:
        term *= (n - i) / (i + 1) * odds if step > 0 else i / (n - i + 1) / odds
        i += step
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, total)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if k <= n * p:  # the tail holds the mode: sum the short side instead
        return max(0.0, 1.0 - _tail(k - 1, n, p, -1))
    return _tail(k, n, p, +1)


def binomial_lower_tail(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    if k >= n * p:
        return max(0.0, 1.0 - _tail(k + 1, n, p, +1))
    return _tail(k, n, p, -1)


def _solve(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The root of ``f`` (monotone, opposite signs at ``lo`` and ``hi``) by the Illinois method:
    a handful of evaluations where bisection takes thirty, which the simulation test needs."""
    f_lo, f_hi = f(lo), f(hi)
    side = 0
    for _ in range(60):
        if hi - lo < 1e-9:
            break
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_hi != f_lo else (lo + hi) / 2
        fx = f(x)
        if abs(fx) < 1e-12:
            return x
        if (fx > 0) == (f_hi > 0):
            hi, f_hi = x, fx
            if side == 1:
                f_lo /= 2
            side = 1
        else:
            lo, f_lo = x, fx
            if side == -1:
                f_hi /= 2
            side = -1
    return (lo + hi) / 2


@functools.lru_cache(maxsize=4096)
def discordance_upper_bound(m: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on the discordance rate: the q with ``P(M <= m | n, q) = alpha``."""
    if m >= n:
        return 1.0
    if m == 0:
        return 1.0 - float(alpha ** (1 / n))
    return _solve(lambda q: binomial_lower_tail(m, n, q) - alpha, m / n, 1.0)


@functools.lru_cache(maxsize=4096)
def discordance_lower_bound(m: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on the discordance rate: the q with ``P(M >= m | n, q) = alpha``."""
    if m <= 0:
        return 0.0
    if m >= n:
        return float(alpha ** (1 / n))
    return _solve(lambda q: binomial_upper_tail(m, n, q) - alpha, 0.0, m / n)


def _pi0(q: float, margin: float) -> float:
    """P(candidate right | disagreement) when the accuracy difference is exactly ``-margin`` at discordance ``q``."""
    return min(0.5, max(0.0, (q - margin) / (2 * q))) if q > 0 else 0.5


def look_level(reviews: int, min_reviews: int, alpha: float) -> float:
    """``alpha / 2^(k+1)`` where ``k`` counts the doublings of the reviews past ``min_reviews``."""
    k = max(0, (reviews // min_reviews).bit_length() - 1)
    return alpha / float(2 ** (k + 1))


def decide_paired(
    tally: PairedTally, settings: PairedSettings, started: datetime | None, now: datetime
) -> PairedDecision:
    """Promote, reject or collect for one candidate in the shadow stage; ``started``: when the stage began."""
    n, b, c = tally.reviews, tally.only_active, tally.only_candidate
    m = b + c
    margin = settings.margin
    acc = (
        f"live accuracy on {n} reviewed requests: candidate {tally.candidate_accuracy:.1%}, "
        f"active {tally.active_accuracy:.1%}; they disagreed on {m} (candidate right on {c}, active right on {b})"
    )
    timed_out = started is not None and now - started >= settings.max_duration
    if n < settings.min_reviews:
        if timed_out:
            return PairedDecision(
                Verdict.REJECT, "TooFewReviews",
                f"only {n} of the {settings.min_reviews} reviews needed arrived within maxDuration "
                f"{settings.max_duration}; the candidate is not promoted without evidence ({acc})",
                0.0,
            )  # fmt: skip
        return PairedDecision(
            Verdict.COLLECT, "CollectingReviews", f"{n} of {settings.min_reviews} reviews so far; {acc}", 0.0
        )
    level = look_level(n, settings.min_reviews, settings.alpha)
    q_hi = discordance_upper_bound(m, n, level / 2)
    if q_hi <= margin:
        return PairedDecision(
            Verdict.PROMOTE, "NotWorse",
            f"the models disagree on at most {q_hi:.2%} of requests (at level {level / 2:.3g}), within the "
            f"margin {margin:.1%}, so the candidate is at most that much worse; {acc}",
            level,
        )  # fmt: skip
    if margin > 0:
        p_promote = min(1.0, binomial_upper_tail(c, m, _pi0(q_hi, margin)) + level / 2)
    else:  # pi0 = 1/2 whatever q is: McNemar's exact test, nothing spent on bounding q
        p_promote = binomial_upper_tail(c, m, 0.5)
    p_reject = binomial_lower_tail(c, m, _pi0(m / n, margin))
    diff = tally.candidate_accuracy - tally.active_accuracy
    if p_promote <= level:
        better = diff > 0 and binomial_upper_tail(c, m, 0.5) <= level
        return PairedDecision(
            Verdict.PROMOTE, "Better" if better else "NotWorse",
            f"the candidate is {'better than' if better else 'no worse than'} the active version "
            f"(difference {diff:+.1%}, margin {margin:.1%}, p={p_promote:.2g} <= {level:.3g}); {acc}",
            level, p_promote, p_reject,
        )  # fmt: skip
    if p_reject <= level:
        return PairedDecision(
            Verdict.REJECT, "Worse",
            f"the candidate is worse than the margin allows (difference {diff:+.1%}, margin {margin:.1%}, "
            f"p={p_reject:.2g} <= {level:.3g}); {acc}",
            level, p_promote, p_reject,
        )  # fmt: skip
    if timed_out:
        return PairedDecision(
            Verdict.REJECT, "Inconclusive",
            f"not shown to be within the margin {margin:.1%} of the active version after maxDuration "
            f"{settings.max_duration} (difference {diff:+.1%}, p={p_promote:.2g} > {level:.3g}); {acc}",
            level, p_promote, p_reject,
        )  # fmt: skip
    return PairedDecision(
        Verdict.COLLECT, "Inconclusive",
        f"no decision yet (difference {diff:+.1%}, margin {margin:.1%}, p={p_promote:.2g} and {p_reject:.2g} "
        f"both > {level:.3g}); {acc}",
        level, p_promote, p_reject,
    )  # fmt: skip
