"""Every Prometheus metric the operator exports, defined once (documented in docs/metrics.md)."""

from __future__ import annotations

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
