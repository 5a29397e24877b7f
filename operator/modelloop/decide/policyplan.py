"""A RetrainPolicy pass as one pure function: ``plan(snapshot, now) -> Plan``.

The policy's handler (``modelloop.handlers.retrainpolicy``) gathers a :class:`PolicySnapshot`
(the policy, its ModelVersions, the serving pods during a rollout, what the bucket's feedback
prefix held), calls :func:`plan`, and applies the :class:`Plan`: the ModelVersions to create or
delete, the Events, log lines and metric increments, and the policy status to write in one patch.
Nothing here does I/O or calls kopf, so every state transition is a row in a unit table
(``tests/unit/test_decide_policyplan.py``) and a replayed snapshot always gives the same plan.

The chain is the one the handler used to run inline, in the same order: repair a lost status
write, count feedback, rollback (in every state) else promotion through the shadow and canary
stages, rollout progress, trigger / retry / budget, candidate for the sidecars, retention, Ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri, feedback_prefix, version_prefix
from modelloop.api.feedback import FeedbackRecord, decode_batch
from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import (
    MAX_QUARANTINED,
    MAX_TRAININGS_PER_DAY,
    DesiredVersion,
    LiveAccuracy,
    QuarantinedObject,
    RetrainPolicySpec,
    RetrainPolicyStatus,
    RolloutStatus,
)

from .budget import BudgetDecision, decide_budget, recent_starts
from .canary import (
    CanaryVerdict,
    after,
    answering,
    canary_for,
    canary_settings,
    decide_canary,
    ended_by_rollback,
    in_progress,
    tally_of,
)
from .candidate import VersionView, decide_candidate
from .conditions import get_condition, parse_rfc3339, set_condition
from .durations import parse_duration
from .errors import ErrorVerdict, Failure, InvalidSpec, Stage, classify, unusable_spec
from .feedback import CountingState, ListedObject, after_listing, listing_start, quarantine_reason, to_process
from .paired import Verdict
from .recovery import CreatedVersion, adopt_unrecorded, unrecorded_creation
from .retention import pick_pruned
from .retries import AttemptView, RetryDecision, TrainingStart, decide_next_training, decide_retry
from .reviewcount import count_record
from .rollback import RollbackDecision, abandoned_version, decide_auto_rollback, decide_rollback_request, ended_canary
from .rollout import PodView, decide_rollout
from .shadowstage import shadow_gate, tally_for
from .triggers import TriggerSnapshot, decide_trigger, next_fire
from .versions import (
    PhaseDecision,
    in_flight,
    modelversion_name,
    next_version,
    promotion_candidate,
    sorted_versions,
    version_message,
    version_phase,
)

Conditions = list[dict[str, Any]]


# ---------------------------------------------------------------- the snapshot (input)


@dataclass(frozen=True)
class ReadBatch:
    """One feedback object the gatherer read: its content, or ``None`` when it vanished since the listing."""

    obj: ListedObject
    content: bytes | None
    """Raw JSON lines, decoded by the plan (a malformed object is quarantined there); also ``None`` when
    :func:`quarantine_reason` turned it down from its listed size, so it was never downloaded."""


@dataclass(frozen=True)
class FeedbackRead:
    """What the gatherer read under ``<model>/feedback/`` after the counting state's start."""

    listing: tuple[ListedObject, ...]
    batches: tuple[ReadBatch, ...]
    """The objects :func:`to_process` picked, in that order, up to the first failed read."""


@dataclass(frozen=True)
class StorageRead:
    """The bucket as the gatherer found it: reachable or not, and the feedback it counted when due."""

    failure: Failure | None = None
    """Why the bucket (or the Secret that opens it) could not be read; ``None`` when it could."""
    feedback: FeedbackRead | None = None
    """``None`` when counting was not due, or the failure came before (or during) the listing."""


@dataclass(frozen=True)
class ServingView:
    """The serving Deployment during a rollout: ``spec.replicas`` and its pods' served digests."""

    replicas: int | None
    pods: tuple[PodView, ...] = ()


@dataclass(frozen=True)
class PolicySnapshot:
    """Everything one policy pass decides from; gathered by the handler, never changed by :func:`plan`."""

    namespace: str
    name: str
    body: Mapping[str, Any]
    """The policy as read (metadata, spec, status)."""
    versions: tuple[Mapping[str, Any], ...]
    """Its ModelVersions as listed."""
    storage: StorageRead
    serving: ServingView | None = None
    """Read only while a rollout is tracked; ``None`` when not gathered (the plan then asks for it)."""

    @property
    def generation(self) -> int:
        return int((self.body.get("metadata") or {}).get("generation") or 1)

    @property
    def annotations(self) -> Mapping[str, str]:
        return (self.body.get("metadata") or {}).get("annotations") or {}


# ---------------------------------------------------------------- the plan (output)


@dataclass(frozen=True)
class CreateVersion:
    """Create the ModelVersion ``name`` (owned by the policy; 409 means an earlier pass did)."""

    version: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class MarkVersion:
    """Record a rollout decision about a ModelVersion on its ``phase-decision`` annotation (not its status,
    which only the ModelVersion handler writes: it copies the decision there)."""

    version: str
    name: str
    decision: PhaseDecision

    @property
    def phase(self) -> Phase:
        return self.decision.phase


@dataclass(frozen=True)
class DeleteVersion:
    """Retention: delete the ModelVersion and every object under its artifact prefix."""

    version: str
    name: str
    prefix: str


Action = CreateVersion | MarkVersion | DeleteVersion


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class LogLine:
    level: Literal["debug", "info", "warning", "error"]
    message: str


@dataclass(frozen=True)
class MetricInc:
    """``metrics.<metric>.labels(*labels).inc()``, or ``.observe(value)`` for a histogram."""

    metric: str
    labels: tuple[str, ...]
    observe: float | None = None


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)
    """The changed status fields (camelCase, JSON): written in one patch, nothing when empty."""
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    metrics: list[MetricInc] = field(default_factory=list)
    quarantined: list[QuarantinedObject] = field(default_factory=list)
    needs_serving: bool = False
    """The pass moved into a rollout the snapshot has no serving pods for: gather them and plan again."""
    busy: bool = False
    """A rollout is in progress after this pass: the serving pods are not watched, so tick often."""
    wake: Wake | None = None
    """The earliest time a decision of this plan changes by the clock alone (a minInterval passing, a cron
    fire, the budget freeing, a shadow or canary stage running out of time): the daemon passes again
    then, and otherwise only on news (events, feedback, versions), so an idle policy costs no request."""


@dataclass(frozen=True)
class Wake:
    at: datetime
    reason: str


# ---------------------------------------------------------------- helpers the gatherer shares


def phases_of(modelversions: Sequence[Mapping[str, Any]]) -> dict[str, Phase]:
    """version -> phase of the listed ModelVersions (a decision not yet copied into status counts)."""
    return {version: version_phase(mv) for mv in modelversions if (version := (mv.get("spec") or {}).get("version"))}


def recovered_status(
    status: RetrainPolicyStatus, spec: RetrainPolicySpec, versions: Sequence[Mapping[str, Any]]
) -> tuple[RetrainPolicyStatus, CreatedVersion | None]:
    """``status`` with a lost status write repaired from the ModelVersion it created (and that version)."""
    lost = unrecorded_creation(_created_versions(versions), status.latest_version)
    if lost is None:
        return status, None
    return adopt_unrecorded(status, lost, spec.triggers.schedule), lost


def counting_due(spec: RetrainPolicySpec, status: RetrainPolicyStatus, now: datetime) -> bool:
    """Whether this pass lists and counts the bucket's feedback (at most once per check interval)."""
    last = status.feedback.last_counted_at
    return last is None or now - last >= timedelta(seconds=spec.triggers.check_interval_seconds)


def counting_state(spec: RetrainPolicySpec, status: RetrainPolicyStatus) -> tuple[CountingState, str, str | None]:
    """(counting state, prefix, listing start) the gatherer lists from."""
    fb = status.feedback
    state = CountingState(fb.cursor, fb.seen_through, frozenset(fb.recent_keys))
    window = parse_duration(spec.triggers.feedback.late_arrival_window)
    return state, feedback_prefix(spec.model), listing_start(spec.model, state, window)


def parse_spec(spec: Mapping[str, Any]) -> RetrainPolicySpec:
    """The spec, or :class:`InvalidSpec` / ValidationError for one nothing can be decided from."""
    parsed = RetrainPolicySpec.model_validate(spec)
    if (problem := unusable_spec(parsed)) is not None:
        raise InvalidSpec(problem)
    return parsed


def failure_condition(
    conditions: Conditions, condition: str, verdict: ErrorVerdict, now: datetime, generation: int | None
) -> tuple[Conditions, Event | None]:
    """``condition`` False with the verdict, and the Warning Event when the reason is new.

    Events go out on transitions, not on every failed pass: the condition carries the latest retry.
    A permanent error's message has no retry in it, so a different one (the spec was edited and is
    still wrong, differently) is a transition too.
    """
    prev = get_condition(conditions, condition)
    event = None
    if (
        prev is None
        or prev.get("status") != "False"
        or prev.get("reason") != verdict.reason
        or (verdict.permanent and prev.get("message") != verdict.message)
    ):
        event = Event("Warning", verdict.reason, verdict.message)
    return set_condition(conditions, condition, "False", verdict.reason, verdict.message, now, generation), event


# ---------------------------------------------------------------- the plan


def plan(snap: PolicySnapshot, now: datetime) -> Plan:
    """The pass for ``snap`` at ``now``: pure; see the module docstring for the chain."""
    return _Planner(snap, now).run()


class _Planner:
    """One :func:`plan` call's working state (a private copy of the status, the outputs so far)."""

    def __init__(self, snap: PolicySnapshot, now: datetime) -> None:
        self.snap, self.now = snap, now
        self.out = Plan()
        self.generation = snap.generation
        raw_status = {k: v for k, v in (snap.body.get("status") or {}).items() if k != "kopf"}
        self.old = RetrainPolicyStatus.model_validate(raw_status)
        self.new = self.old.model_copy(deep=True)
        self.conds: Conditions = [x.model_dump(by_alias=True, mode="json") for x in self.old.conditions]
        self.labels = (snap.namespace, snap.name)

    # outputs
    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.out.events.append(Event(type_, reason, message))

    def log(self, level: Literal["debug", "info", "warning", "error"], message: str) -> None:
        self.out.logs.append(LogLine(level, message))

    def metric(self, metric: str, *labels: str, observe: float | None = None) -> None:
        self.out.metrics.append(MetricInc(metric, (*self.labels, *labels), observe))

    def cond(self, type_: str, status: Literal["True", "False", "Unknown"], reason: str, message: str) -> None:
        self.conds = set_condition(self.conds, type_, status, reason, message, self.now, self.generation)

    def warn_once(self, type_: str, reason: str, message: str, event_reason: str | None = None) -> None:
        """Condition ``type_`` False for ``reason``, with one Warning Event (``event_reason``, else ``reason``)
        and log line when it begins to hold, not on every pass while it does."""
        prev = get_condition(self.conds, type_)
        if prev is None or prev.get("reason") != reason:
            self.event("Warning", event_reason or reason, message)
            self.log("warning", message)
        self.cond(type_, "False", reason, message)

    def fail(self, condition: str, verdict: ErrorVerdict) -> None:
        self.conds, event = failure_condition(self.conds, condition, verdict, self.now, self.generation)
        if event is not None:
            self.out.events.append(event)
            self.log("warning", f"{verdict.reason}: {verdict.message}")

    def mark(self, version: str, phase: Phase, message: str, promoted_at: datetime | None = None) -> None:
        name = modelversion_name(self.snap.name, version)
        self.out.actions.append(MarkVersion(version, name, PhaseDecision(phase, message, promoted_at)))
        self.phases[version] = phase

    def finish(self) -> Plan:
        out = self.new.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
        out["conditions"] = self.conds
        before = self.old.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
        before["conditions"] = [x.model_dump(by_alias=True, mode="json") for x in self.old.conditions]
        self.out.status = {k: v for k, v in out.items() if before.get(k) != v}
        self.out.busy = self.new.desired is not None and self.new.desired.version != self.new.active_version
        return self.out

    def run(self) -> Plan:
        snap, now, generation = self.snap, self.now, self.generation
        meta = snap.body.get("metadata") or {}
        try:
            spec = parse_spec(snap.body.get("spec") or {})
        except (ValidationError, InvalidSpec) as e:
            self.fail("Ready", classify(_spec_failure(e), 1, 0, 0))
            self.new.observed_generation = generation  # judged: nothing more to do until the spec changes
            return self.finish()
        self.spec = spec
        annotations = snap.annotations
        new, old = self.new, self.old
        self.mvs = {mv["spec"]["version"]: mv for mv in snap.versions}
        self.phases = phases = phases_of(list(self.mvs.values()))
        self.new, lost = recovered_status(new, spec, list(self.mvs.values()))
        new = self.new
        if lost is not None:
            self.log(
                "warning",
                f"{lost.version} exists but the status write of the pass that created it was lost (operator "
                "restarted?); recording it as the latest version and its trigger as consumed",
            )

        # Feedback: count what the gatherer read (new batches, and batches uploaded late), and the reviews
        # that label both the active version and the candidate scored in the shadow.
        new.shadow = tally_for(new.shadow, new.candidate.version if new.candidate else None, new.active_version, now)
        storage = snap.storage
        unreadable: ErrorVerdict | None = None
        if storage.feedback is not None:
            complete = count_feedback(storage.feedback, spec, new, now, self.quarantined)
            assert complete or storage.failure is not None, "a partial read comes with its failure"
        if storage.failure is None:
            readable = f"s3://{spec.storage.bucket}/{feedback_prefix(spec.model)} is readable"
            if new.feedback.quarantined:
                last = new.feedback.quarantined[-1]
                readable += f"; {new.feedback.quarantined_total} object(s) quarantined (not counted), latest {last.key}: {last.reason}"
            self.cond("FeedbackReadable", "True", "Readable", readable[:1000])
        else:
            every = float(spec.triggers.check_interval_seconds)  # the next full pass reads again
            unreadable = classify(storage.failure, 1, every, every)
            self.fail("FeedbackReadable", unreadable)

        # Rollback first, in every state (a stalled or half-finished rollout included); else promotion.
        desired_version = new.desired.version if new.desired else None
        decision = decide_rollback_request(
            annotations.get(c.ANNOTATION_ROLLBACK_TO),
            old.handled.rollback_to,
            new.active_version,
            new.previous_version,
            desired_version,
            phases,
            answering(new.canary, new.active_version),
        )
        if decision.handled is not None:
            new.handled.rollback_to = decision.handled
        if not decision.act and decision.reason in ("InvalidRollbackTarget", "AlreadyServing"):
            self.event("Warning", "RollbackRejected", decision.message)
            self.cond("RolledBack", "False", decision.reason, decision.message)
        auto = decide_auto_rollback(
            spec.auto_rollback,
            new.live_accuracy,
            new.active_version,
            new.previous_version,
            desired_version,
            new.desired.reason if new.desired else None,
            new.previous_live_accuracy,
            phases.get(new.previous_version) if new.previous_version else None,
        )
        if auto.reason == "PreviousWasRolledBack":
            self.warn_once("AutoRollback", auto.reason, auto.message, event_reason="AutoRollbackHeld")
        elif auto.reason == "AutoRollback":
            self.cond("AutoRollback", "True", auto.reason, auto.message)
        elif auto.reason in ("Healthy", "TooFewReviews") and get_condition(self.conds, "AutoRollback") is not None:
            self.cond("AutoRollback", "False", auto.reason, auto.message)
        chosen: RollbackDecision | None = decision if decision.act else (auto if auto.act else None)
        if chosen is not None and chosen.target:
            self.start_rollback(chosen)
        elif new.desired is None or new.desired.version == new.active_version:
            candidate = promotion_candidate(phases, new.active_version)
            if candidate is not None and phases[candidate] == Phase.VERIFIED:
                held = False
                if not in_progress(new.canary, candidate):  # a candidate in the canary stage has passed the shadow
                    held = self.shadow_stage(candidate)
                if not held:
                    held = self.canary_stage(candidate)
                if held:
                    candidate = None
            if candidate is not None:
                if phases[candidate] == Phase.PROMOTING:
                    self.log(
                        "warning",
                        f"{candidate} is marked Promoting but status.desired never named it (the status write was"
                        " lost, operator restarted?); promoting it again",
                    )
                self.set_desired(candidate, "Promotion")
                self.mark(candidate, Phase.PROMOTING, "waiting for serving replicas")
                self.log("info", f"promoting {candidate}")
        if new.desired is not None and new.desired.version != new.active_version:
            if snap.serving is None:
                self.out.needs_serving = True  # the rollout starts in this pass: the handler reads the pods
            else:
                self.track_rollout(snap.serving)

        # Trigger a new training, or retry the newest one if it failed or was rejected.
        flying = in_flight(phases)
        new.training_version = flying
        trig = decide_trigger(
            spec,
            TriggerSnapshot(
                any_version=bool(phases) or new.latest_version is not None,
                in_flight=flying,
                active_version=new.active_version,
                pending_corrections=new.feedback.pending_corrections,
                pending_reviews=new.feedback.pending_reviews,
                last_training_time=new.last_training_time,
                last_schedule_time=new.last_schedule_time,
                created_at=parse_rfc3339(meta.get("creationTimestamp")) or now,
                retrain_now=annotations.get(c.ANNOTATION_RETRAIN_NOW),
                handled_retrain_now=new.handled.retrain_now,
            ),
            now,
        )
        if trig.schedule_time is not None:
            new.last_schedule_time = trig.schedule_time
        retry = decide_retry(
            spec.retry, spec.training.hyperparameters, _newest_attempt(self.mvs, phases), flying, spec.suspend
        )
        start = decide_next_training(trig, retry)
        new.training_starts = recent_starts(new.training_starts, now)
        budget = decide_budget(
            spec.triggers.max_trainings_per_day, new.training_starts, _versions_created(self.mvs), now
        )
        blocked = start is not None and not budget.allowed
        if blocked:
            start = None
            if trig.act and trig.reason == "Schedule":
                new.last_schedule_time = old.last_schedule_time  # the fire stays due until the budget allows it
        if start is not None:
            new.training_starts = recent_starts([*new.training_starts, now], now)[-MAX_TRAININGS_PER_DAY:]
            version = next_version(phases, new.latest_version)
            handled_now = trig.retrain_now_handled if start.reason == trig.reason else None
            self.create_version(version, start, handled_now)
            if handled_now is not None:
                new.handled.retrain_now = handled_now
            phases[version] = Phase.PENDING
            new.training_version = version
            self.metric("TRAININGS_STARTED", start.reason)
            if start.retry_of is not None:
                self.metric("TRAINING_RETRIES", phases[start.retry_of].value)
                self.event("Normal", "TrainingRetried", f"{version}: {start.message}")
            else:
                self.event("Normal", "TrainingStarted", f"{version}: {start.message}")
            self.log("info", f"starting {version}: {start.message}")
        self.retry_condition(retry, start, new.training_version)
        training = new.training_version
        if blocked:
            self.budget_condition(budget)
        else:
            self.cond(
                "Training",
                "True" if training else "False",
                "InFlight" if training else trig.reason,
                f"version {training} is training or verifying" if training else trig.message,
            )

        # What serving sidecars may download ahead of promotion.
        new.candidate = decide_candidate(
            _version_views(self.mvs, phases), new.active_version, new.desired.version if new.desired else None
        )
        if (
            new.candidate is not None
            and new.canary is not None
            and in_progress(new.canary, new.candidate.version)
            and new.canary.active_version == new.active_version
        ):
            new.candidate.canary_percent = new.canary.percent  # what the serving sidecars split by

        # Retention.
        protected = [new.active_version, new.previous_version, new.desired.version if new.desired else None]
        protected.append(new.candidate.version if new.candidate else None)
        pruned = pick_pruned(phases, spec.retention.keep_versions, protected)
        if pruned and storage.failure is None:
            for v in pruned:
                name = modelversion_name(snap.name, v)
                self.out.actions.append(DeleteVersion(v, name, version_prefix(spec.model, v)))
            self.event(
                "Normal",
                "RetentionPruned",
                f"deleted {', '.join(pruned)} and their artifacts (keepVersions {spec.retention.keep_versions})",
            )

        # Summary.
        if new.active_version is None and unreadable is not None:
            self.cond("Ready", "False", unreadable.reason, unreadable.message)
        elif new.active_version is None:
            self.cond("Ready", "False", "NoActiveVersion", "no version has been promoted yet")
        elif new.desired is not None and new.desired.version != new.active_version:
            self.cond(
                "Ready",
                "True",
                "RollingOut",
                f"serving {new.active_version}; rolling out {new.desired.version} ({new.rollout.summary})",
            )
        else:
            self.cond("Ready", "True", "Serving", f"serving {new.active_version}")
        new.observed_generation = generation
        self.out.wake = self.next_wake(budget if blocked else None)
        return self.finish()

    def next_wake(self, blocked: BudgetDecision | None) -> Wake | None:
        """When the clock alone changes a decision of this pass (only future times: a past one has had its
        chance, and what holds it back, a version in flight or a spec change, wakes the daemon itself)."""
        spec, new, now = self.spec, self.new, self.now
        times: list[Wake] = []
        fb = spec.triggers.feedback
        if new.feedback.pending_corrections >= fb.min_samples and new.last_training_time is not None:
            times.append(Wake(new.last_training_time + parse_duration(fb.min_interval), "MinIntervalPassed"))
        if spec.triggers.schedule:
            times.append(Wake(next_fire(spec.triggers.schedule, now), "ScheduleFires"))
        if blocked is not None and blocked.next_at is not None:
            times.append(Wake(blocked.next_at, "BudgetFrees"))
        canary = new.canary
        if (
            spec.rollout.canary.enabled
            and canary is not None
            and in_progress(canary, canary.version)
            and canary.step_started_at is not None
        ):
            step = parse_duration(spec.rollout.canary.max_step_duration)
            times.append(Wake(canary.step_started_at + step, "CanaryStepExpires"))
        shadow = new.shadow
        collecting = shadow is not None and shadow.verdict == Verdict.COLLECT.value
        if spec.rollout.shadow.enabled and collecting and shadow is not None and shadow.since is not None:
            expires = shadow.since + parse_duration(spec.rollout.shadow.max_duration)
            times.append(Wake(expires, "ShadowStageExpires"))
        future = [w for w in times if w.at > now]
        return min(future, key=lambda w: w.at) if future else None

    def quarantined(self, q: QuarantinedObject) -> None:
        self.metric("FEEDBACK_QUARANTINED")
        message = f"s3://{self.spec.storage.bucket}/{q.key} is not counted nor trained on: {q.reason}; fix or delete it"
        self.event("Warning", "FeedbackQuarantined", message)
        self.log("warning", message)
        self.out.quarantined.append(q)

    def budget_condition(self, budget: BudgetDecision) -> None:
        """``Training=False`` reason ``BudgetExhausted``, with one Warning Event when the block begins."""
        self.warn_once("Training", "BudgetExhausted", budget.message)

    def retry_condition(self, retry: RetryDecision, start: TrainingStart | None, training: str | None) -> None:
        """``RetriesExhausted``: True (with a Warning Event, once) when the last attempt failed; False
        while a retry runs or once a new chain started. Absent on policies that never needed a retry."""
        prev = get_condition(self.conds, "RetriesExhausted")
        if retry.exhausted and start is None:
            if prev is None or prev["status"] != "True":
                self.event("Warning", "RetriesExhausted", retry.message)
                self.log("warning", retry.message)
            self.cond("RetriesExhausted", "True", "RetriesExhausted", retry.message)
        elif start is not None and start.retry_of is not None:
            self.cond("RetriesExhausted", "False", "Retrying", start.message)
        elif prev is not None and prev["status"] == "True" and start is not None:
            msg = f"{training} started a new chain of attempts ({start.reason})"
            self.cond("RetriesExhausted", "False", "NewAttempt", msg)

    def shadow_stage(self, candidate: str) -> bool:
        """Applies the shadow stage's decision to a verified ``candidate``; whether its promotion is held back.

        ``ShadowStage``: True while reviews are collected; False once the paired test promoted or rejected.
        A rejection marks the version Rejected (a retry may follow, as after a failed gate)."""
        new = self.new
        gate = shadow_gate(self.spec.rollout.shadow, new.shadow, candidate, new.active_version, self.now)
        if gate is None:
            return False
        decision, tally = gate
        new.shadow = tally
        new.shadow.verdict, new.shadow.message = decision.verdict.value, decision.message[:2048]
        prev = get_condition(self.conds, "ShadowStage")
        msg = f"{candidate} vs {new.active_version}: {decision.message}"
        if decision.verdict is Verdict.COLLECT:
            self.cond("ShadowStage", "True", decision.reason, msg[:1000])
            return True
        if decision.verdict is Verdict.REJECT:
            if prev is None or prev.get("reason") != decision.reason or prev.get("status") != "False":
                self.event("Warning", "ShadowRejected", msg[:1000])
                self.log("warning", f"shadow stage rejected {candidate}: {decision.message}")
            self.reject(candidate, f"rejected by live reviews ({decision.reason}): {decision.message}")
            self.cond("ShadowStage", "False", decision.reason, msg[:1000])
            return True
        self.event("Normal", "ShadowPassed", msg[:1000])
        self.cond("ShadowStage", "False", decision.reason, msg[:1000])
        return False

    def canary_stage(self, candidate: str) -> bool:
        """Applies the canary stage's decision to ``candidate`` (verified, past the shadow stage); whether its
        promotion is held back. ``CanaryStage``: True while a step collects reviews, False once decided.

        A rejection is a rollback of the share it answered: the ModelVersion becomes Rejected, so the next
        ``status.candidate`` no longer names it and every sidecar drops its slot (the split ends with it)."""
        spec, new, now = self.spec, self.new, self.now
        if not spec.rollout.canary.enabled or new.active_version is None:
            return False
        settings = canary_settings(spec.rollout)
        stage = canary_for(new.canary, candidate, new.active_version, settings, now)
        if stage.verdict == CanaryVerdict.PROMOTE.value:
            return False  # decided on an earlier pass whose promotion is being applied
        if stage.verdict == CanaryVerdict.REJECT.value:
            return True
        if stage is not new.canary:
            msg = f"{candidate} answers {stage.percent}% of requests (canary step 1 of {len(settings.steps)}) beside {new.active_version}"
            self.event("Normal", "CanaryStarted", msg)
            self.log("info", msg)
        decision = decide_canary(settings, stage.step, tally_of(stage), stage.step_started_at, now)
        new.canary = after(stage, decision, now)
        msg = f"{candidate} vs {new.active_version}: {decision.message}"[:1000]
        if decision.verdict is CanaryVerdict.COLLECT:
            self.cond("CanaryStage", "True", decision.reason, msg)
            return True
        self.metric("CANARY_DECISIONS", decision.verdict.value, decision.reason)
        if decision.verdict is CanaryVerdict.STEP:
            self.event("Normal", "CanaryStepped", msg)
            self.log("info", f"canary of {candidate} moves to {decision.percent}%: {decision.message}")
            self.cond("CanaryStage", "True", "Stepped", msg)
            return True
        if decision.verdict is CanaryVerdict.REJECT:
            self.event("Warning", "CanaryRejected", msg)
            self.log("warning", f"canary of {candidate} rolled back: {decision.message}")
            self.reject(candidate, f"rolled back by the canary stage ({decision.reason}): {decision.message}")
            self.cond("CanaryStage", "False", decision.reason, msg)
            return True
        self.event("Normal", "CanaryPassed", msg)
        self.cond("CanaryStage", "False", decision.reason, msg)
        return False

    def reject(self, version: str, message: str) -> None:
        """Marks a candidate a live-review stage turned down Rejected, which ends its slot on every sidecar."""
        self.mark(version, Phase.REJECTED, message[:1024])

    def set_desired(self, version: str, reason: str) -> None:
        spec, new, now = self.spec, self.new, self.now
        artifact = ((self.mvs.get(version) or {}).get("status") or {}).get("artifact") or {}
        new.desired = DesiredVersion(
            version=version,
            artifact_uri=artifact.get("uri") or artifact_uri(spec.storage.bucket, spec.model, version),
            manifest_digest=artifact["manifestDigest"],
            since=now,
            reason=reason,
        )
        new.rollout = RolloutStatus(started_at=now)

    def start_rollback(self, chosen: RollbackDecision) -> None:
        """Point ``status.desired`` at the rollback target, whatever is rolling out.

        A rollback to the active version abandons the rollout: it is complete at once (the sidecars
        follow ``status.desired`` back), so RolloutComplete stops saying RolloutStalled.
        """
        assert chosen.target is not None
        new, now = self.new, self.now
        desired = new.desired.version if new.desired else None
        dropped = abandoned_version(
            desired, self.phases.get(desired) if desired else None, new.active_version, chosen.target
        )
        if dropped is not None:
            self.mark(
                dropped,
                Phase.ROLLED_BACK,
                f"rollout abandoned at {new.rollout.summary or '0/?'} replicas: {chosen.reason} to {chosen.target}",
            )
        canary = ended_canary(answering(new.canary, new.active_version), chosen.target)
        if canary is not None and new.canary is not None:
            at = f"canary ended at {new.canary.percent}% of requests: {chosen.reason} to {chosen.target}"
            self.mark(canary, Phase.ROLLED_BACK, at)  # no longer the candidate: every sidecar drops its slot
            new.canary = ended_by_rollback(new.canary, chosen.reason, f"{at}; {chosen.message}")
            self.metric("CANARY_DECISIONS", CanaryVerdict.REJECT.value, chosen.reason)
            self.cond("CanaryStage", "False", chosen.reason, at)
        self.set_desired(chosen.target, chosen.reason)
        auto = chosen.reason == "AutoRollback"
        self.out.metrics.append(MetricInc("ROLLBACKS", (*self.labels, "auto" if auto else "manual")))
        self.log("warning", chosen.message)
        if chosen.target != new.active_version:
            self.event("Warning", "AutoRollingBack" if auto else "RollingBack", chosen.message)
            self.cond("RolledBack", "Unknown", chosen.reason, chosen.message)
            return
        new.rollout.completed_at = now
        back = (
            "every replica stops splitting requests"
            if desired in (None, chosen.target)
            else f"serving pods that loaded {desired} return to it"
        )
        msg = f"{chosen.message}: {chosen.target} stayed active; {back}"
        self.event("Warning", "AutoRolledBack" if auto else "RolledBack", msg)
        self.cond("RolloutComplete", "True", "RolloutAbandoned", msg)
        self.cond("RolledBack", "True", chosen.reason, msg)

    def track_rollout(self, serving: ServingView) -> None:
        spec, new, now = self.spec, self.new, self.now
        desired = new.desired
        assert desired is not None
        started = new.rollout.started_at or desired.since or now
        d = decide_rollout(
            desired.manifest_digest,
            desired.version,
            serving.replicas,
            serving.pods,
            started,
            parse_duration(spec.serving.rollout_timeout),
            now,
        )
        new.rollout.updated, new.rollout.total, new.rollout.summary = d.updated, d.total, d.summary
        new.rollout.started_at = started
        if not d.complete:
            if d.stalled:
                self.warn_once("RolloutComplete", "RolloutStalled", d.message)
            else:
                self.cond("RolloutComplete", "False", "RollingOut", d.message)
            return
        new.rollout.completed_at = now
        self.metric("ROLLOUT_DURATION", observe=(now - started).total_seconds())
        old_active = new.active_version
        target = desired.version
        rollback = desired.reason in ("Rollback", "AutoRollback")
        if old_active and old_active in self.phases:
            phase = Phase.ROLLED_BACK if rollback else Phase.SUPERSEDED
            self.mark(old_active, phase, f"replaced by {target} ({desired.reason})")
        self.mark(target, Phase.ACTIVE, f"serving on {d.summary} replicas", promoted_at=now)
        new.previous_version = old_active
        new.active_version = target
        new.previous_live_accuracy = new.live_accuracy if new.live_accuracy.version == old_active else None
        new.live_accuracy = LiveAccuracy(version=target)
        self.cond("RolloutComplete", "True", "AllReplicasUpdated", d.message)
        if rollback:
            msg = f"rolled back from {old_active} to {target} ({desired.reason}); {d.message}"
            self.cond("RolledBack", "True", desired.reason or "Rollback", msg)
            self.event("Warning", "AutoRolledBack" if desired.reason == "AutoRollback" else "RolledBack", msg)
        else:
            msg = f"{target} is active (was {old_active or 'none'}); {d.message}"
            self.cond("RolledBack", "False", "Promoted", msg)
            self.metric("PROMOTIONS")
            self.event("Normal", "Promoted", msg)
        self.log("info", msg)

    def create_version(self, version: str, start: TrainingStart, retrain_now: str | None) -> None:
        spec, new, name = self.spec, self.new, self.snap.name
        hyperparameters = start.hyperparameters or spec.training.hyperparameters
        self.out.actions.append(
            CreateVersion(
                version=version,
                name=modelversion_name(name, version),
                labels={
                    c.LABEL_POLICY: name,
                    c.LABEL_MODEL: spec.model,
                    c.LABEL_VERSION: version,
                    c.LABEL_MANAGED_BY: c.MANAGED_BY,
                },
                # the request this training answers, so a lost status write cannot make it train twice
                annotations={c.ANNOTATION_RETRAIN_NOW: retrain_now} if retrain_now is not None else {},
                spec={
                    "model": spec.model,
                    "version": version,
                    "policy": name,
                    "trigger": f"{start.reason}: {start.message}"[:1024],
                    "trainingParameters": hyperparameters.model_dump(by_alias=True, exclude_none=True),
                    "feedbackSnapshot": {
                        "throughKey": new.feedback.cursor,
                        "samples": new.feedback.pending_reviews,
                        "corrections": new.feedback.pending_corrections,
                    },
                    "attempt": start.attempt,
                    **({"retryOf": start.retry_of} if start.retry_of else {}),
                    **({"parentVersion": new.active_version} if new.active_version else {}),
                },
            )
        )
        new.latest_version = version
        new.last_training_time = self.now
        new.feedback.pending_corrections = 0
        new.feedback.pending_reviews = 0


def count_feedback(
    read: FeedbackRead,
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    now: datetime,
    quarantined: Any,
) -> bool:
    """Counts the batches the gatherer read (``modelloop.decide.feedback``); one that cannot be read as
    feedback is quarantined, not retried: it must not stop the count. ``new.feedback`` moves on per
    batch, so a pass interrupted by the store keeps what it counted. Returns whether every batch to
    process was read (only then does the listing's state move on and the count close).

    ``quarantined(QuarantinedObject)`` is called per quarantined object (the plan turns it into an Event)."""
    fb = new.feedback
    live = new.live_accuracy
    state = CountingState(fb.cursor, fb.seen_through, frozenset(fb.recent_keys))
    listing = list(read.listing)
    picked = to_process(listing, state)
    done: list[str] = []
    for obj, got in zip(picked, read.batches, strict=False):
        assert got.obj == obj, "the gatherer read the batches to_process picked, in order"
        reason = quarantine_reason(obj)
        records: list[FeedbackRecord] = []
        if reason is None and got.content is not None:  # None: deleted since the listing, nothing to count
            try:
                records = decode_batch(got.content)
            except ValueError as e:  # pydantic's ValidationError: not JSON lines of feedback records
                first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
                where = ".".join(str(p) for p in first["loc"])
                reason = f"malformed: {where + ': ' if where else ''}{first['msg']}"[:1000]
        if reason is not None:
            q = QuarantinedObject(key=obj.key, reason=reason, at=now)
            fb.quarantined = [*fb.quarantined, q][-MAX_QUARANTINED:]
            fb.quarantined_total += 1
            quarantined(q)
        for rec in records:
            count_record(new, rec)  # once per prediction id: a record revising a stored review moves its counts
        done.append(obj.key)
        fb.cursor = max(fb.cursor, obj.key)
        if fb.seen_through is not None:
            fb.recent_keys.append(obj.key)
    if len(read.batches) < len(picked):
        return False
    after_ = after_listing(listing, state, done)
    fb.cursor, fb.seen_through, fb.recent_keys = after_.cursor, after_.seen_through, sorted(after_.recent)
    live.accuracy = (live.correct / live.reviews) if live.reviews else None
    fb.last_counted_at = now
    return True


# ---------------------------------------------------------------- pure views of the listed versions


def _spec_failure(e: Exception) -> Failure:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    else:
        detail = " ".join(str(e).split())
    return Failure(Stage.SPEC, type(e).__name__, detail)


def _version_views(mvs: Mapping[str, Any], phases: Mapping[str, Phase]) -> list[VersionView]:
    views: list[VersionView] = []
    for version, phase in phases.items():
        artifact = ((mvs.get(version) or {}).get("status") or {}).get("artifact") or {}
        views.append(VersionView(version, phase, artifact.get("uri"), artifact.get("manifestDigest")))
    return views


def _created_versions(mvs: Sequence[Mapping[str, Any]]) -> list[CreatedVersion]:
    out: list[CreatedVersion] = []
    for mv in mvs:
        meta, spec = mv.get("metadata") or {}, mv.get("spec") or {}
        created = parse_rfc3339(meta.get("creationTimestamp"))
        if not spec.get("version") or created is None:
            continue
        out.append(
            CreatedVersion(
                version=spec["version"],
                created_at=created,
                feedback_through=(spec.get("feedbackSnapshot") or {}).get("throughKey") or None,
                retrain_now=(meta.get("annotations") or {}).get(c.ANNOTATION_RETRAIN_NOW),
            )
        )
    return out


def _versions_created(mvs: Mapping[str, Any]) -> list[datetime]:
    created = (parse_rfc3339((mv.get("metadata") or {}).get("creationTimestamp")) for mv in mvs.values())
    return [t for t in created if t is not None]


def _newest_attempt(mvs: Mapping[str, Any], phases: Mapping[str, Phase]) -> AttemptView | None:
    if not phases:
        return None
    newest = sorted_versions(dict(phases))[-1]
    mv = mvs.get(newest) or {}
    return AttemptView(
        newest,
        phases[newest],
        (mv.get("spec") or {}).get("attempt"),
        version_message(mv)[:300],
    )
