"""Rollback requests (the rollback-to annotation) and automatic rollback on live accuracy.

Both take effect in every state, a stalled or half-finished rollout included: that is when the
on-call needs them. While a version is rolling out (``desired`` differs from ``active``),
``previous`` means the active version, the last one every replica served, so
``rollback-to=previous`` abandons the rollout; the abandoned version, if it was being promoted,
becomes RolledBack (:func:`abandoned_version`) so it is not promoted again at the next pass.

A candidate in the canary stage already answers a share of requests, so a canary is a half-finished
rollout too: there ``previous`` and the active version's own name mean "end the canary" (every
replica stops splitting, only the active version answers), and any rollback ends it
(:func:`ended_canary`): the candidate becomes RolledBack, never offered again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

from modelloop.api.constants import ROLLBACK_PREVIOUS
from modelloop.api.modelversion import PROMOTABLE, Phase
from modelloop.api.retrainpolicy import AutoRollbackSpec, LiveAccuracy

ROLLBACK_REASONS = frozenset({"Rollback", "AutoRollback"})
"""``status.desired.reason`` values of a rollback (the others: Promotion)."""


@dataclass(frozen=True)
class RollbackDecision:
    act: bool
    target: str | None
    reason: str
    message: str
    handled: str | None = None
    """The annotation value consumed (also when invalid, so it is not retried every pass)."""


def decide_rollback_request(
    request: str | None,
    handled: str | None,
    active: str | None,
    previous: str | None,
    desired: str | None,
    phases: Mapping[str, Phase],
    canary: str | None = None,
) -> RollbackDecision:
    """``canary``: the candidate answering a share of requests now (an undecided canary stage), if any."""
    if not request or request == handled:
        return RollbackDecision(False, None, "NoRequest", "")
    rolling_out = desired is not None and desired != active
    in_canary = canary is not None and not rolling_out and canary != active
    if request == ROLLBACK_PREVIOUS:
        before = active if rolling_out or in_canary else previous
        if before is None:
            return RollbackDecision(
                False, None, "InvalidRollbackTarget", "rollback-to=previous but there is no previous version", request
            )
        target = before
    else:
        target = request
    phase = phases.get(target)
    if phase is None:
        known = ", ".join(sorted(phases)) or "none"
        return RollbackDecision(
            False,
            None,
            "InvalidRollbackTarget",
            f"rollback-to={request!r}: no ModelVersion {target!r} (known: {known})",
            request,
        )
    if phase not in PROMOTABLE:
        return RollbackDecision(
            False, None, "InvalidRollbackTarget",
            f"rollback-to={request!r}: version {target} is {phase.value}, it has no verified artifacts to serve",
            request,
        )  # fmt: skip
    if target == (desired or active) and not (in_canary and target == active):
        return RollbackDecision(
            False, None, "AlreadyServing", f"rollback-to={request!r}: {target} is already what is served", request
        )
    return RollbackDecision(
        True,
        target,
        "Rollback",
        f"{_moving(active, desired, canary if in_canary else None, target)} (rollback-to={request!r})",
        request,
    )


def _moving(active: str | None, desired: str | None, canary: str | None, target: str) -> str:
    if desired is not None and desired != active:
        return f"abandoning the rollout of {desired} (serving {active or 'nothing'}) and rolling back to {target}"
    if canary is not None and target == active:
        return f"ending the canary of {canary}: only {active} answers"
    if canary is not None:
        return f"ending the canary of {canary} and rolling back from {active or 'nothing'} to {target}"
    return f"rolling back from {active or 'nothing'} to {target}"


def abandoned_version(desired: str | None, desired_phase: Phase | None, active: str | None, target: str) -> str | None:
    """The version a rollback to ``target`` stops rolling out, when it was being promoted (it then
    becomes RolledBack); None when nothing was rolling out or it was an earlier version coming back."""
    if desired is None or desired in (active, target) or desired_phase != Phase.PROMOTING:
        return None
    return desired


def ended_canary(canary: str | None, target: str) -> str | None:
    """The candidate whose canary a rollback to ``target`` ends (it then becomes RolledBack): the one
    answering a share of requests, unless the rollback names that very version."""
    return canary if canary is not None and canary != target else None


def decide_auto_rollback(
    spec: AutoRollbackSpec,
    live: LiveAccuracy,
    active: str | None,
    previous: str | None,
    desired: str | None,
    desired_reason: str | None,
    before: LiveAccuracy | None = None,
    previous_phase: Phase | None = None,
) -> RollbackDecision:
    """Worse than the previous version was (``before``: its live accuracy while it served), or below the
    declared floor: the previous version wins over the active one, and over a half-finished promotion of an
    unproven newer one; a rollback already under way is left to finish.

    The comparison is unpaired (the two versions answered different requests at different times), so it asks
    for proof at ``alpha`` that the active version is worse by more than ``margin``, not for a difference.
    Hysteresis: never back to a version that was itself rolled back (``previous_phase`` RolledBack): when
    reviews go bad for every version (the inputs drifted), bouncing between two versions helps nobody, and
    the on-call decides."""
    if not spec.enabled or active is None or live.version != active:
        return RollbackDecision(False, None, "NotApplicable", "")
    if desired is not None and desired != active and desired_reason in ROLLBACK_REASONS:
        return RollbackDecision(
            False, None, "AlreadyRollingBack", f"a rollback from {active} to {desired} is already under way"
        )
    if live.reviews < spec.min_reviews or live.accuracy is None:
        return RollbackDecision(
            False, None, "TooFewReviews", f"{live.reviews}/{spec.min_reviews} reviews of {active} so far"
        )
    why = _worse(spec, live, before, previous)
    if why is None:
        return RollbackDecision(
            False, None, "Healthy", f"live accuracy of {active} {live.accuracy:.3f}: {_healthy(spec, before, previous)}"
        )
    if previous is None:
        return RollbackDecision(
            False, None, "NoPreviousVersion", f"{why}, but there is no previous version to roll back to"
        )
    if previous_phase == Phase.ROLLED_BACK:
        return RollbackDecision(
            False, None, "PreviousWasRolledBack",
            f"{why}, but {previous} was itself rolled back: not bouncing back to it; "
            f"roll back by hand (rollback-to=<version>) or let the next training replace {active}",
        )  # fmt: skip
    abandoning = f" (abandoning the rollout of {desired})" if desired is not None and desired != active else ""
    return RollbackDecision(True, previous, "AutoRollback", f"{why}: rolling back to {previous}{abandoning}")


def _worse(spec: AutoRollbackSpec, live: LiveAccuracy, before: LiveAccuracy | None, previous: str | None) -> str | None:
    """Why the active version is judged bad, or None."""
    acc = live.accuracy if live.accuracy is not None else 0.0
    if spec.min_live_accuracy is not None and acc < spec.min_live_accuracy:
        return (
            f"live accuracy of {live.version} {acc:.3f} < minLiveAccuracy {spec.min_live_accuracy} "
            f"over {live.reviews} reviews"
        )
    if not _comparable(spec, before, previous) or before is None or before.accuracy is None:
        return None
    gap = before.accuracy - acc
    se = math.sqrt(acc * (1 - acc) / live.reviews + before.accuracy * (1 - before.accuracy) / before.reviews)
    worse = gap > spec.margin if se == 0 else (gap - spec.margin) / se > NormalDist().inv_cdf(1 - spec.alpha)
    if not worse:
        return None
    return (
        f"live accuracy of {live.version} {acc:.3f} over {live.reviews} reviews is worse than {previous}'s "
        f"{before.accuracy:.3f} over {before.reviews} by more than the margin {spec.margin} (alpha {spec.alpha})"
    )


def _comparable(spec: AutoRollbackSpec, before: LiveAccuracy | None, previous: str | None) -> bool:
    return before is not None and before.version == previous and before.reviews >= spec.min_reviews


def _healthy(spec: AutoRollbackSpec, before: LiveAccuracy | None, previous: str | None) -> str:
    parts = [] if spec.min_live_accuracy is None else [f">= minLiveAccuracy {spec.min_live_accuracy}"]
    if _comparable(spec, before, previous) and before is not None and before.accuracy is not None:
        parts.append(f"not proven worse than {previous}'s {before.accuracy:.3f} by more than {spec.margin}")
    elif previous is not None:
        parts.append(f"{previous} has fewer than {spec.min_reviews} reviews from while it served to compare with")
    return "; ".join(parts) or "no floor set and no previous version to compare with"
