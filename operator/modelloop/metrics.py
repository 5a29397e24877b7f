"""Every Prometheus metric the operator exports, defined once (documented in docs/metrics.md).

Two kinds. Counters and histograms count what this process did (trainings started, rollbacks,
reconcile errors) and start at 0 with it. State gauges (the active version, pending feedback, live
accuracy, a version's phase, exhausted retries or budget) are not set by the reconcile: the
:class:`StateCollector` derives them at every scrape from the policies' and ModelVersions' status
as the watch delivered it, so they are right from the first scrape after a restart, and a
series goes away with the status field or the object it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("modelloop.metrics")

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
FEEDBACK_QUARANTINED = Counter(
    "modelloop_feedback_quarantined_total",
    "Feedback objects skipped as malformed or oversized (not counted, not trained on).",
    _P,
)
TRAINING_RETRIES = Counter(
    "modelloop_training_retries_total",
    "Retries started after a failed or rejected training (reason: Failed or Rejected).",
    [*_P, "reason"],
)
CANARY_DECISIONS = Counter(
    "modelloop_canary_decisions_total",
    "Canary stage decisions applied (verdict Step, Promote or Reject, with the reason).",
    [*_P, "verdict", "reason"],
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


# --- state gauges, derived from status at every scrape -------------------------------------------

STATUS_FIELDS = ("activeVersion", "desired", "feedback", "liveAccuracy", "shadow", "canary", "conditions")
"""The RetrainPolicy status fields the state gauges read (all a watch cache needs to keep)."""


@dataclass(frozen=True)
class VersionState:
    """A ModelVersion as the watch last delivered it."""

    version: str
    phase: str
    digest: str | None = None
    """status.artifact.manifestDigest, once training published a manifest."""


@dataclass(frozen=True)
class PolicyState:
    """A RetrainPolicy's status (the API server's, or this replica's own last write) and its versions."""

    namespace: str
    name: str
    model: str
    status: Mapping[str, Any]
    versions: tuple[VersionState, ...] = field(default=())


def _families() -> dict[str, GaugeMetricFamily]:
    p = ["namespace", "policy"]
    fams = [
        GaugeMetricFamily(
            "modelloop_active_version_info",
            "1 for the active version of each policy (status.activeVersion and its manifest digest).",
            labels=[*p, "model", "version", "digest"],
        ),
        GaugeMetricFamily(
            "modelloop_desired_version_info",
            "1 for the version serving pods are told to load (status.desired); differs from the active one mid-rollout.",
            labels=[*p, "model", "version", "digest", "reason"],
        ),
        GaugeMetricFamily(
            "modelloop_feedback_pending_corrections", "Corrections since the last training (status.feedback).", labels=p
        ),
        GaugeMetricFamily(
            "modelloop_feedback_pending_reviews", "Reviews since the last training (status.feedback).", labels=p
        ),
        GaugeMetricFamily(
            "modelloop_live_accuracy",
            "Reviewed accuracy of the active version since its promotion (status.liveAccuracy).",
            labels=[*p, "version"],
        ),
        GaugeMetricFamily(
            "modelloop_canary_percent",
            "Percent of requests the candidate in the canary stage answers (status.canary); 0 once decided.",
            labels=[*p, "version"],
        ),
        GaugeMetricFamily(
            "modelloop_canary_live_accuracy",
            "Reviewed accuracy in the current canary step of each version's own answers (role candidate or active).",
            labels=[*p, "version", "role"],
        ),
        GaugeMetricFamily(
            "modelloop_shadow_reviews",
            "Paired reviews of the candidate scored in the shadow beside the active version (status.shadow), by cell:"
            " both_right, only_active, only_candidate, both_wrong. The decision rests on only_active vs only_candidate.",
            labels=[*p, "version", "active", "cell"],
        ),
        GaugeMetricFamily(
            "modelloop_shadow_live_accuracy",
            "Reviewed accuracy on the same paired requests of the shadow candidate and the active version (role).",
            labels=[*p, "version", "role"],
        ),
        GaugeMetricFamily(
            "modelloop_rollout_stage",
            "1 for the version in a rollout stage now: shadow or canary (condition ShadowStage/CanaryStage True),"
            " promoting or rollingBack (status.desired differs from the active version).",
            labels=[*p, "version", "stage"],
        ),
        GaugeMetricFamily(
            "modelloop_rollout_verdict_info",
            "1 for the last decision of each live-review stage (status.shadow, status.canary): Collect, Step, Promote"
            " or Reject, with its reason.",
            labels=[*p, "stage", "version", "verdict", "reason"],
        ),
        GaugeMetricFamily(
            "modelloop_training_retries_exhausted",
            "1 while the newest version failed or was rejected on its last allowed attempt (condition RetriesExhausted).",
            labels=p,
        ),
        GaugeMetricFamily(
            "modelloop_training_budget_exhausted",
            "1 while a due training waits because triggers.maxTrainingsPerDay trainings started in the last 24 h"
            " (condition Training, reason BudgetExhausted).",
            labels=p,
        ),
        GaugeMetricFamily(
            "modelloop_version_phase",
            "1 for each ModelVersion, labelled with its status.phase; gone once the version is deleted (retention).",
            labels=[*p, "version", "phase"],
        ),
    ]
    return {f.name: f for f in fams}


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _policy_samples(p: PolicyState) -> list[tuple[str, list[str], float]]:
    """(family, label values, value) of one policy; raises on a status it cannot read."""
    st = p.status
    ids = [p.namespace, p.name]
    out: list[tuple[str, list[str], float]] = []
    active = st.get("activeVersion")
    desired = st.get("desired") or {}
    digests = {v.version: v.digest for v in p.versions}
    if active:
        digest = desired.get("manifestDigest") if desired.get("version") == active else digests.get(active)
        if digest:
            out.append(("modelloop_active_version_info", [*ids, p.model, active, digest], 1))
    if desired.get("version") and desired.get("manifestDigest"):
        labels = [*ids, p.model, desired["version"], desired["manifestDigest"], desired.get("reason") or ""]
        out.append(("modelloop_desired_version_info", labels, 1))
    feedback = st.get("feedback") or {}
    out.append(("modelloop_feedback_pending_corrections", ids, float(feedback.get("pendingCorrections") or 0)))
    out.append(("modelloop_feedback_pending_reviews", ids, float(feedback.get("pendingReviews") or 0)))
    live = st.get("liveAccuracy") or {}
    # Measured for the active version only: a version that stopped being active has no series.
    if active and live.get("version") == active and live.get("accuracy") is not None:
        out.append(("modelloop_live_accuracy", [*ids, active], float(live["accuracy"])))
    canary = st.get("canary") or {}
    if canary.get("version"):
        out.append(("modelloop_canary_percent", [*ids, canary["version"]], float(canary.get("percent") or 0)))
        for role, version, reviews, correct in (
            ("candidate", canary["version"], "candidateReviews", "candidateCorrect"),
            ("active", canary.get("activeVersion"), "activeReviews", "activeCorrect"),
        ):
            if version and canary.get(reviews):
                accuracy = float(canary.get(correct) or 0) / float(canary[reviews])
                out.append(("modelloop_canary_live_accuracy", [*ids, version, role], accuracy))
    out.extend(_stage_samples(st, ids, active, desired))
    exhausted = _condition(st, "RetriesExhausted").get("status") == "True"
    out.append(("modelloop_training_retries_exhausted", ids, 1 if exhausted else 0))
    blocked = _condition(st, "Training").get("reason") == "BudgetExhausted"
    out.append(("modelloop_training_budget_exhausted", ids, 1 if blocked else 0))
    for v in sorted(p.versions, key=lambda v: v.version):
        out.append(("modelloop_version_phase", [*ids, v.version, v.phase], 1))
    return out


SHADOW_CELLS = (("both_right", "bothRight"), ("only_active", "onlyActive"),
                ("only_candidate", "onlyCandidate"), ("both_wrong", "bothWrong"))  # fmt: skip


def _stage_samples(
    st: Mapping[str, Any], ids: list[str], active: str | None, desired: Mapping[str, Any]
) -> list[tuple[str, list[str], float]]:
    """The rollout stages' series: the shadow tally, the stage each version is in, each stage's last verdict."""
    out: list[tuple[str, list[str], float]] = []
    shadow = st.get("shadow") or {}
    if shadow.get("version"):
        version, against = shadow["version"], shadow.get("activeVersion") or ""
        cells = {cell: int(shadow.get(field) or 0) for cell, field in SHADOW_CELLS}
        for cell, n in cells.items():
            out.append(("modelloop_shadow_reviews", [*ids, version, against, cell], float(n)))
        n = sum(cells.values())
        if n:
            candidate = (cells["both_right"] + cells["only_candidate"]) / n
            out.append(("modelloop_shadow_live_accuracy", [*ids, version, "candidate"], candidate))
            if against:
                accuracy = (cells["both_right"] + cells["only_active"]) / n
                out.append(("modelloop_shadow_live_accuracy", [*ids, against, "active"], accuracy))
        if shadow.get("verdict"):
            reason = _condition(st, "ShadowStage").get("reason") or ""
            out.append(("modelloop_rollout_verdict_info", [*ids, "shadow", version, shadow["verdict"], reason], 1))
    canary = st.get("canary") or {}
    if canary.get("version") and canary.get("verdict"):
        labels = [*ids, "canary", canary["version"], canary["verdict"], canary.get("reason") or ""]
        out.append(("modelloop_rollout_verdict_info", labels, 1))
    if shadow.get("version") and _condition(st, "ShadowStage").get("status") == "True":
        out.append(("modelloop_rollout_stage", [*ids, shadow["version"], "shadow"], 1))
    if canary.get("version") and _condition(st, "CanaryStage").get("status") == "True":
        out.append(("modelloop_rollout_stage", [*ids, canary["version"], "canary"], 1))
    if desired.get("version") and desired["version"] != active:
        moving = "rollingBack" if desired.get("reason") in ("Rollback", "AutoRollback") else "promoting"
        out.append(("modelloop_rollout_stage", [*ids, desired["version"], moving], 1))
    return out


def state_families(policies: Iterable[PolicyState]) -> list[Metric]:
    """The state gauges of these policies; every family, empty ones included (``describe`` uses them)."""
    fams = _families()
    for p in policies:
        try:
            found = _policy_samples(p)
        except (TypeError, ValueError, AttributeError) as e:
            # A status this version cannot read must cost that policy's series, not the whole scrape.
            log.warning(
                "no state metrics for %s/%s: unreadable status: %s: %s", p.namespace, p.name, type(e).__name__, e
            )
            continue
        for name, labels, value in found:
            fams[name].add_metric(labels, value)
    return list(fams.values())


_acting = False


def set_leader(acting: bool) -> None:
    """Whether this replica acts: ``modelloop_operator_leader``, and whether it exports the state gauges.

    A standby runs no watch, so it would export nothing anyway; during a hand-over the replica
    that stops acting stops exporting at once, so two replicas never both report a policy's state
    (the alert rules aggregate with max/min/unless by namespace and policy, so a scrape that
    overlaps still counts each policy once).
    """
    global _acting
    _acting = acting
    LEADER.set(1 if acting else 0)


class StateCollector(Collector):
    """Yields the state gauges from a snapshot of the watched status, fresh at every scrape."""

    def __init__(self, source: Callable[[], Iterable[PolicyState]]) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(state_families(()))

    def collect(self) -> Iterator[Metric]:
        return iter(state_families(self.source() if _acting else ()))


_collector: StateCollector | None = None


def register_state_source(source: Callable[[], Iterable[PolicyState]]) -> None:
    """Exports the state gauges from ``source`` (the operator's watch caches); a second call replaces it."""
    global _collector
    if _collector is None:
        _collector = StateCollector(source)
        REGISTRY.register(_collector)
    else:
        _collector.source = source
