"""When a RetrainPolicy is reconciled: one daemon per policy, woken by watch events.

The daemon is the only code that runs :func:`reconcile_policy` for its policy, so two passes for
one policy never overlap (kopf runs one daemon per object; the watch handlers below only wake
it). It reacts at once to what can change the decision: any event of the policy (annotations
such as ``rollback-to`` and ``retrain-now``, spec changes) or of one of its ModelVersions
(phase changes). Between events it ticks: every ``MODELLOOP_POLICY_INTERVAL`` seconds while a
rollout is in progress (the serving pods are not watched), otherwise at the policy's
``triggers.checkIntervalSeconds`` (capped by ``MODELLOOP_POLICY_IDLE_INTERVAL``), when it peeks
at the bucket for new feedback.

A tick asks :func:`modelloop.decide.wake.full_pass_reason` first, with the watched policy body,
the watched ModelVersion phases and the last pass's plan (``Plan.wake``: when the clock alone
changes one of its decisions): an idle policy costs no API request at all.
A full pass reads the policy fresh from the API server (the watched copy may lag behind the
daemon's own last write), and so stays level-based and idempotent. A full pass at least every
``MODELLOOP_POLICY_RESYNC`` seconds is the safety net for anything not watched.

The same watch caches feed the operator's state gauges (:func:`state_snapshot`, read by
:class:`modelloop.metrics.StateCollector` at every scrape): right after a start they hold what
the API server holds, before any pass has run.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import time
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import kopf
from pydantic import ValidationError

from modelloop import metrics
from modelloop.api import constants as c
from modelloop.api.artifacts import feedback_prefix
from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus
from modelloop.clients import kube
from modelloop.clients.objectstore import check_resolvable
from modelloop.decide.durations import parse_duration
from modelloop.decide.errors import ErrorVerdict, classify, unusable_spec
from modelloop.decide.feedback import CountingState, ListedObject, listing_start, to_process
from modelloop.decide.policyplan import Wake
from modelloop.decide.versions import version_phase
from modelloop.decide.wake import Feedback, full_pass_reason

from .clock import utc_now
from .failures import failure_of, report_failure
from .retrainpolicy import RESOLVE_TIMEOUT, phases_of, plan_and_apply
from .stores import cached_store_for

BUSY_INTERVAL = float(os.environ.get("MODELLOOP_POLICY_INTERVAL", "2"))
IDLE_INTERVAL = float(os.environ.get("MODELLOOP_POLICY_IDLE_INTERVAL", "60"))
RESYNC = float(os.environ.get("MODELLOOP_POLICY_RESYNC", "600"))
MAX_BACKOFF = 60.0

PolicyKey = tuple[str, str]


class WatchedVersion(NamedTuple):
    version: str
    phase: Phase
    digest: str | None


class WatchedPolicy(NamedTuple):
    model: str
    status: dict[str, Any]
    """Only the fields the state gauges read (metrics.STATUS_FIELDS), copied from the event."""


_wakers: dict[PolicyKey, asyncio.Event] = {}
# (namespace, policy) -> ModelVersion name -> its version, phase and digest, from the watch. Not a
# kopf index: kopf holds every handler back until its indexes are pre-populated, in time that
# grows faster than the square of the object count (minutes for 4,000 ModelVersions).
_versions: dict[PolicyKey, dict[str, WatchedVersion]] = {}
_policies: dict[PolicyKey, WatchedPolicy] = {}
_loops: dict[PolicyKey, PolicyLoop] = {}


def _wake(key: PolicyKey) -> None:
    event = _wakers.get(key)
    if event is not None:
        event.set()


@kopf.on.event(c.GROUP, c.VERSION, c.MODELVERSION_PLURAL)
async def modelversion_changed(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    name: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> None:
    """Keeps ``_versions`` current and wakes the version's policy (a phase change may be its cue)."""
    policy, version = spec.get("policy"), spec.get("version")
    if not namespace or not name or not policy or not version:
        return
    key = (namespace, policy)
    if event.get("type") == "DELETED":
        _versions.get(key, {}).pop(name, None)
    else:
        digest = (status.get("artifact") or {}).get("manifestDigest")
        _versions.setdefault(key, {})[name] = WatchedVersion(version, version_phase(body), digest)
    _wake(key)


@kopf.on.event(c.GROUP, c.VERSION, c.RETRAINPOLICY_PLURAL)
async def retrainpolicy_changed(
    event: kopf.RawEvent, namespace: str | None, name: str | None, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> None:
    """Keeps ``_policies`` current (for the state gauges) and wakes the policy's daemon."""
    if not namespace or not name:
        return
    key = (namespace, name)
    if event.get("type") == "DELETED":
        _policies.pop(key, None)
    else:
        picked = {k: status[k] for k in metrics.STATUS_FIELDS if status.get(k) is not None}
        _policies[key] = WatchedPolicy(str(spec.get("model") or ""), copy.deepcopy(picked))
    _wake(key)


def state_snapshot() -> list[metrics.PolicyState]:
    """Every watched policy with its versions, for a scrape (called on the metrics server's thread).

    The status is this replica's own last write where its daemon has one (it is the status's only
    writer, and the watch may deliver that write late), else the watched one. The dicts are
    copied with ``list()`` (atomic under the GIL) and never mutated in place, only replaced.
    """
    out = []
    for key, watched in list(_policies.items()):
        loop = _loops.get(key)
        written = loop.written if loop is not None else None
        status = written if written is not None else watched.status
        versions = tuple(
            metrics.VersionState(v.version, v.phase.value, v.digest) for v in list(_versions.get(key, {}).values())
        )
        out.append(metrics.PolicyState(key[0], key[1], watched.model, status, versions))
    return out


metrics.register_state_source(state_snapshot)


@kopf.daemon(c.GROUP, c.VERSION, c.RETRAINPOLICY_PLURAL, cancellation_timeout=30)
async def retrainpolicy_daemon(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    assert namespace is not None, "RetrainPolicy is namespaced"
    key = (namespace, name)
    wake = asyncio.Event()
    _wakers[key] = wake
    loop = PolicyLoop(namespace, name, logger)
    _loops[key] = loop
    try:
        while not stopped:
            wake.clear()  # before the step: an event during the step wakes the next one at once
            snapshot = copy.deepcopy(dict(body))
            phases = {v.version: v.phase for v in _versions.get(key, {}).values()}
            delay = await asyncio.to_thread(loop.step, snapshot, phases)
            await _sleep(wake, stopped, delay)
    finally:
        if _wakers.get(key) is wake:
            del _wakers[key]
        if _loops.get(key) is loop:
            del _loops[key]


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
    _, pending = await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


class PolicyLoop:
    """One policy's memory between ticks; lost on restart, which only costs one full pass."""

    def __init__(self, namespace: str, name: str, logger: Any) -> None:
        self.namespace, self.name, self.logger = namespace, name, logger
        self.phases_at_last_pass: dict[str, Phase] | None = None
        self.last_pass = time.monotonic()
        self.last_peek: datetime | None = None
        self.failures = 0
        self.written: dict[str, Any] | None = None
        """The status as this daemon's last pass left it (it is the only writer of the status)."""
        self.written_generation = 0
        self.wake: Wake | None = None
        """The last pass's plan: when the clock alone changes one of its decisions."""
        self.retrain_seen: str | None = None
        """The retrain-now value the last pass saw (acted on, or held back by the budget until ``wake``)."""
        # Spread the safety-net passes of many policies started together.
        self.resync = RESYNC * random.uniform(0.9, 1.1)

    def step(self, body: dict[str, Any], phases: dict[str, Phase]) -> float:
        """A tick: a full pass if one is due; returns the seconds until the next tick."""
        now = utc_now()
        meta = body.get("metadata") or {}
        try:
            spec: RetrainPolicySpec | None = RetrainPolicySpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        if spec is not None and unusable_spec(spec) is not None:
            spec = None  # the full pass reports it; nothing can be decided from it
        live = _status_of(body)
        caught_up = self.written is None or live == self.written
        if not caught_up:
            # The watch has not delivered our own last write yet (it lags minutes behind while
            # thousands of objects are listed at a start), or the API server normalised it.
            # Either way the status is what we wrote: this daemon is its only writer.
            live = dict(self.written or {})
        status = RetrainPolicyStatus.model_validate(live)
        feedback = self._peek(spec, status, now) if self.phases_at_last_pass is not None else Feedback.UNCHECKED
        reason = full_pass_reason(
            status,
            max(int(meta.get("generation") or 1), self.written_generation),
            meta.get("annotations") or {},
            phases,
            self.phases_at_last_pass,
            self.retrain_seen,
            feedback,
            self.wake,
            time.monotonic() - self.last_pass,
            self.resync,
            now,
            c.ANNOTATION_ROLLBACK_TO,
            c.ANNOTATION_RETRAIN_NOW,
        )
        if reason is None:
            return self._interval(spec, status, now)
        self.logger.debug("full pass: %s", reason)
        try:
            status = self._full_pass(body if caught_up else None) or status
        except Exception as e:  # noqa: BLE001 - the daemon must outlive any one failed pass
            self.failures += 1
            host = spec.storage.endpoint.rsplit(":", 1)[0] if spec is not None else ""
            verdict = classify(failure_of(e, storage_host=host), self.failures, BUSY_INTERVAL * 2, MAX_BACKOFF)
            metrics.RECONCILE_ERRORS.labels(self.namespace, self.name, "RetrainPolicy", type(e).__name__).inc()
            self.logger.error("reconcile pass (%s) failed: %s", reason, verdict.message)
            self._report(body, meta, verdict, now)
            return verdict.retry_after if verdict.retry_after is not None else self.resync
        self.failures = 0
        return self._interval(spec, status, now)

    def _report(self, body: dict[str, Any], meta: dict[str, Any], verdict: ErrorVerdict, now: datetime) -> None:
        """A failed pass as ``Ready=False`` with its reason (and an Event when the reason is new).

        Written here because this daemon is the status's only writer; the next successful pass sets
        Ready from scratch. When the API server itself is what failed, this write fails too: logged.
        """
        status = dict(self.written) if self.written is not None else _status_of(body)
        conditions = list(status.get("conditions") or [])
        generation = int(meta.get("generation") or 1)
        reported = report_failure(
            kopf.Body(cast(kopf.RawBody, body)), conditions, "Ready", verdict, now, generation, self.logger
        )
        if reported == conditions:
            return
        try:
            kube.custom().patch_namespaced_custom_object_status(
                c.GROUP,
                c.VERSION,
                self.namespace,
                c.RETRAINPOLICY_PLURAL,
                self.name,
                {"status": {"conditions": reported}},
            )
        except Exception as e:  # noqa: BLE001 - reporting must not hide the failure it reports
            self.logger.error("could not write the failure to the policy's status: %s: %s", type(e).__name__, e)
            return
        self.written = {**status, "conditions": reported}

    def _full_pass(self, current: dict[str, Any] | None) -> RetrainPolicyStatus | None:
        """Reconcile and write; ``current`` is the watched body when it is known to be up to date."""
        fresh = current if current is not None else kube.get_policy(self.namespace, self.name)
        if fresh is None:
            return None  # deleted; kopf stops this daemon
        listed = kube.list_modelversions(self.namespace, self.name)
        decided = plan_and_apply(
            kopf.Body(cast(kopf.RawBody, fresh)), self.namespace, self.name, self.logger, utc_now(), listed
        )
        changed = decided.status
        if changed:
            kube.custom().patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, self.namespace, c.RETRAINPOLICY_PLURAL, self.name, {"status": changed}
            )
        self.phases_at_last_pass = phases_of(listed)
        self.wake = decided.wake
        self.retrain_seen = ((fresh.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_RETRAIN_NOW)
        self.last_pass = time.monotonic()
        merged = {k: v for k, v in {**_status_of(fresh), **changed}.items() if v is not None}
        self.written = merged
        self.written_generation = int((fresh.get("metadata") or {}).get("generation") or 1)
        return RetrainPolicyStatus.model_validate(merged)

    def _peek(self, spec: RetrainPolicySpec | None, status: RetrainPolicyStatus, now: datetime) -> Feedback:
        """Whether the bucket holds feedback after the cursor; at most once per check interval."""
        if spec is None:
            return Feedback.UNCHECKED
        every = timedelta(seconds=spec.triggers.check_interval_seconds)
        last = max((t for t in (self.last_peek, status.feedback.last_counted_at) if t is not None), default=None)
        if last is not None and now - last < every:
            return Feedback.UNCHECKED
        self.last_peek = now
        store = cached_store_for(self.namespace, spec)
        if store is None:
            return Feedback.UNREADABLE  # no client yet: the full pass builds one (reading the Secret)
        fb = status.feedback
        state = CountingState(fb.cursor, fb.seen_through, frozenset(fb.recent_keys))
        start = listing_start(spec.model, state, parse_duration(spec.triggers.feedback.late_arrival_window))
        try:
            check_resolvable(spec.storage.endpoint, RESOLVE_TIMEOUT)
            listing = [ListedObject(*o) for o in store.list_objects(feedback_prefix(spec.model), start)]
        except Exception:  # noqa: BLE001 - the full pass reads again and reports the failure as a condition
            return Feedback.UNREADABLE
        return Feedback.NEW if to_process(listing, state) else Feedback.NONE

    def _interval(self, spec: RetrainPolicySpec | None, status: RetrainPolicyStatus, now: datetime) -> float:
        if status.desired is not None and status.desired.version != status.active_version:
            return BUSY_INTERVAL
        check = float(spec.triggers.check_interval_seconds) if spec is not None else IDLE_INTERVAL
        interval = max(min(check, IDLE_INTERVAL, self.resync), BUSY_INTERVAL)
        if self.wake is not None:  # wake on time for the plan's next clock-driven decision
            interval = min(interval, max((self.wake.at - now).total_seconds(), 0.0) + 0.05)
        return interval


def _status_of(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (body.get("status") or {}).items() if k != "kopf" and v is not None}
