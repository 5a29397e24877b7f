"""Whether a RetrainPolicy needs a full reconcile pass, from what the operator already holds.

A full pass reads the policy, its ModelVersions and the trainer Secret from the API server (and
the serving pods during a rollout). An idle policy has nothing to do, so the policy's daemon asks
this function first, with the watched policy body, the watched ModelVersion phases and a peek at
the bucket: only a reason from here costs API requests. The full pass itself stays level-based
and idempotent; this function only decides when running it is worth the requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum

from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus

from .budget import decide_budget
from .canary import in_progress
from .durations import parse_duration
from .rollback import decide_auto_rollback
from .triggers import TriggerSnapshot, decide_trigger
from .versions import in_flight


class Feedback(Enum):
    """What a peek at the bucket's feedback prefix (after the cursor) found."""

    UNCHECKED = "unchecked"
    """Not peeked this time: the check interval has not passed."""
    NONE = "none"
    NEW = "new"
    UNREADABLE = "unreadable"


def full_pass_reason(
    spec: RetrainPolicySpec | None,
    status: RetrainPolicyStatus,
    generation: int,
    annotations: Mapping[str, str],
    phases: Mapping[str, Phase],
    phases_at_last_pass: Mapping[str, Phase] | None,
    feedback: Feedback,
    seconds_since_pass: float,
    resync_seconds: float,
    created_at: datetime,
    now: datetime,
    rollback_annotation: str,
    retrain_annotation: str,
) -> str | None:
    """The first reason a full pass is due (a short word for logs), or None when the policy is idle.

    ``phases`` are the watched ModelVersion phases, ``phases_at_last_pass`` those the last full
    pass listed: a new version or a changed phase is news; a version the watch has not (yet)
    delivered is not (at a start the watch is still filling, and the pass prunes versions
    itself). ``phases_at_last_pass`` is None until this operator process has run a full pass for
    the policy, so every policy is reconciled once after a start.
    """
    if phases_at_last_pass is None:
        return "Start"
    if status.observed_generation != generation:
        return "SpecChanged"
    rollback = annotations.get(rollback_annotation)
    if rollback and rollback != status.handled.rollback_to:
        return "RollbackRequested"
    retrain = annotations.get(retrain_annotation)
    limit = spec.triggers.max_trainings_per_day if spec is not None else None
    # Out of budget, a due training waits: a pass before the oldest start leaves the window would only say so again.
    budget = decide_budget(limit, status.training_starts, [], now)
    if retrain and retrain != status.handled.retrain_now and budget.allowed:
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
    if budget.allowed and _condition_reason(status, "Training") == "BudgetExhausted":
        return "BudgetFreed"  # a training (a retry too) waited for the budget
    if spec is not None:
        trig = decide_trigger(
            spec,
            TriggerSnapshot(
                any_version=bool(phases) or status.latest_version is not None,
                in_flight=in_flight(phases),
                active_version=status.active_version,
                pending_corrections=status.feedback.pending_corrections,
                pending_reviews=status.feedback.pending_reviews,
                last_training_time=status.last_training_time,
                last_schedule_time=status.last_schedule_time,
                created_at=created_at,
                retrain_now=retrain,
                handled_retrain_now=status.handled.retrain_now,
            ),
            now,
        )
        if trig.act and budget.allowed:
            return "TrainingDue"
        if not trig.act and trig.schedule_time is not None and trig.schedule_time != status.last_schedule_time:
            return "ScheduleFired"
        desired = status.desired
        auto = decide_auto_rollback(
            spec.auto_rollback,
            status.live_accuracy,
            status.active_version,
            status.previous_version,
            desired.version if desired else None,
            desired.reason if desired else None,
        )
        if auto.act:
            return "AutoRollback"
        canary = status.canary
        if (
            spec.rollout.canary.enabled
            and canary is not None
            and in_progress(canary, canary.version)
            and canary.step_started_at is not None
            and now - canary.step_started_at >= parse_duration(spec.rollout.canary.max_step_duration)
        ):
            return "CanaryStepExpired"  # decided now, not at the next resync: users are on an unproven version
    if seconds_since_pass >= resync_seconds:
        return "Resync"
    return None


def _readable(status: RetrainPolicyStatus) -> bool | None:
    for cond in status.conditions:
        if cond.type == "FeedbackReadable":
            return cond.status == "True"
    return None


def _condition_reason(status: RetrainPolicyStatus, kind: str) -> str | None:
    return next((cond.reason for cond in status.conditions if cond.type == kind), None)
