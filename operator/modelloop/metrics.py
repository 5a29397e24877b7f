"""Every Prometheus metric the operator exports, defined once (documented in docs/metrics.md)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

_P = ("namespace", "policy")

TRAININGS_STARTED = Counter(
    "modelloop_trainings_started_total", "ModelVersions created (trainings started).", [*_P, "reason"]
)
TRAININGS_SUCCEEDED = Counter(
    "modelloop_trainings_succeeded_total", "Training Jobs that completed with a manifest.", _P
)
TRAININGS_FAILED = Counter("modelloop_trainings_failed_total", "Training or verification Jobs that failed.", _P)
TRAINING_DURATION = Histogram(
    "modelloop_training_duration_seconds",
    "From ModelVersion start to training Job completion.",
    _P,
    buckets=(30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400),
)
GATE_RESULTS = Counter(
    "modelloop_verification_gate_results_total", "Verification gate outcomes.", [*_P, "gate", "result"]
)
VERIFICATIONS = Counter(
    "modelloop_verifications_total", "Verification outcomes (verified / rejected).", [*_P, "result"]
)
PROMOTIONS = Counter("modelloop_promotions_total", "Versions that became active through promotion.", _P)
ROLLBACKS = Counter("modelloop_rollbacks_total", "Rollbacks started (reason manual or auto).", [*_P, "reason"])
ROLLOUT_DURATION = Histogram(
    "modelloop_rollout_duration_seconds",
    "From desired version set to all replicas serving it.",
    _P,
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
)
ACTIVE_VERSION = Gauge(
    "modelloop_active_version_info", "1 for the active version of each policy.", [*_P, "model", "version", "digest"]
)
PENDING_CORRECTIONS = Gauge("modelloop_feedback_pending_corrections", "Corrections since the last training.", _P)
FEEDBACK_QUARANTINED = Counter(
    "modelloop_feedback_quarantined_total",
    "Feedback objects skipped as malformed or oversized (not counted, not trained on).",
    _P,
)
PENDING_REVIEWS = Gauge("modelloop_feedback_pending_reviews", "Reviews since the last training.", _P)
LIVE_ACCURACY = Gauge(
    "modelloop_live_accuracy", "Reviewed accuracy of the active version since its promotion.", [*_P, "version"]
)
TRAINING_RETRIES = Counter(
    "modelloop_training_retries_total",
    "Retries started after a failed or rejected training (reason: Failed or Rejected).",
    [*_P, "reason"],
)
RETRIES_EXHAUSTED = Gauge(
    "modelloop_training_retries_exhausted",
    "1 while the newest version failed or was rejected on its last allowed attempt (spec.retry.maxAttempts).",
    _P,
)
TRAINING_BUDGET_EXHAUSTED = Gauge(
    "modelloop_training_budget_exhausted",
    "1 while a due training waits because triggers.maxTrainingsPerDay trainings started in the last 24 h.",
    _P,
)
RECONCILE_ERRORS = Counter(
    "modelloop_reconcile_errors_total", "Reconcile passes that raised (kind, error type).", [*_P, "kind", "error"]
)
LEADER = Gauge(
    "modelloop_operator_leader",
    "1 while this replica acts (holds the leader-election Lease, or runs --standalone); 0 while it is a standby.",
)
LEADER_TRANSITIONS = Counter(
    "modelloop_operator_leader_transitions_total", "Times this replica acquired the leader-election Lease."
)


@dataclass(frozen=True)
class PolicySeries:
    """The per-version series one policy exports; what a full pass publishes, replacing the last."""

    active: tuple[str, str, str] | None = None
    """(model, version, digest) of the active version."""
    live: tuple[str, float] | None = None
    """(version, accuracy) of the active version's live accuracy, once reviews measured it."""


_published: dict[tuple[str, str], PolicySeries] = {}


def publish_policy(namespace: str, policy: str, series: PolicySeries) -> None:
    """Set a policy's per-version series from its status, removing the ones of retired versions.

    Called by every full pass, so a restarted operator exports the active version again at its
    first pass (the stalled-rollout alert compares every serving pod's digest with it), and a
    version that stops being active leaves no stale live-accuracy series behind.
    """
    key = (namespace, policy)
    old = _published.get(key, PolicySeries())
    if old.active is not None and old.active != series.active:
        ACTIVE_VERSION.remove(namespace, policy, *old.active)
    if old.live is not None and (series.live is None or old.live[0] != series.live[0]):
        LIVE_ACCURACY.remove(namespace, policy, old.live[0])
    if series.active is not None:
        ACTIVE_VERSION.labels(namespace, policy, *series.active).set(1)
    if series.live is not None:
        LIVE_ACCURACY.labels(namespace, policy, series.live[0]).set(series.live[1])
    _published[key] = series


def forget_policy(namespace: str, policy: str) -> None:
    """Remove every per-policy series (the policy is deleted, or this replica stopped acting for it)."""
    publish_policy(namespace, policy, PolicySeries())
    _published.pop((namespace, policy), None)
    for gauge in (PENDING_CORRECTIONS, PENDING_REVIEWS, RETRIES_EXHAUSTED, TRAINING_BUDGET_EXHAUSTED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, policy)
