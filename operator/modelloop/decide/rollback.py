"""Rollback requests (the rollback-to annotation) and automatic rollback on live accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelloop.api.constants import ROLLBACK_PREVIOUS
from modelloop.api.modelversion import PROMOTABLE, Phase
from modelloop.api.retrainpolicy import AutoRollbackSpec, LiveAccuracy


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
) -> RollbackDecision:
    if not request or request == handled:
        return RollbackDecision(False, None, "NoRequest", "")
    if request == ROLLBACK_PREVIOUS:
        if previous is None:
            return RollbackDecision(
                False, None, "InvalidRollbackTarget", "rollback-to=previous but there is no previous version", request
            )
        target = previous
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
    if target == (desired or active):
        return RollbackDecision(
            False, None, "AlreadyServing", f"rollback-to={request!r}: {target} is already what is served", request
        )
    return RollbackDecision(
        True,
        target,
        "Rollback",
        f"rolling back from {desired or active or 'nothing'} to {target} (rollback-to={request!r})",
        request,
    )


def decide_auto_rollback(
    spec: AutoRollbackSpec,
    live: LiveAccuracy,
    active: str | None,
    previous: str | None,
    rollout_in_progress: bool,
) -> RollbackDecision:
    if not spec.enabled or active is None or live.version != active or rollout_in_progress:
        return RollbackDecision(False, None, "NotApplicable", "")
    if live.reviews < spec.min_reviews or live.accuracy is None:
        return RollbackDecision(
            False, None, "TooFewReviews", f"{live.reviews}/{spec.min_reviews} reviews of {active} so far"
        )
    if live.accuracy >= spec.min_live_accuracy:
        return RollbackDecision(
            False, None, "Healthy", f"live accuracy {live.accuracy:.3f} >= {spec.min_live_accuracy}"
        )
    if previous is None:
        return RollbackDecision(
            False, None, "NoPreviousVersion",
            f"live accuracy of {active} {live.accuracy:.3f} < {spec.min_live_accuracy} over {live.reviews} reviews, "
            "but there is no previous version to roll back to",
        )  # fmt: skip
    return RollbackDecision(
        True, previous, "AutoRollback",
        f"live accuracy of {active} {live.accuracy:.3f} < minLiveAccuracy {spec.min_live_accuracy} over "
        f"{live.reviews} reviews: rolling back to {previous}",
    )  # fmt: skip
