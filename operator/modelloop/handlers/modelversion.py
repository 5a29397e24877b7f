"""ModelVersion lifecycle: Pending → Training → Verifying → Verified | Rejected | Failed, and the only
writer of a ModelVersion's status.

A level-based state machine: a timer per non-terminal ModelVersion reads the Job and the
bucket and advances the phase. Status is the only memory and Job names are deterministic,
so a restart (or SIGKILL) in any phase simply continues.

What happens after Verified (promotion, the shadow and canary stages, rollout, rollback) is
decided by the policy's pass, which sees all versions at once. It records each decision about a
version on that version's ``modelloop.dev/phase-decision`` annotation (phase, message,
promotedAt), and :func:`modelversion_decided`, on the version's watch events, copies it into
status: ``kubectl get mv`` shows Promoting, Active, Superseded, Rejected and RolledBack as before,
written by this module alone (a moment after the policy's status, no longer before it). Why an annotation rather than deriving the phase from the
policy's status: the policy's status holds only the current rollout (``desired``, ``active``,
``previous``, the current shadow/canary tally), not the history a phase needs (which abandoned
rollout turned a version RolledBack, which stage rejected it and why), and the pass reads the
annotation back in its next listing, so it never acts on a phase older than its own decision
while the copy is pending (``decide.versions.version_phase``).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from modelloop import metrics
from modelloop.api import constants as c
from modelloop.api.artifacts import (
    PROGRESS_FILE,
    VERIFICATION_FILE,
    ArtifactError,
    Progress,
    Verification,
    artifact_uri,
    version_key,
)
from modelloop.api.common import ConditionStatus
from modelloop.api.modelversion import (
    IN_FLIGHT,
    ArtifactRef,
    ModelVersionSpec,
    ModelVersionStatus,
    Phase,
    phase_of,
)
from modelloop.api.retrainpolicy import Hyperparameters, RetrainPolicySpec
from modelloop.clients import artifactstore, kube, signing
from modelloop.clients.objectstore import NotFound, ObjectStore
from modelloop.decide.conditions import set_condition
from modelloop.decide.gates import evaluate_gates, failing_summary
from modelloop.decide.jobs import Verb, build_job, build_rendezvous_service, job_outcome
from modelloop.decide.queueing import queue_event, queue_name, queue_state
from modelloop.decide.signing import SignAction, decide_signing
from modelloop.decide.versions import mirrored_status

from .clock import utc_now
from .stores import store_for, verifier_credentials_problem

ENV_SIGNING_KEY = "MODELLOOP_SIGNING_KEY"
INTERVAL = float(os.environ.get("MODELLOOP_MODELVERSION_INTERVAL", "3"))


class _Conditions:
    """The version's conditions as they are being rewritten during one pass."""

    def __init__(self, items: list[dict[str, Any]], now: datetime, generation: int) -> None:
        self.items, self.now, self.generation = items, now, generation

    def set(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_, status, reason, message, self.now, self.generation)


def _in_flight(status: kopf.Status, **_: Any) -> bool:
    return phase_of(status) in IN_FLIGHT


MIRROR_ATTEMPTS = 3


@kopf.on.event(c.GROUP, c.VERSION, c.MODELVERSION_PLURAL, annotations={c.ANNOTATION_PHASE_DECISION: kopf.PRESENT})
def modelversion_decided(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """Copies the policy pass's decision about this version into its status (a watch event, not a timer:
    kopf's timers put a finalizer on the object for as long as they run). Every event of the version
    with a decision its status does not show yet is a cue, the listing after an operator start included,
    so a copy lost to a failed write is made at the next event or start at the latest."""
    if event.get("type") == "DELETED" or not namespace or not name:
        return
    mirrored = mirrored_status(body)
    if not mirrored:
        return
    for attempt in range(1, MIRROR_ATTEMPTS + 1):
        try:
            kube.patch_modelversion_status(namespace, name, mirrored)
            break
        except Exception as e:  # noqa: BLE001 - retried here; the next event or start copies it otherwise
            if attempt == MIRROR_ATTEMPTS:
                logger.error(
                    "could not copy the policy's decision %s into the status: %s: %s", mirrored, type(e).__name__, e
                )
                return
            time.sleep(INTERVAL * attempt)  # backoff between attempts, not synchronisation
    logger.info("version %s: %s (decided by its policy)", body.get("spec", {}).get("version"), mirrored)


# backoff: a failed pass (the API server or the bucket briefly unreachable) is retried at the
# usual pace; kopf's default of 60 s left a version stalled for a minute after every API outage.
@kopf.timer(c.GROUP, c.VERSION, c.MODELVERSION_PLURAL, interval=INTERVAL, backoff=INTERVAL, when=_in_flight)
def modelversion_timer(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    assert namespace is not None, "ModelVersion is namespaced"
    try:
        reconcile_modelversion(body, dict(spec), dict(status), namespace, patch, logger, utc_now())
    except Exception as e:
        metrics.RECONCILE_ERRORS.labels(namespace, spec.get("policy", ""), "ModelVersion", type(e).__name__).inc()
        raise


def reconcile_modelversion(
    body: kopf.Body,
    spec: dict[str, Any],
    status: dict[str, Any],
    namespace: str,
    patch: kopf.Patch | None,
    logger: kopf.Logger | Any,
    now: datetime,
) -> dict[str, Any]:
    """One pass; returns the status fields to write (also applied to ``patch`` when given)."""
    mv = ModelVersionSpec.model_validate(spec)
    old = ModelVersionStatus.model_validate({k: v for k, v in status.items() if k != "kopf"})
    new = old.model_copy(deep=True)
    policy = kube.get_policy(namespace, mv.policy)
    if policy is None:
        logger.info("policy %s is gone; garbage collection will remove this version", mv.policy)
        return {}
    pspec = RetrainPolicySpec.model_validate(policy["spec"])
    pstatus = policy.get("status") or {}
    generation = int(body.get("metadata", {}).get("generation") or 1)
    conds = _Conditions([c_.model_dump(by_alias=True, mode="json") for c_ in new.conditions], now, generation)
    labels = (namespace, mv.policy)

    def fail(message: str, *, trained: bool) -> None:
        new.phase = Phase.FAILED
        new.message = message
        new.completion_time = now
        if not trained:
            conds.set("Trained", "False", "TrainingFailed", message)
        else:
            conds.set("Verified", "False", "VerificationJobFailed", message)
        conds.set("Ready", "False", "Failed", message)
        metrics.TRAININGS_FAILED.labels(*labels).inc()
        kopf.warn(body, reason="TrainingFailed" if not trained else "VerificationFailed", message=message)
        logger.warning("version %s failed: %s", mv.version, message)

    if new.phase == Phase.PENDING:
        job = _job_for(mv, pspec, "train", active_version=None)
        kopf.adopt(job, owner=body)
        if pspec.training.workers > 1:
            svc = build_rendezvous_service(mv.policy, pspec, mv.version)
            kopf.adopt(svc, owner=body)
            kube.create_service(namespace, svc)
        created = kube.create_job(namespace, job)
        new.phase = Phase.TRAINING
        new.training_job = job["metadata"]["name"]
        new.start_time = new.start_time or now
        new.message = f"training Job {new.training_job} {'created' if created else 'found'}"
        new.progress.summary = "starting"
        conds.set("Trained", "False", "Training", new.message)
        conds.set("Ready", "False", "Training", new.message)
        kopf.info(body, reason="TrainingStarted", message=f"{new.message} (parent {mv.parent_version or 'none'})")
        logger.info("version %s: %s", mv.version, new.message)
    elif new.phase == Phase.TRAINING:
        _training(mv, pspec, pstatus, new, body, namespace, now, logger, fail, conds)
    elif new.phase == Phase.VERIFYING:
        _verifying(mv, pspec, pstatus, new, body, namespace, now, logger, fail, conds)

    new.observed_generation = generation
    out = new.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
    out["conditions"] = conds.items
    before = old.model_dump(by_alias=True, mode="json", exclude={"kopf", "conditions"})
    before["conditions"] = [c_.model_dump(by_alias=True, mode="json") for c_ in old.conditions]
    changed = {k: v for k, v in out.items() if before.get(k) != v}
    if patch is not None:
        for k, v in changed.items():
            patch.status[k] = v
    return changed


def _training(
    mv: ModelVersionSpec,
    pspec: RetrainPolicySpec,
    pstatus: dict[str, Any],
    new: ModelVersionStatus,
    body: Any,
    namespace: str,
    now: datetime,
    logger: Any,
    fail: Any,
    conds: _Conditions,
) -> None:
    assert new.training_job
    job = kube.get_job(namespace, new.training_job)
    if job is None:
        fail(f"training Job {new.training_job} was deleted before it finished", trained=False)
        return
    outcome, why = job_outcome(job)
    store = store_for(namespace, pspec)
    if outcome == "Running":
        _progress(store, mv, new)
        if _queued(job, namespace, new, body, conds, logger, "Training"):
            new.progress.summary = f"queued ({new.progress.summary})" if new.progress.epoch else "queued"
        return
    if outcome == "Failed":
        term = kube.job_termination_message(namespace, new.training_job)
        fail(
            f"training Job {new.training_job} failed: {why}" + (f"; trainer said: {term}" if term else ""),
            trained=False,
        )
        return
    try:
        _, digest = artifactstore.read_manifest(store, mv.model, mv.version)
    except ArtifactError as e:
        fail(f"training Job {new.training_job} completed but left no valid version: {e}", trained=False)
        return
    if (problem := verifier_credentials_problem(namespace, pspec)) is not None:
        # Trained, but not verifiable yet: wait here (retried every pass) rather than start a Job that cannot run.
        message = f"trained ({digest[:19]}…), verification waits: {problem}"
        if new.message != message:
            kopf.warn(body, reason="VerifierCredentialsInvalid", message=message)
            logger.warning("version %s: %s", mv.version, message)
        new.message = message
        conds.set("Verified", "False", "VerifierCredentialsInvalid", problem)
        conds.set("Ready", "False", "VerifierCredentialsInvalid", message)
        return
    _progress(store, mv, new)
    metrics.TRAININGS_SUCCEEDED.labels(namespace, mv.policy).inc()
    if new.start_time:
        metrics.TRAINING_DURATION.labels(namespace, mv.policy).observe((now - new.start_time).total_seconds())
    new.artifact = ArtifactRef(uri=artifact_uri(pspec.storage.bucket, mv.model, mv.version), manifest_digest=digest)
    new.training_completion_time = now
    active = pstatus.get("activeVersion")
    vjob = _job_for(mv, pspec, "verify", active_version=active)
    kopf.adopt(vjob, owner=body)
    kube.create_job(namespace, vjob)
    new.verification_job = vjob["metadata"]["name"]
    new.phase = Phase.VERIFYING
    new.message = (
        f"trained ({digest[:19]}…); verification Job {new.verification_job} against {active or 'no active version'}"
    )
    conds.set("Trained", "True", "TrainingSucceeded", f"manifest {digest}")
    conds.set("Ready", "False", "Verifying", new.message)
    kopf.info(body, reason="Trained", message=new.message)
    logger.info("version %s: %s", mv.version, new.message)


def _queued(
    job: dict[str, Any], namespace: str, new: ModelVersionStatus, body: Any, conds: _Conditions, logger: Any, doing: str
) -> bool:
    """Condition Queued from the Job's Kueue Workload (one Event per change); True while the Job waits.

    A preempted Job is suspended, not failed: it stays in this phase and resumes from its checkpoint.
    """
    if queue_name(job) is None:
        return False
    state = queue_state(job, kube.job_workloads(namespace, job))
    assert state is not None
    previous = next((x for x in conds.items if x.get("type") == "Queued"), None)
    event = queue_event(previous.get("reason") if previous else None, state)
    conds.set("Queued", "True" if state.queued else "False", state.reason, state.message)
    if event is not None:
        reason, kind = event
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=state.message)
        logger.info("version %s: %s", body.get("spec", {}).get("version", ""), state.message)
    ready = next((x for x in conds.items if x.get("type") == "Ready"), {})
    if state.queued:
        new.message = state.message
        conds.set("Ready", "False", "Queued", state.message)
    elif ready.get("reason") == "Queued":
        new.message = f"{job['metadata']['name']}: {state.message}"
        conds.set("Ready", "False", doing, new.message)
    return state.queued


def _job_for(mv: ModelVersionSpec, pspec: RetrainPolicySpec, verb: Verb, active_version: str | None) -> dict[str, Any]:
    """The training or verification Job of ``mv``: both read the same feedback bound and hyperparameters."""
    return build_job(
        policy=mv.policy,
        spec=pspec,
        version=mv.version,
        verb=verb,
        parent_version=mv.parent_version,
        active_version=active_version,
        feedback_through=mv.feedback_snapshot.through_key,
        hyperparameters=_hyperparameters(mv),
    )


def _hyperparameters(mv: ModelVersionSpec) -> Hyperparameters | None:
    """A retry trains with the adjusted hyperparameters its spec records; a first attempt with the policy's."""
    if mv.retry_of is None:
        return None
    return Hyperparameters.model_validate(mv.training_parameters)


def _job_env(job: dict[str, Any], name: str) -> str | None:
    for ctr in job["spec"]["template"]["spec"]["containers"]:
        for e in ctr.get("env") or []:
            if e.get("name") == name:
                value: str | None = e.get("value")
                return value
    return None


def _progress(store: ObjectStore, mv: ModelVersionSpec, new: ModelVersionStatus) -> None:
    try:
        p = Progress.model_validate_json(store.get_bytes(version_key(mv.model, mv.version, PROGRESS_FILE)))
    except (NotFound, ValidationError):
        return
    new.progress.epoch = p.epoch
    new.progress.epochs = p.epochs
    new.progress.loss = p.loss
    new.progress.validation_accuracy = p.validation_accuracy
    new.progress.summary = f"epoch {p.epoch}/{p.epochs}"


def _verifying(
    mv: ModelVersionSpec,
    pspec: RetrainPolicySpec,
    pstatus: dict[str, Any],
    new: ModelVersionStatus,
    body: Any,
    namespace: str,
    now: datetime,
    logger: Any,
    fail: Any,
    conds: _Conditions,
) -> None:
    assert new.verification_job and new.artifact
    job = kube.get_job(namespace, new.verification_job)
    if job is None:
        fail(f"verification Job {new.verification_job} was deleted before it finished", trained=True)
        return
    outcome, why = job_outcome(job)
    if outcome == "Running":
        _queued(job, namespace, new, body, conds, logger, "Verifying")
        return
    if outcome == "Failed":
        term = kube.job_termination_message(namespace, new.verification_job)
        fail(
            f"verification Job {new.verification_job} failed: {why}" + (f"; verifier said: {term}" if term else ""),
            trained=True,
        )
        return
    store = store_for(namespace, pspec)
    where = f"s3://{pspec.storage.bucket}/{version_key(mv.model, mv.version, VERIFICATION_FILE)}"
    try:
        raw = store.get_bytes(version_key(mv.model, mv.version, VERIFICATION_FILE))
        v = Verification.model_validate_json(raw)
    except NotFound:
        fail(f"verification Job {new.verification_job} completed but wrote no {where}", trained=True)
        return
    except ValidationError as e:
        fail(f"{where} is not a valid verification record: {e.errors()[0]['msg']}", trained=True)
        return
    if v.manifest_digest != new.artifact.manifest_digest:
        fail(
            f"{where} verified manifest {v.manifest_digest} but this version's manifest is "
            f"{new.artifact.manifest_digest}; the artifacts changed after training",
            trained=True,
        )
        return
    # The version to beat is the one the verification Job was told about, not whatever is active now.
    results = evaluate_gates(pspec.verification.gates, v, _job_env(job, c.ENV_ACTIVE_VERSION) or None)
    new.gates = results
    m = new.metrics
    m.validation_accuracy = v.validation_accuracy
    m.holdout_accuracy = v.holdout_accuracy
    m.baseline_holdout_accuracy = v.baseline_holdout_accuracy
    m.macro_f1 = v.macro_f1
    m.per_class_accuracy = dict(v.per_class_accuracy)
    m.per_class_precision = dict(v.per_class_precision)
    m.per_class_recall = dict(v.per_class_recall)
    m.latency_p95_ms = v.latency_p95_ms
    m.peak_memory_mi_b = v.peak_memory_mib
    m.throughput_rps = v.throughput_rps
    for r in results:
        metrics.GATE_RESULTS.labels(namespace, mv.policy, r.name, "pass" if r.passed else "fail").inc()
    summary = failing_summary(results)
    new.completion_time = now
    if all(r.passed for r in results):
        if not _sign(mv, pspec, new, store, raw, body, logger, conds):
            return
        new.phase = Phase.VERIFIED
        new.message = f"all {len(results)} gates passed"
        conds.set("Verified", "True", "GatesPassed", new.message)
        conds.set("Ready", "True", "Verified", new.message)
        metrics.VERIFICATIONS.labels(namespace, mv.policy, "verified").inc()
        kopf.info(body, reason="Verified", message=new.message)
    else:
        new.phase = Phase.REJECTED
        new.message = f"rejected: {summary}"
        conds.set("Verified", "False", "GatesFailed", summary)
        conds.set("Ready", "False", "Rejected", new.message)
        metrics.VERIFICATIONS.labels(namespace, mv.policy, "rejected").inc()
        kopf.warn(body, reason="VerificationFailed", message=new.message)
    logger.info("version %s: %s", mv.version, new.message)


def _sign(
    mv: ModelVersionSpec,
    pspec: RetrainPolicySpec,
    new: ModelVersionStatus,
    store: ObjectStore,
    verification: bytes,
    body: Any,
    logger: Any,
    conds: _Conditions,
) -> bool:
    """Sign a version that passed its gates; False while a required signature cannot be made (stays Verifying).

    Signed here, before the phase turns Verified, so promotion (which only takes Verified versions)
    waits for the signature without a separate phase.
    """
    assert new.artifact
    required = pspec.serving.signature is not None
    key = os.environ.get(ENV_SIGNING_KEY, "")
    decision = decide_signing(required, bool(key))
    if decision.action == SignAction.SIGN:
        try:
            new.artifact.signature_digest = signing.sign_version(
                store, Path(key), mv.model, mv.version, new.artifact.manifest_digest, verification
            )
        except signing.SigningKeyError as e:
            decision = decide_signing(required, True, str(e))
        else:
            conds.set("Signed", "True", decision.reason, f"model.sig {new.artifact.signature_digest}")
            kopf.info(body, reason="Signed", message=f"signed {mv.version}: model.sig {new.artifact.signature_digest}")
            return True
    if decision.reason == "NotRequired":
        return True  # signing not set up at all: no condition, as before signing existed
    previous = next((x for x in conds.items if x.get("type") == "Signed"), None)
    conds.set("Signed", "False", decision.reason, decision.message)
    if previous is None or previous.get("reason") != decision.reason:
        kopf.warn(body, reason=decision.reason, message=decision.message)
        logger.warning("version %s: %s", mv.version, decision.message)
    if decision.action == SignAction.SKIP:
        return True
    new.message = decision.message
    conds.set("Ready", "False", decision.reason, decision.message)
    return False
