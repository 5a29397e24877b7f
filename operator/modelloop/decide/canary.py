"""The canary stage: the candidate answers a declared share of requests, step by step, and reviews of each
version's own answers decide whether it moves on, is promoted, or is rolled back.

After the shadow stage (or at once when it is off) a verified candidate answers ``steps[0]`` percent
of requests, split in the serving process (``modelloop_server.canary``); the receipt of each answer
names the version that gave it, so a review counts toward that version's live accuracy in the
current step (``status.canary``). Each step is decided on its own reviews:

* **Step** (or **Promote** after the last step) when the candidate's accuracy is shown to be no worse
  than the active version's by more than ``margin``: the one-sided lower confidence bound of
  ``acc(candidate) - acc(active)`` at level ``alpha_k`` is above ``-margin``.
* **Reject** (rolled back: the candidate slot is dropped, the ModelVersion is Rejected) when the upper
  bound is below ``-margin``: the candidate is worse than the margin allows.
* **Collect** otherwise; nothing is decided below ``minReviewsPerStep`` reviews of *each* version.
* After ``maxStepDuration`` an undecided step **rejects** the candidate (reason ``CanaryTimedOut``
  with too few reviews, ``Inconclusive`` with enough). Holding would be the other choice; it is not
  taken because a held canary keeps serving an unproven model to real users indefinitely, and
  nobody is paged for a condition; rejecting returns every request to the version that is known
  good, says why in an Event, and the policy's retries or next trigger produce the next candidate.

Why two proportions and not McNemar on the shadow pairs: in the canary stage the candidate's answers
reach clients, and what is being measured is how those served answers fare under review (the
reviewers see and judge the candidate's own answers, on the requests it really got). The shadow
pairs, still scored for the requests the active version answers, measure the same thing the shadow
stage already decided; testing them again would not add the evidence the canary exists for. The
comparison is therefore unpaired: reviewed accuracy of the candidate's answers against that of the
active version's answers in the same step (same period, same traffic, split at random or by routing
key hash). The interval is Agresti-Caffo (one success and one failure added to each version), which
keeps its coverage near the nominal level at the small counts and the accuracies near 1 that
reviews give, where the plain Wald interval is too narrow. The level halves each time the
candidate's reviews double past ``minReviewsPerStep`` (``look_level``, as in the shadow stage), so
the repeated looks within a step keep their error rate; a false promotion needs every step to pass,
so its probability is at most that of one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from statistics import NormalDist

from modelloop.api.retrainpolicy import CanaryStatus, RolloutSpec

from .durations import parse_duration
from .paired import look_level


class CanaryVerdict(StrEnum):
    COLLECT = "Collect"
    STEP = "Step"
    PROMOTE = "Promote"
    REJECT = "Reject"


@dataclass(frozen=True)
class CanarySettings:
    """``spec.rollout.canary`` with the margin and error rate of ``spec.rollout.shadow``."""

    steps: tuple[int, ...] = (10, 50)
    min_reviews_per_step: int = 100
    max_step_duration: timedelta = timedelta(days=1)
    margin: float = 0.02
    alpha: float = 0.05


def canary_settings(rollout: RolloutSpec) -> CanarySettings:
    c = rollout.canary
    return CanarySettings(
        steps=tuple(c.steps),
        min_reviews_per_step=c.min_reviews_per_step,
        max_step_duration=parse_duration(c.max_step_duration),
        margin=rollout.shadow.margin,
        alpha=rollout.shadow.alpha,
    )


@dataclass(frozen=True)
class CanaryTally:
    """Reviews in one step of each version's own answers, and how many the reviewer confirmed."""

    candidate_reviews: int = 0
    candidate_correct: int = 0
    active_reviews: int = 0
    active_correct: int = 0

    def __post_init__(self) -> None:
        if not (
            0 <= self.candidate_correct <= self.candidate_reviews and 0 <= self.active_correct <= self.active_reviews
        ):
            raise ValueError(f"correct must be within 0..reviews for each version, got {self}")

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_correct / self.candidate_reviews if self.candidate_reviews else 0.0

    @property
    def active_accuracy(self) -> float:
        return self.active_correct / self.active_reviews if self.active_reviews else 0.0


@dataclass(frozen=True)
class CanaryDecision:
    verdict: CanaryVerdict
    reason: str
    message: str
    percent: int
    """The share the candidate answers once the decision is applied (0 after Promote or Reject)."""
    level: float = 0.0
    lower: float | None = None
    """Lower confidence bound of acc(candidate) - acc(active) at ``level``."""
    upper: float | None = None


def difference_bounds(t: CanaryTally, level: float) -> tuple[float, float]:
    """One-sided Agresti-Caffo bounds (lower, upper), each at ``level``, of acc(candidate) - acc(active)."""
    pc = (t.candidate_correct + 1) / (t.candidate_reviews + 2)
    pa = (t.active_correct + 1) / (t.active_reviews + 2)
    se = math.sqrt(pc * (1 - pc) / (t.candidate_reviews + 2) + pa * (1 - pa) / (t.active_reviews + 2))
    z = NormalDist().inv_cdf(1 - level)
    return pc - pa - z * se, pc - pa + z * se


def decide_canary(
    settings: CanarySettings, step: int, tally: CanaryTally, step_started: datetime | None, now: datetime
) -> CanaryDecision:
    """Collect, step, promote or reject at ``step`` (an index into ``settings.steps``)."""
    steps = settings.steps
    step = min(max(step, 0), len(steps) - 1)
    percent = steps[step]
    last = step == len(steps) - 1
    margin, need = settings.margin, settings.min_reviews_per_step
    acc = (
        f"at {percent}% (step {step + 1} of {len(steps)}): candidate {tally.candidate_accuracy:.1%} on "
        f"{tally.candidate_reviews} reviewed answers, active {tally.active_accuracy:.1%} on {tally.active_reviews}"
    )
    timed_out = step_started is not None and now - step_started >= settings.max_step_duration
    if min(tally.candidate_reviews, tally.active_reviews) < need:
        if timed_out:
            return CanaryDecision(
                CanaryVerdict.REJECT, "CanaryTimedOut",
                f"fewer than the {need} reviews of each version needed arrived within maxStepDuration "
                f"{settings.max_step_duration}; rolled back rather than leave users on an unproven version ({acc})",
                0,
            )  # fmt: skip
        return CanaryDecision(
            CanaryVerdict.COLLECT, "CollectingReviews", f"{need} reviews of each version needed; {acc}", percent
        )
    level = look_level(tally.candidate_reviews, need, settings.alpha)
    lower, upper = difference_bounds(tally, level)
    diff = tally.candidate_accuracy - tally.active_accuracy
    bounds = f"difference {diff:+.1%}, bounds [{lower:+.1%}, {upper:+.1%}] at level {level:.3g}, margin {margin:.1%}"
    if lower > -margin:
        better = lower > 0
        how = "better than" if better else "no worse than"
        if last:
            return CanaryDecision(
                CanaryVerdict.PROMOTE, "Better" if better else "NotWorse",
                f"the candidate is {how} the active version ({bounds}); promoting it; {acc}",
                0, level, lower, upper,
            )  # fmt: skip
        return CanaryDecision(
            CanaryVerdict.STEP, "Better" if better else "NotWorse",
            f"the candidate is {how} the active version ({bounds}); moving to {steps[step + 1]}%; {acc}",
            steps[step + 1], level, lower, upper,
        )  # fmt: skip
    if upper < -margin:
        return CanaryDecision(
            CanaryVerdict.REJECT, "Worse",
            f"the candidate's answers are worse than the margin allows ({bounds}); rolled back; {acc}",
            0, level, lower, upper,
        )  # fmt: skip
    if timed_out:
        return CanaryDecision(
            CanaryVerdict.REJECT, "Inconclusive",
            f"not shown to be within the margin after maxStepDuration {settings.max_step_duration} ({bounds}); "
            f"rolled back rather than leave users on an unproven version; {acc}",
            0, level, lower, upper,
        )  # fmt: skip
    return CanaryDecision(
        CanaryVerdict.COLLECT, "Inconclusive", f"no decision yet ({bounds}); {acc}", percent, level, lower, upper
    )


def canary_for(
    current: CanaryStatus | None, candidate: str, active: str, settings: CanarySettings, now: datetime
) -> CanaryStatus:
    """The stage of ``candidate`` against ``active``: the one in status while it is theirs, else a new one at
    the first step."""
    if current is not None and current.version == candidate and current.active_version == active:
        return current
    return CanaryStatus(
        version=candidate, active_version=active, step=0, percent=settings.steps[0], step_started_at=now,
        verdict=CanaryVerdict.COLLECT.value, reason="CollectingReviews",
    )  # fmt: skip


def in_progress(status: CanaryStatus | None, candidate: str | None) -> bool:
    """Whether ``candidate`` is in the canary stage now (answering some requests, undecided)."""
    return (
        status is not None
        and candidate is not None
        and status.version == candidate
        and status.verdict in (CanaryVerdict.COLLECT.value, CanaryVerdict.STEP.value)
    )


def count_canary_review(status: CanaryStatus, version: str, correct: bool, sign: int = 1) -> bool:
    """Adds a review of an answer ``version`` gave to the step's tally (``sign=-1`` takes back one that a
    later review of the same id replaced; never below zero); whether it counted (it named the candidate
    or the active version, while the stage is undecided)."""
    if status.verdict not in (CanaryVerdict.COLLECT.value, CanaryVerdict.STEP.value):
        return False
    if version == status.version:
        status.candidate_reviews = max(0, status.candidate_reviews + sign)
        status.candidate_correct = min(status.candidate_reviews, max(0, status.candidate_correct + sign * correct))
    elif version == status.active_version:
        status.active_reviews = max(0, status.active_reviews + sign)
        status.active_correct = min(status.active_reviews, max(0, status.active_correct + sign * correct))
    else:
        return False
    return True


def tally_of(status: CanaryStatus) -> CanaryTally:
    return CanaryTally(status.candidate_reviews, status.candidate_correct, status.active_reviews, status.active_correct)


def after(status: CanaryStatus, decision: CanaryDecision, now: datetime) -> CanaryStatus:
    """The stage once ``decision`` is applied: a new step starts with an empty tally; a decided stage keeps
    its last tally as the evidence, answering nobody."""
    out = status.model_copy(deep=True)
    out.verdict, out.reason, out.message = decision.verdict.value, decision.reason, decision.message[:2048]
    out.percent = decision.percent
    if decision.verdict is CanaryVerdict.STEP:
        out.step += 1
        out.step_started_at = now
        out.candidate_reviews = out.candidate_correct = out.active_reviews = out.active_correct = 0
    return out


def ended_by_rollback(status: CanaryStatus, reason: str, message: str) -> CanaryStatus:
    """The stage once a rollback (``rollback-to`` or automatic) ends it: rejected with ``reason``, answering
    nobody, its tally kept as it stood. Recorded as a rejection so no later pass resumes the stage."""
    out = status.model_copy(deep=True)
    out.verdict, out.reason, out.message, out.percent = CanaryVerdict.REJECT.value, reason, message[:2048], 0
    return out


def answering(status: CanaryStatus | None, active: str | None) -> str | None:
    """The candidate answering a share of requests beside ``active`` now (an undecided stage), else None."""
    if status is None or status.active_version != active or not in_progress(status, status.version):
        return None
    return status.version
