"""RetrainPolicy reconcile as gather → plan → apply.

One pass, run by the policy's daemon (``policydaemon``) when an event or a due check asks for
it: :func:`gather` reads what the pass decides from (the policy's ModelVersions, the feedback in
the bucket when counting is due, the serving pods during a rollout) into one immutable
:class:`~modelloop.decide.policyplan.PolicySnapshot`; :func:`~modelloop.decide.policyplan.plan`
decides everything from it without I/O; :func:`apply` creates and deletes ModelVersions, posts
the Events, logs and counts, and hands back the changed status fields, which the daemon writes in
one patch (none when nothing changed). Everything the operator remembers is in status, so a
restarted operator continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from modelloop import metrics
from modelloop.api import constants as c
from modelloop.api.artifacts import feedback_prefix
from modelloop.api.retrainpolicy import QuarantinedObject, RetrainPolicySpec, RetrainPolicyStatus
from modelloop.clients import kube
from modelloop.clients.objectstore import NotFound, ObjectStore, check_resolvable
from modelloop.decide.errors import InvalidSpec, Stage
from modelloop.decide.feedback import ListedObject, quarantine_reason, to_process
from modelloop.decide.policyplan import (
    CreateVersion,
    DeleteVersion,
    FeedbackRead,
    MarkVersion,
    Plan,
    PolicySnapshot,
    ReadBatch,
    ServingView,
    StorageRead,
    count_feedback,
    counting_due,
    counting_state,
    parse_spec,
    phases_of,
    plan,
    recovered_status,
)
from modelloop.decide.rollout import PodView

from .failures import failure_of
from .stores import store_for

__all__ = ["RESOLVE_TIMEOUT", "apply", "gather", "phases_of", "plan_and_apply", "reconcile_policy"]

RESOLVE_TIMEOUT = 5.0
"""Seconds the storage endpoint's host may take to resolve before the pass reports it unreachable."""


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
    return plan_and_apply(body, namespace, name, logger, now, modelversions).status


def plan_and_apply(
    body: kopf.Body,
    namespace: str,
    name: str,
    logger: Any,
    now: datetime,
    modelversions: list[dict[str, Any]] | None = None,
) -> Plan:
    """Gather, plan, apply; the plan (its ``status`` for the caller's one patch, its ``wake`` for the daemon)."""
    snap, store = gather(body, namespace, name, now, modelversions)
    decided = plan(snap, now)
    if decided.needs_serving:  # a rollout starts in this pass: read its pods, decide again (pure, so the same)
        snap = replace(snap, serving=gather_serving(namespace, parse_spec(body["spec"])))
        decided = plan(snap, now)
    apply(decided, body, namespace, store, logger)
    return decided


def gather(
    body: Mapping[str, Any],
    namespace: str,
    name: str,
    now: datetime,
    modelversions: list[dict[str, Any]] | None = None,
) -> tuple[PolicySnapshot, ObjectStore | None]:
    """The snapshot one pass decides from, and the store client (``None`` when unreadable) for :func:`apply`.

    The serving pods are read only when the policy is already rolling out; a pass that starts a
    rollout asks for them (``Plan.needs_serving``), so an idle policy's pass reads no pods.
    """
    try:
        spec = parse_spec(body["spec"])
    except (ValidationError, InvalidSpec):
        return PolicySnapshot(namespace, name, body, (), StorageRead()), None  # the plan reports it
    listed = modelversions if modelversions is not None else kube.list_modelversions(namespace, name)
    raw_status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    status, _ = recovered_status(RetrainPolicyStatus.model_validate(raw_status), spec, listed)
    storage, store = _read_storage(namespace, spec, status, now)
    serving = None
    if status.desired is not None and status.desired.version != status.active_version:
        serving = gather_serving(namespace, spec)
    return PolicySnapshot(namespace, name, body, tuple(listed), storage, serving), store


def gather_serving(namespace: str, spec: RetrainPolicySpec) -> ServingView:
    """The serving Deployment's ``spec.replicas`` and pods (a missing one counts as one replica to wait for)."""
    if not spec.serving.deployment:
        return ServingView(None)
    found = kube.deployment_serving(namespace, spec.serving.deployment)
    if found is None:
        return ServingView(1)
    replicas, raw = found
    return ServingView(replicas, tuple(PodView(n, d, t) for n, d, t in raw))


def _read_storage(
    namespace: str, spec: RetrainPolicySpec, status: RetrainPolicyStatus, now: datetime
) -> tuple[StorageRead, ObjectStore | None]:
    """The bucket's reachability, and its uncounted feedback when counting is due.

    A read that fails part way keeps the batches read before the failure: the plan counts them.
    """
    stage = Stage.CREDENTIALS
    read: FeedbackRead | None = None
    try:
        store = store_for(namespace, spec)
        stage = Stage.STORAGE
        check_resolvable(spec.storage.endpoint, RESOLVE_TIMEOUT)
        if counting_due(spec, status, now):
            read, failed = read_feedback(store, spec, status)
            if failed is not None:
                raise failed
        return StorageRead(feedback=read), store
    except Exception as e:  # noqa: BLE001 - any storage failure must become a condition and an Event, not a crash
        creds = spec.storage.trainer_credentials.secret_name
        subject = (
            f"Secret {namespace}/{creds}"
            if stage is Stage.CREDENTIALS
            else f"s3://{spec.storage.bucket}/{feedback_prefix(spec.model)} at {spec.storage.endpoint}"
        )
        return StorageRead(failure_of(e, stage, subject, endpoint=spec.storage.endpoint), read), None


def read_feedback(
    store: ObjectStore, spec: RetrainPolicySpec, status: RetrainPolicyStatus
) -> tuple[FeedbackRead, Exception | None]:
    """Lists the feedback after the counting state and downloads the batches to count, in order.

    An object too large to be a batch is not downloaded (the plan quarantines it from its listed
    size); one deleted since the listing reads as ``None``. A failed download ends the read: the
    batches before it and the failure are returned (a failed listing raises).
    """
    state, prefix, start = counting_state(spec, status)
    listing = tuple(ListedObject(key, size, modified) for key, size, modified in store.list_objects(prefix, start))
    batches: list[ReadBatch] = []
    for obj in to_process(listing, state):
        content: bytes | None = None
        if quarantine_reason(obj) is None:
            try:
                content = store.get_bytes(obj.key)
            except NotFound:
                content = None  # deleted since the listing: nothing to count
            except Exception as e:  # noqa: BLE001 - the plan counts what was read, the caller reports the failure
                return FeedbackRead(listing, tuple(batches)), e
        batches.append(ReadBatch(obj, content))
    return FeedbackRead(listing, tuple(batches)), None


def _count_feedback(
    store: ObjectStore,
    spec: RetrainPolicySpec,
    new: RetrainPolicyStatus,
    now: datetime,
    quarantined: Callable[[QuarantinedObject], None],
) -> None:
    """Reads and counts in one call (what a pass does, without the rest of the pass): for tests and benches."""
    read, failed = read_feedback(store, spec, new)
    count_feedback(read, spec, new, now, quarantined)
    if failed is not None:
        raise failed


def apply(decided: Plan, body: Mapping[str, Any], namespace: str, store: ObjectStore | None, logger: Any) -> None:
    """Performs the plan's actions in order, then posts its Events, log lines and metric increments.

    The status is not written here: the daemon, its only writer, writes ``decided.status`` in one patch.
    An action that fails raises before any status is written, so the next pass decides again.
    """
    kbody = kopf.Body(body) if not isinstance(body, kopf.Body) else body  # type: ignore[arg-type]
    for action in decided.actions:
        if isinstance(action, CreateVersion):
            _create_version(kbody, namespace, action)
        elif isinstance(action, MarkVersion):
            kube.annotate_modelversion(namespace, action.name, {c.ANNOTATION_PHASE_DECISION: action.decision.encode()})
        elif isinstance(action, DeleteVersion):
            assert store is not None, "retention prunes only when the bucket is readable"
            kube.delete_modelversion(namespace, action.name)
            store.remove_prefix(action.prefix)
    for event in decided.events:
        (kopf.warn if event.type == "Warning" else kopf.info)(kbody, reason=event.reason, message=event.message)
    for line in decided.logs:
        getattr(logger, line.level)(line.message)
    for m in decided.metrics:
        metric = getattr(metrics, m.metric).labels(*m.labels)
        if m.observe is not None:
            metric.observe(m.observe)
        else:
            metric.inc()


def _create_version(body: kopf.Body, namespace: str, action: CreateVersion) -> None:
    mv: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.MODELVERSION_KIND,
        "metadata": {"name": action.name, "labels": dict(action.labels)},
        "spec": dict(action.spec),
    }
    kopf.adopt(mv, owner=body, strict=True)
    mv["metadata"]["labels"] = {
        k: v for k, v in mv["metadata"]["labels"].items() if k.startswith(c.GROUP) or k == c.LABEL_MANAGED_BY
    }
    if action.annotations:
        mv["metadata"]["annotations"] = dict(action.annotations)
    kube.create_modelversion(namespace, mv)
