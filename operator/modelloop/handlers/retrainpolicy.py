"""RetrainPolicy reconcile: feedback counting, triggers, promotion, rollout, rollback, retention.

One pass, run by the policy's daemon (``policydaemon``) when an event or a due check asks for
it: gather (ModelVersions, feedback in the bucket, serving pods) → decide (``modelloop.decide``)
→ apply (create a ModelVersion, move ``status.desired``, prune) → the changed status fields,
which the daemon writes in one patch, none when nothing changed. Everything the
operator remembers is in status, so a restarted operator continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from modelloop import metrics
from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri, feedback_prefix, version_prefix
from modelloop.api.feedback import decode_batch
from modelloop.api.modelversion import Phase, phase_of
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
from modelloop.clients import kube
from modelloop.clients.objectstore import NotFound, ObjectStore, check_resolvable
from modelloop.decide.budget import BudgetDecision, decide_budget, recent_starts
from modelloop.decide.canary import (
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
from modelloop.decide.candidate import VersionView, decide_candidate
from modelloop.decide.conditions import get_condition, parse_rfc3339, set_condition
from modelloop.decide.durations import parse_duration
from modelloop.decide.errors import ErrorVerdict, InvalidSpec, Stage, classify, unusable_spec
from modelloop.decide.feedback import (
    CountingState,
    ListedObject,
    after_listing,
    listing_start,
    quarantine_reason,
    to_process,
)
from modelloop.decide.paired import Verdict
from modelloop.decide.recovery import CreatedVersion, adopt_unrecorded, unrecorded_creation
from modelloop.decide.retention import pick_pruned
from modelloop.decide.retries import AttemptView, RetryDecision, TrainingStart, decide_next_training, decide_retry
from modelloop.decide.reviewcount import count_record
from modelloop.decide.rollback import (
    RollbackDecision,
    abandoned_version,
    decide_auto_rollback,
    decide_rollback_request,
    ended_canary,
)
from modelloop.decide.rollout import PodView, decide_rollout
from modelloop.decide.shadowstage import shadow_gate, tally_for
from modelloop.decide.triggers import TriggerSnapshot, decide_trigger
from modelloop.decide.versions import (
    in_flight,
    modelversion_name,
    next_version,
    promotion_candidate,
    sorted_versions,
)

from .failures import failure_of, report_failure
from .stores import store_for

RESOLVE_TIMEOUT = 5.0
"""Seconds the storage endpoint's host may take to resolve before the pass reports it unreachable."""


def phases_of(modelversions: list[dict[str, Any]]) -> dict[str, Phase]:
    """version -> phase of the listed ModelVersions."""
    return {
        version: phase_of(mv.get("status") or {})
        for mv in modelversions
        if (version := (mv.get("spec") or {}).get("version"))
    }


def reconcile_policy(
    body: kopf.Body,
    namespace: str,
    name: str,
    logger: Any,
    now: datetime,
    modelversions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One pass; returns the changed status fields (the caller writes them in one patch).

    ``modelversions``: the policy's ModelVersions as just listed by the caller (listed here if None).
    """
    meta = body["metadata"]
    generation = int(meta.get("generation") or 1)
    raw_status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    old = RetrainPolicyStatus.model_validate(raw_status)
    new = old.model_copy(deep=True)
    conds = [x.model_dump(by_alias=True, mode="json") for x in old.conditions]
    try:
        spec = RetrainPolicySpec.model_validate(body["spec"])
        if (problem := unusable_spec(spec)) is not None:
            raise InvalidSpec(problem)
    except (ValidationError, InvalidSpec) as e:
        verdict = classify(failure_of(e, Stage.SPEC), 1, 0, 0)
        conds = report_failure(body, conds, "Ready", verdict, now, generation, logger)
        new.observed_generation = generation  # judged: nothing more to do until the spec changes
        return _diff(old, new, conds)
    annotations = meta.get("annotations") or {}
    labels = (namespace, name)

    listed = modelversions if modelversions is not None else kube.list_modelversions(namespace, name)
    mvs = {mv["spec"]["version"]: mv for mv in listed}
    phases = phases_of(list(mvs.values()))
    lost = unrecorded_creation(_created_versions(list(mvs.values())), old.latest_version)
    if lost is not None:
        new = adopt_unrecorded(new, lost, spec.triggers.schedule)
        logger.warning(
            "%s exists but the status write of the pass that created it was lost (operator restarted?); "
            "recording it as the latest version and its trigger as consumed",
            lost.version,
        )

    # Feedback: count what was not counted yet (new batches, and batches uploaded late), and the reviews
    # that label both the active version and the candidate scored in the shadow.
    new.shadow = tally_for(new.shadow, new.candidate.version if new.candidate else None, new.active_version, now)
    store: ObjectStore | None = None
    unreadable: ErrorVerdict | None = None
    due = old.feedback.last_counted_at is None or now - old.feedback.last_counted_at >= timedelta(
        seconds=spec.triggers.check_interval_seconds
    )
    stage = Stage.CREDENTIALS
    try:
        store = store_for(namespace, spec)
        stage = Stage.STORAGE
        check_resolvable(spec.storage.endpoint, RESOLVE_TIMEOUT)
        if due:

            def quarantined(q: QuarantinedObject) -> None:
                metrics.FEEDBACK_QUARANTINED.labels(*labels).inc()
                message = (
                    f"s3://{spec.storage.bucket}/{q.key} is not counted nor trained on: {q.reason}; fix or delete it"
                )
                kopf.warn(body, reason="FeedbackQuarantined", message=message)
                logger.warning(message)

            _count_feedback(store, spec, new, now, quarantined)
        readable = f"s3://{spec.storage.bucket}/{feedback_prefix(spec.model)} is readable"
        if new.feedback.quarantined:
            last = new.feedback.quarantined[-1]
            readable += f"; {new.feedback.quarantined_total} object(s) quarantined (not counted), latest {last.key}: {last.reason}"
        conds = set_condition(conds, "FeedbackReadable", "True", "Readable", readable[:1000], now, generation)
    except Exception as e:  # noqa: BLE001 - any storage failure must become a condition and an Event, not a crash
        creds = spec.storage.trainer_credentials.secret_name
        subject = (
            f"Secret {namespace}/{creds}"
            if stage is Stage.CREDENTIALS
            else f"s3://{spec.storage.bucket}/{feedback_prefix(spec.model)} at {spec.storage.endpoint}"
        )
        every = float(spec.triggers.check_interval_seconds)  # the next full pass reads again
        unreadable = classify(failure_of(e, stage, subject, endpoint=spec.storage.endpoint), 1, every, every)
        conds = report_failure(body, conds, "FeedbackReadable", unreadable, now, generation, logger)
        store = None

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
        kopf.warn(body, reason="RollbackRejected", message=decision.message)
        conds = set_condition(conds, "RolledBack", "False", decision.reason, decision.message, now, generation)
    auto = decide_auto_rollback(
        spec.auto_rollback,
        new.live_accuracy,
        new.active_version,
        new.previous_version,
        desired_version,
        new.desired.reason if new.desired else None,
    )
    chosen: RollbackDecision | None = decision if decision.act else (auto if auto.act else None)
    if chosen is not None and chosen.target:
        conds = _start_rollback(spec, new, mvs, phases, chosen, body, namespace, now, conds, generation, logger)
    elif new.desired is None or new.desired.version == new.active_version:
        candidate = promotion_candidate(phases, new.active_version)
        if candidate is not None and phases[candidate] == Phase.VERIFIED:
            held = False
            if not in_progress(new.canary, candidate):  # a candidate in the canary stage has passed the shadow
                conds, held = _shadow_stage(spec, new, candidate, body, namespace, name, now, conds, generation, logger)
            if not held:
                conds, held = _canary_stage(spec, new, candidate, body, namespace, name, now, conds, generation, logger)
            if held:
                candidate = None
        if candidate is not None:
            if phases[candidate] == Phase.PROMOTING:
                logger.warning(
                    "%s is marked Promoting but status.desired never named it (the status write was lost, "
                    "operator restarted?); promoting it again",
                    candidate,
                )
            _set_desired(spec, new, mvs, candidate, "Promotion", now)
            kube.patch_modelversion_status(
                namespace,
                modelversion_name(name, candidate),
                {"phase": Phase.PROMOTING.value, "message": "waiting for serving replicas"},
            )
            phases[candidate] = Phase.PROMOTING
            logger.info("promoting %s", candidate)
    if new.desired is not None and new.desired.version != new.active_version:
        conds = _track_rollout(spec, new, mvs, phases, body, namespace, now, conds, generation, logger)

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
    retry = decide_retry(spec.retry, spec.training.hyperparameters, _newest_attempt(mvs, phases), flying, spec.suspend)
    start = decide_next_training(trig, retry)
    new.training_starts = recent_starts(new.training_starts, now)
    budget = decide_budget(spec.triggers.max_trainings_per_day, new.training_starts, _versions_created(mvs), now)
    blocked = start is not None and not budget.allowed
    if blocked:
        start = None
        if trig.act and trig.reason == "Schedule":
            new.last_schedule_time = old.last_schedule_time  # the fire stays due until the budget allows it
    if start is not None:
        new.training_starts = recent_starts([*new.training_starts, now], now)[-MAX_TRAININGS_PER_DAY:]
        version = next_version(phases, new.latest_version)
        handled_now = trig.retrain_now_handled if start.reason == trig.reason else None
        _create_version(body, spec, new, namespace, name, version, start, handled_now, now)
        if handled_now is not None:
            new.handled.retrain_now = handled_now
        phases[version] = Phase.PENDING
        new.training_version = version
        metrics.TRAININGS_STARTED.labels(*labels, start.reason).inc()
        if start.retry_of is not None:
            metrics.TRAINING_RETRIES.labels(*labels, phases[start.retry_of].value).inc()
            kopf.info(body, reason="TrainingRetried", message=f"{version}: {start.message}")
        else:
            kopf.info(body, reason="TrainingStarted", message=f"{version}: {start.message}")
        logger.info("starting %s: %s", version, start.message)
    conds = _retry_condition(retry, start, new.training_version, body, conds, now, generation, logger)
    training = new.training_version
    if blocked:
        conds = _budget_condition(budget, body, conds, now, generation, logger)
    else:
        conds = set_condition(
            conds, "Training", "True" if training else "False",
            "InFlight" if training else trig.reason,
            f"version {training} is training or verifying" if training else trig.message, now, generation,
        )  # fmt: skip

    # What serving sidecars may download ahead of promotion.
    new.candidate = decide_candidate(
        _version_views(mvs, phases), new.active_version, new.desired.version if new.desired else None
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
    if pruned and store is not None:
        for v in pruned:
            kube.delete_modelversion(namespace, modelversion_name(name, v))
            store.remove_prefix(version_prefix(spec.model, v))
        kopf.info(
            body,
            reason="RetentionPruned",
            message=f"deleted {', '.join(pruned)} and their artifacts (keepVersions {spec.retention.keep_versions})",
        )

    # Summary.
    if new.active_version is None and unreadable is not None:
        conds = set_condition(conds, "Ready", "False", unreadable.reason, unreadable.message, now, generation)
    elif new.active_version is None:
        conds = set_condition(
            conds, "Ready", "False", "NoActiveVersion", "no version has been promoted yet", now, generation
        )
    elif new.desired is not None and new.desired.version != new.active_version:
        conds = set_condition(
            conds,
            "Ready",
            "True",
            "RollingOut",
            f"serving {new.active_version}; rolling out {new.desired.version} ({new.rollout.summary})",
            now,
            generation,
        )
    else:
        conds = set_condition(conds, "Ready", "True", "Serving", f"serving {new.active_version}", now, generation)
    new.observed_generation = generation
    return _diff(old, new, conds)


def _budget_condition(
    budget: BudgetDecision, body: Any, conds: list[dict[str, Any]], now: datetime, generation: int, logger: Any
) -> list[dict[str, Any]]:
    """``Training=False`` reason ``BudgetExhausted``, with one Warning Event when the block begins."""
    prev = get_condition(conds, "Training")
    if prev is None or prev["reason"] != "BudgetExhausted":
        kopf.warn(body, reason="BudgetExhausted", message=budget.message)
        logger.warning(budget.message)
    return set_condition(conds, "Training", "False", "BudgetExhausted", budget.message, now, generation)


def _versions_created(mvs: dict[str, Any]) -> list[datetime]:
    created = (parse_rfc3339((mv.get("metadata") or {}).get("creationTimestamp")) for mv in mvs.values())
    return [t for t in created if t is not None]


def _newest_attempt(mvs: dict[str, Any], phases: dict[str, Phase]) -> AttemptView | None:
    if not phases:
        return None
    newest = sorted_versions(phases)[-1]
    mv = mvs.get(newest) or {}
    return AttemptView(
        newest,
        phases[newest],
        (mv.get("spec") or {}).get("attempt"),
        str((mv.get("status") or {}).get("message") or "")[:300],
    )


def _retry_condition(
    retry: RetryDecision,
    start: TrainingStart | None,
    training: str | None,
    body: Any,
    conds: list[dict[str, Any]],
    now: datetime,
    generation: int,
    logger: Any,
) -> list[dict[str, Any]]:
    """``RetriesExhausted``: True (with a Warning Event, once) when the last attempt failed; False
    while a retry runs or once a new chain started. Absent on policies that never needed a retry."""
    prev = get_condition(conds, "RetriesExhausted")
    if retry.exhausted and start is None:
        if prev is None or prev["status"] != "True":
            kopf.warn(body, reason="RetriesExhausted", message=retry.message)
            logger.warning(retry.message)
        return set_condition(conds, "RetriesExhausted", "True", "RetriesExhausted", retry.message, now, generation)
    if start is not None and start.retry_of is not None:
        return set_condition(conds, "RetriesExhausted", "False", "Retrying", start.message, now, generation)
    if prev is not None and prev["status"] == "True" and start is not None:
        msg = f"{training} started a new chain of attempts ({start.reason})"
        return set_condition(conds, "RetriesExhausted", "False", "NewAttempt", msg, now, generation)
    return conds


def _shadow_stage(
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    candidate: str,
    body: Any,
    namespace: str,
    name: str,
    now: datetime,
    conds: list[dict[str, Any]],
    generation: int,
    logger: Any,
) -> tuple[list[dict[str, Any]], bool]:
    """Applies the shadow stage's decision to a verified ``candidate``; whether its promotion is held back.

    ``ShadowStage``: True while reviews are collected; False once the paired test promoted or rejected.
    A rejection marks the version Rejected (a retry may follow, as after a failed gate)."""
    gate = shadow_gate(spec.rollout.shadow, new.shadow, candidate, new.active_version, now)
    if gate is None:
        return conds, False
    decision, tally = gate
    new.shadow = tally
    new.shadow.verdict, new.shadow.message = decision.verdict.value, decision.message[:2048]
    prev = get_condition(conds, "ShadowStage")
    msg = f"{candidate} vs {new.active_version}: {decision.message}"
    if decision.verdict is Verdict.COLLECT:
        conds = set_condition(conds, "ShadowStage", "True", decision.reason, msg[:1000], now, generation)
        return conds, True
    if decision.verdict is Verdict.REJECT:
        if prev is None or prev.get("reason") != decision.reason or prev.get("status") != "False":
            kopf.warn(body, reason="ShadowRejected", message=msg[:1000])
            logger.warning("shadow stage rejected %s: %s", candidate, decision.message)
        _reject(namespace, name, candidate, f"rejected by live reviews ({decision.reason}): {decision.message}")
        conds = set_condition(conds, "ShadowStage", "False", decision.reason, msg[:1000], now, generation)
        return conds, True
    kopf.info(body, reason="ShadowPassed", message=msg[:1000])
    conds = set_condition(conds, "ShadowStage", "False", decision.reason, msg[:1000], now, generation)
    return conds, False


def _canary_stage(
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    candidate: str,
    body: Any,
    namespace: str,
    name: str,
    now: datetime,
    conds: list[dict[str, Any]],
    generation: int,
    logger: Any,
) -> tuple[list[dict[str, Any]], bool]:
    """Applies the canary stage's decision to ``candidate`` (verified, past the shadow stage); whether its
    promotion is held back. ``CanaryStage``: True while a step collects reviews, False once decided.

    A rejection is a rollback of the share it answered: the ModelVersion becomes Rejected, so the next
    ``status.candidate`` no longer names it and every sidecar drops its slot (the split ends with it)."""
    if not spec.rollout.canary.enabled or new.active_version is None:
        return conds, False
    settings = canary_settings(spec.rollout)
    stage = canary_for(new.canary, candidate, new.active_version, settings, now)
    labels = (namespace, name)
    if stage.verdict == CanaryVerdict.PROMOTE.value:
        return conds, False  # decided on an earlier pass whose promotion is being applied
    if stage.verdict == CanaryVerdict.REJECT.value:
        return conds, True
    if stage is not new.canary:
        msg = f"{candidate} answers {stage.percent}% of requests (canary step 1 of {len(settings.steps)}) beside {new.active_version}"
        kopf.info(body, reason="CanaryStarted", message=msg)
        logger.info(msg)
    decision = decide_canary(settings, stage.step, tally_of(stage), stage.step_started_at, now)
    new.canary = after(stage, decision, now)
    msg = f"{candidate} vs {new.active_version}: {decision.message}"[:1000]
    if decision.verdict is CanaryVerdict.COLLECT:
        conds = set_condition(conds, "CanaryStage", "True", decision.reason, msg, now, generation)
        return conds, True
    metrics.CANARY_DECISIONS.labels(*labels, decision.verdict.value, decision.reason).inc()
    if decision.verdict is CanaryVerdict.STEP:
        kopf.info(body, reason="CanaryStepped", message=msg)
        logger.info("canary of %s moves to %d%%: %s", candidate, decision.percent, decision.message)
        conds = set_condition(conds, "CanaryStage", "True", "Stepped", msg, now, generation)
        return conds, True
    if decision.verdict is CanaryVerdict.REJECT:
        kopf.warn(body, reason="CanaryRejected", message=msg)
        logger.warning("canary of %s rolled back: %s", candidate, decision.message)
        _reject(namespace, name, candidate, f"rolled back by the canary stage ({decision.reason}): {decision.message}")
        conds = set_condition(conds, "CanaryStage", "False", decision.reason, msg, now, generation)
        return conds, True
    kopf.info(body, reason="CanaryPassed", message=msg)
    conds = set_condition(conds, "CanaryStage", "False", decision.reason, msg, now, generation)
    return conds, False


def _reject(namespace: str, policy: str, version: str, message: str) -> None:
    """Marks a candidate a live-review stage turned down Rejected, which ends its slot on every sidecar."""
    kube.patch_modelversion_status(
        namespace, modelversion_name(policy, version), {"phase": Phase.REJECTED.value, "message": message[:1024]}
    )


def _diff(old: RetrainPolicyStatus, new: RetrainPolicyStatus, conds: list[dict[str, Any]]) -> dict[str, Any]:
    out = new.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
    out["conditions"] = conds
    before = old.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
    before["conditions"] = [x.model_dump(by_alias=True, mode="json") for x in old.conditions]
    return {k: v for k, v in out.items() if before.get(k) != v}


def _count_feedback(
    store: ObjectStore,
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    now: datetime,
    quarantined: Callable[[QuarantinedObject], None],
) -> None:
    """Counts the batches not counted yet (``modelloop.decide.feedback``); one that cannot be read as
    feedback is quarantined, not retried: it must not stop the count. ``new.feedback`` moves on per
    batch, so a pass interrupted by the store keeps what it counted."""
    fb = new.feedback
    live = new.live_accuracy
    state = CountingState(fb.cursor, fb.seen_through, frozenset(fb.recent_keys))
    window = parse_duration(spec.triggers.feedback.late_arrival_window)
    listing = [
        ListedObject(key, size, modified)
        for key, size, modified in store.list_objects(
            feedback_prefix(spec.model), listing_start(spec.model, state, window)
        )
    ]
    done: list[str] = []
    for obj in to_process(listing, state):
        reason = quarantine_reason(obj)
        records = []
        if reason is None:
            try:
                records = decode_batch(store.get_bytes(obj.key))
            except NotFound:
                pass  # deleted since the listing: nothing to count
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
    after = after_listing(listing, state, done)
    fb.cursor, fb.seen_through, fb.recent_keys = after.cursor, after.seen_through, sorted(after.recent)
    live.accuracy = (live.correct / live.reviews) if live.reviews else None
    fb.last_counted_at = now


def _version_views(mvs: dict[str, Any], phases: dict[str, Phase]) -> list[VersionView]:
    views: list[VersionView] = []
    for version, phase in phases.items():
        artifact = ((mvs.get(version) or {}).get("status") or {}).get("artifact") or {}
        views.append(VersionView(version, phase, artifact.get("uri"), artifact.get("manifestDigest")))
    return views


def _created_versions(mvs: list[dict[str, Any]]) -> list[CreatedVersion]:
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


def _set_desired(
    spec: RetrainPolicySpec, new: RetrainPolicyStatus, mvs: dict[str, Any], version: str, reason: str, now: datetime
) -> None:
    artifact = ((mvs.get(version) or {}).get("status") or {}).get("artifact") or {}
    new.desired = DesiredVersion(
        version=version,
        artifact_uri=artifact.get("uri") or artifact_uri(spec.storage.bucket, spec.model, version),
        manifest_digest=artifact["manifestDigest"],
        since=now,
        reason=reason,
    )
    new.rollout = RolloutStatus(started_at=now)


def _start_rollback(
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    mvs: dict[str, Any],
    phases: dict[str, Phase],
    chosen: RollbackDecision,
    body: Any,
    namespace: str,
    now: datetime,
    conds: list[dict[str, Any]],
    generation: int,
    logger: Any,
) -> list[dict[str, Any]]:
    """Point ``status.desired`` at the rollback target, whatever is rolling out.

    A rollback to the active version abandons the rollout: it is complete at once (the sidecars
    follow ``status.desired`` back), so RolloutComplete stops saying RolloutStalled.
    """
    assert chosen.target is not None
    name = body["metadata"]["name"]
    desired = new.desired.version if new.desired else None
    dropped = abandoned_version(desired, phases.get(desired) if desired else None, new.active_version, chosen.target)
    if dropped is not None:
        kube.patch_modelversion_status(
            namespace,
            modelversion_name(name, dropped),
            {"phase": Phase.ROLLED_BACK.value, "message": f"rollout abandoned at {new.rollout.summary or '0/?'}"
             f" replicas: {chosen.reason} to {chosen.target}"},
        )  # fmt: skip
        phases[dropped] = Phase.ROLLED_BACK
    canary = ended_canary(answering(new.canary, new.active_version), chosen.target)
    if canary is not None and new.canary is not None:
        at = f"canary ended at {new.canary.percent}% of requests: {chosen.reason} to {chosen.target}"
        kube.patch_modelversion_status(
            namespace, modelversion_name(name, canary), {"phase": Phase.ROLLED_BACK.value, "message": at}
        )
        phases[canary] = Phase.ROLLED_BACK  # no longer the candidate: every sidecar drops its slot, the split ends
        new.canary = ended_by_rollback(new.canary, chosen.reason, f"{at}; {chosen.message}")
        metrics.CANARY_DECISIONS.labels(namespace, name, CanaryVerdict.REJECT.value, chosen.reason).inc()
        conds = set_condition(conds, "CanaryStage", "False", chosen.reason, at, now, generation)
    _set_desired(spec, new, mvs, chosen.target, chosen.reason, now)
    auto = chosen.reason == "AutoRollback"
    metrics.ROLLBACKS.labels(namespace, name, "auto" if auto else "manual").inc()
    logger.warning(chosen.message)
    if chosen.target != new.active_version:
        kopf.warn(body, reason="AutoRollingBack" if auto else "RollingBack", message=chosen.message)
        return set_condition(conds, "RolledBack", "Unknown", chosen.reason, chosen.message, now, generation)
    new.rollout.completed_at = now
    back = (
        "every replica stops splitting requests"
        if desired in (None, chosen.target)
        else f"serving pods that loaded {desired} return to it"
    )
    msg = f"{chosen.message}: {chosen.target} stayed active; {back}"
    kopf.warn(body, reason="AutoRolledBack" if auto else "RolledBack", message=msg)
    conds = set_condition(conds, "RolloutComplete", "True", "RolloutAbandoned", msg, now, generation)
    return set_condition(conds, "RolledBack", "True", chosen.reason, msg, now, generation)


def _track_rollout(
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    mvs: dict[str, Any],
    phases: dict[str, Phase],
    body: Any,
    namespace: str,
    now: datetime,
    conds: list[dict[str, Any]],
    generation: int,
    logger: Any,
) -> list[dict[str, Any]]:
    desired = new.desired
    assert desired is not None
    name = body["metadata"]["name"]
    replicas: int | None = None
    pods: list[PodView] = []
    if spec.serving.deployment:
        found = kube.deployment_serving(namespace, spec.serving.deployment)
        if found is None:
            replicas = 1
            msg = f"serving Deployment {spec.serving.deployment} not found; waiting for it"
        else:
            replicas, raw = found
            pods = [PodView(n, d, t) for n, d, t in raw]
    started = new.rollout.started_at or desired.since or now
    d = decide_rollout(
        desired.manifest_digest,
        desired.version,
        replicas,
        pods,
        started,
        parse_duration(spec.serving.rollout_timeout),
        now,
    )
    new.rollout.updated, new.rollout.total, new.rollout.summary = d.updated, d.total, d.summary
    new.rollout.started_at = started
    if not d.complete:
        if d.stalled:
            prev = get_condition(conds, "RolloutComplete")
            if prev is None or prev.get("reason") != "RolloutStalled":
                kopf.warn(body, reason="RolloutStalled", message=d.message)
                logger.warning(d.message)
            conds = set_condition(conds, "RolloutComplete", "False", "RolloutStalled", d.message, now, generation)
        else:
            conds = set_condition(conds, "RolloutComplete", "False", "RollingOut", d.message, now, generation)
        return conds
    new.rollout.completed_at = now
    metrics.ROLLOUT_DURATION.labels(namespace, name).observe((now - started).total_seconds())
    old_active = new.active_version
    target = desired.version
    rollback = desired.reason in ("Rollback", "AutoRollback")
    if old_active and old_active in phases:
        after = Phase.ROLLED_BACK if rollback else Phase.SUPERSEDED
        kube.patch_modelversion_status(
            namespace,
            modelversion_name(name, old_active),
            {"phase": after.value, "message": f"replaced by {target} ({desired.reason})"},
        )
        phases[old_active] = after
    kube.patch_modelversion_status(
        namespace, modelversion_name(name, target),
        {"phase": Phase.ACTIVE.value, "message": f"serving on {d.summary} replicas", "promotedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )  # fmt: skip
    phases[target] = Phase.ACTIVE
    new.previous_version = old_active
    new.active_version = target
    new.live_accuracy = LiveAccuracy(version=target)
    conds = set_condition(conds, "RolloutComplete", "True", "AllReplicasUpdated", d.message, now, generation)
    if rollback:
        msg = f"rolled back from {old_active} to {target} ({desired.reason}); {d.message}"
        conds = set_condition(conds, "RolledBack", "True", desired.reason or "Rollback", msg, now, generation)
        kopf.warn(body, reason="AutoRolledBack" if desired.reason == "AutoRollback" else "RolledBack", message=msg)
    else:
        msg = f"{target} is active (was {old_active or 'none'}); {d.message}"
        conds = set_condition(conds, "RolledBack", "False", "Promoted", msg, now, generation)
        metrics.PROMOTIONS.labels(namespace, name).inc()
        kopf.info(body, reason="Promoted", message=msg)
    logger.info(msg)
    return conds


def _create_version(
    body: Any,
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    namespace: str,
    name: str,
    version: str,
    start: TrainingStart,
    retrain_now: str | None,
    now: datetime,
) -> None:
    hyperparameters = start.hyperparameters or spec.training.hyperparameters
    mv: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.MODELVERSION_KIND,
        "metadata": {
            "name": modelversion_name(name, version),
            "labels": {
                c.LABEL_POLICY: name,
                c.LABEL_MODEL: spec.model,
                c.LABEL_VERSION: version,
                c.LABEL_MANAGED_BY: c.MANAGED_BY,
            },
        },
        "spec": {
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
    }
    kopf.adopt(mv, owner=body, strict=True)
    mv["metadata"]["labels"] = {
        k: v for k, v in mv["metadata"]["labels"].items() if k.startswith(c.GROUP) or k == c.LABEL_MANAGED_BY
    }
    if retrain_now is not None:
        # the request this training answers, so a lost status write cannot make it train twice
        mv["metadata"]["annotations"] = {c.ANNOTATION_RETRAIN_NOW: retrain_now}
    kube.create_modelversion(namespace, mv)
    new.latest_version = version
    new.last_training_time = now
    new.feedback.pending_corrections = 0
    new.feedback.pending_reviews = 0
