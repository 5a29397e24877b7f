"""When to start a new training: the retrain trigger as one pure function.

Order matters only for the reason shown; every path yields at most one training, and nothing
starts while a version is in flight or the policy is suspended.

Bootstrap: a policy with no version at all trains v1 from the base dataset right away. A
policy exists to serve a model, the serving pods have nothing to load until v1 exists, and
waiting for feedback would deadlock (feedback needs a serving model). So creation is the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import croniter

from modelloop.api.retrainpolicy import RetrainPolicySpec

from .durations import parse_duration
from .errors import InvalidSpec


@dataclass(frozen=True)
class TriggerSnapshot:
    any_version: bool
    in_flight: str | None
    active_version: str | None
    pending_corrections: int
    pending_reviews: int
    last_training_time: datetime | None
    last_schedule_time: datetime | None
    created_at: datetime
    retrain_now: str | None
    handled_retrain_now: str | None


@dataclass(frozen=True)
class TriggerDecision:
    act: bool
    reason: str
    message: str
    schedule_time: datetime | None = None
    """The latest cron fire time at or before now; the handler records it as lastScheduleTime."""
    retrain_now_handled: str | None = None
    """The retrain-now annotation value this decision consumes (recorded in status.handled)."""


def latest_fire(schedule: str, now: datetime) -> datetime:
    if not croniter.is_valid(schedule):
        raise InvalidSpec(f"schedule {schedule!r} is not a valid 5-field cron expression")
    prev: datetime = croniter(schedule, now).get_prev(datetime)
    return prev


def next_fire(schedule: str, now: datetime) -> datetime:
    """The first cron fire time after ``now`` (when a schedule trigger can next change its decision)."""
    if not croniter.is_valid(schedule):
        raise InvalidSpec(f"schedule {schedule!r} is not a valid 5-field cron expression")
    nxt: datetime = croniter(schedule, now).get_next(datetime)
    return nxt


def decide_trigger(spec: RetrainPolicySpec, snap: TriggerSnapshot, now: datetime) -> TriggerDecision:
    fire = latest_fire(spec.triggers.schedule, now) if spec.triggers.schedule else None
    since_schedule = snap.last_schedule_time or snap.created_at
    fired = fire is not None and fire > since_schedule
    request = snap.retrain_now if snap.retrain_now and snap.retrain_now != snap.handled_retrain_now else None

    def no(reason: str, message: str) -> TriggerDecision:
        return TriggerDecision(False, reason, message, schedule_time=fire if fired else None)

    if spec.suspend:
        return no("Suspended", "spec.suspend is true: no new training is started")
    if snap.in_flight:
        return no("InFlight", f"version {snap.in_flight} is still in flight; one training at a time")
    if request is not None:
        return TriggerDecision(
            True,
            "RetrainRequested",
            f"annotation retrain-now={request!r} asked for a training",
            schedule_time=fire if fired else None,
            retrain_now_handled=request,
        )
    if not snap.any_version:
        return TriggerDecision(True, "Bootstrap", "no version exists yet: training v1 from the base dataset")
    fb = spec.triggers.feedback
    corrections = snap.pending_corrections
    if fb.urgent_samples is not None and corrections >= fb.urgent_samples:
        return TriggerDecision(
            True, "UrgentFeedback", f"{corrections} corrections pending >= urgentSamples {fb.urgent_samples}"
        )
    if corrections >= fb.min_samples:
        min_interval = parse_duration(fb.min_interval)
        if snap.last_training_time is None or now - snap.last_training_time >= min_interval:
            return TriggerDecision(
                True,
                "FeedbackThreshold",
                f"{corrections} corrections pending >= minSamples {fb.min_samples} and minInterval {fb.min_interval} has passed",
            )
    if fired:
        if snap.pending_reviews > 0 or snap.active_version is None:
            return TriggerDecision(
                True,
                "Schedule",
                f"schedule {spec.triggers.schedule!r} fired at {fire:%Y-%m-%dT%H:%M:%SZ} with "
                f"{snap.pending_reviews} reviews ({corrections} corrections) pending",
                schedule_time=fire,
            )
        return no("NothingPending", f"schedule fired at {fire:%Y-%m-%dT%H:%M:%SZ} but no feedback is pending")
    if corrections >= fb.min_samples:
        assert snap.last_training_time is not None
        wait = parse_duration(fb.min_interval) - (now - snap.last_training_time)
        return no(
            "MinInterval",
            f"{corrections} corrections pending, but minInterval {fb.min_interval} has {_fmt(wait.total_seconds())} left",
        )
    return no("BelowThreshold", f"{corrections}/{fb.min_samples} corrections pending")


def _fmt(seconds: float) -> str:
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
