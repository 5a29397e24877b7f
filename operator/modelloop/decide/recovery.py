"""Recovering what a policy pass consumed when its status write never landed.

A pass that starts a training creates the ModelVersion first and records, in the policy's status
write that follows, what the training consumed: its number (``latestVersion``), the feedback it
includes (cursor and pending counts), the ``retrain-now`` request it answered, the schedule fire.
An operator killed between the two writes (or a write that fails) leaves a ModelVersion the status
does not know about; the next pass would see the request, the feedback and the schedule as still
pending and train again as soon as that version settles. The ModelVersion carries what was
consumed, so the status is repaired from it before anything is decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from modelloop.api.artifacts import version_number
from modelloop.api.retrainpolicy import RetrainPolicyStatus

from .triggers import latest_fire


@dataclass(frozen=True)
class CreatedVersion:
    """What a ModelVersion records about the pass that created it."""

    version: str
    created_at: datetime
    feedback_through: str | None
    """``spec.feedbackSnapshot.throughKey``: the feedback cursor after the creating pass counted."""
    retrain_now: str | None
    """The ``retrain-now`` annotation value the creating pass answered, if that was the trigger."""


def unrecorded_creation(created: Iterable[CreatedVersion], latest_version: str | None) -> CreatedVersion | None:
    """The newest version newer than ``status.latestVersion``: created by a pass whose write was lost."""
    floor = version_number(latest_version) if latest_version else 0
    newer = [v for v in created if version_number(v.version) > floor]
    return max(newer, key=lambda v: version_number(v.version)) if newer else None


def adopt_unrecorded(status: RetrainPolicyStatus, lost: CreatedVersion, schedule: str | None) -> RetrainPolicyStatus:
    """``status`` as the lost write would have left it: the training's trigger is consumed."""
    out = status.model_copy(deep=True)
    out.latest_version = lost.version
    if out.last_training_time is None or lost.created_at > out.last_training_time:
        out.last_training_time = lost.created_at
    if lost.feedback_through is not None:
        out.feedback.cursor = lost.feedback_through
        # The lost write also held the upload-time state of what it counted; without it, counting by
        # upload time would count those batches again. The cursor alone says it: fall back to it once.
        out.feedback.seen_through = None
        out.feedback.recent_keys = []
    out.feedback.pending_corrections = 0
    out.feedback.pending_reviews = 0
    if lost.retrain_now is not None:
        out.handled.retrain_now = lost.retrain_now
    if schedule:
        fire = latest_fire(schedule, lost.created_at)
        if out.last_schedule_time is None or fire > out.last_schedule_time:
            out.last_schedule_time = fire
    return out
