"""Whether a RetrainPolicy needs a full reconcile pass, from what the operator already holds.

A full pass reads the policy, its ModelVersions and the trainer Secret from the API server (and
the serving pods during a rollout). An idle policy has nothing to do, so the policy's daemon asks
this function first, with the watched policy body, the watched ModelVersion phases, a peek at
the bucket and what the last pass's plan said about time: only a reason from here costs API
requests. Nothing here re-decides what the pass decides: what can change a decision is either
news (an edited spec, a new annotation value, a version's phase, feedback in the bucket) or the
clock, and the clock's part is the last plan's own ``Plan.wake`` (``modelloop.decide.policyplan``),
so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum

from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import RetrainPolicyStatus

from .policyplan import Wake


class Feedback(Enum):
    """What a peek at the bucket's feedback prefix (after the cursor) found."""

    UNCHECKED = "unchecked"
    """Not peeked this time: the check interval has not passed."""
    NONE = "none"
    NEW = "new"
    UNREADABLE = "unreadable"


def full_pass_reason(
    status: RetrainPolicyStatus,
    generation: int,
    annotations: Mapping[str, str],
    phases: Mapping[str, Phase],
    phases_at_last_pass: Mapping[str, Phase] | None,
    retrain_seen: str | None,
    feedback: Feedback,
    wake: Wake | None,
    seconds_since_pass: float,
    resync_seconds: float,
    now: datetime,
    rollback_annotation: str,
    retrain_annotation: str,
) -> str | None:
    """The first reason a full pass is due (a short word for logs), or None when the policy is idle.

    ``phases`` are the watched ModelVersion phases, ``phases_at_last_pass`` those the last full
    pass listed: a new version or a changed phase is news; a version the watch has not (yet)
    delivered is not (at a start the watch is still filling, and the pass prunes versions
    itself). ``phases_at_last_pass`` is None until this operator process has run a full pass for
    the policy, so every policy is reconciled once after a start. ``retrain_seen``: the
    ``retrain-now`` value the last pass saw; one it saw and could not act on (the training budget
    was spent) is not news, the pass's ``wake`` says when it can be acted on.
    """
    if phases_at_last_pass is None:
        return "Start"
    if status.observed_generation != generation:
        return "SpecChanged"
    rollback = annotations.get(rollback_annotation)
    if rollback and rollback != status.handled.rollback_to:
        return "RollbackRequested"
    retrain = annotations.get(retrain_annotation)
    if retrain and retrain != status.handled.retrain_now and retrain != retrain_seen:
        return "RetrainRequested"
    if status.desired is not None and status.desired.version != status.active_version:
        return "RollingOut"
    if any(phases_at_last_pass.get(v) != p for v, p in phases.items()):
        return "VersionsChanged"
    if feedback == Feedback.NEW:
        return "NewFeedback"
    if feedback == Feedback.UNREADABLE:
        return "FeedbackUnreadable"
    if feedback == Feedback.NONE and _readable(status) is False:
        return "FeedbackReadableAgain"
    if wake is not None and now >= wake.at:
        return wake.reason
    if seconds_since_pass >= resync_seconds:
        return "Resync"
    return None


def _readable(status: RetrainPolicyStatus) -> bool | None:
    for cond in status.conditions:
        if cond.type == "FeedbackReadable":
            return cond.status == "True"
    return None
