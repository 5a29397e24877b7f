"""The state gauges are a pure function of status: status dicts in, samples out.

They are what ``modelloop.metrics.StateCollector`` yields at every scrape from the watch caches, so
a restarted operator exports them from what the API server holds, and a series goes away with the
status field or the object it came from (a retired version's live accuracy, a pruned version's
phase, a deleted policy's everything).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from modelloop import metrics
from modelloop.metrics import PolicyState, StateCollector, VersionState, state_families

D1, D2, D3 = ("sha256:" + d * 64 for d in "123")
Sample = tuple[str, tuple[tuple[str, str], ...], float]


def samples(policies: Iterable[PolicyState]) -> set[Sample]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in state_families(policies) for s in f.samples}


def s(name: str, value: float, **labels: str) -> Sample:
    return (name, tuple(sorted({"namespace": "ns", "policy": "p", **labels}.items())), value)


def quiet(corrections: float = 0, reviews: float = 0, retries: float = 0, budget: float = 0) -> set[Sample]:
    """The four per-policy gauges every policy has, whatever its status."""
    return {
        s("modelloop_feedback_pending_corrections", corrections),
        s("modelloop_feedback_pending_reviews", reviews),
        s("modelloop_training_retries_exhausted", retries),
        s("modelloop_training_budget_exhausted", budget),
    }


def policy(status: Mapping[str, Any], *versions: VersionState) -> PolicyState:
    return PolicyState("ns", "p", "digits", status, versions)


DESIRED_V2 = {"version": "v2", "manifestDigest": D2, "reason": "Promotion", "artifactURI": "s3://b/digits/v2/"}
CASES: list[tuple[str, PolicyState, set[Sample]]] = [
    ("a new policy, no status yet", policy({}), quiet()),
    (
        "training v1: its phase, nothing active",
        policy({"feedback": {"pendingCorrections": 7, "pendingReviews": 9}}, VersionState("v1", "Training")),
        quiet(7, 9) | {s("modelloop_version_phase", 1, version="v1", phase="Training")},
    ),
    (
        "after a restart: status alone names the active version; digest from its ModelVersion",
        policy({"activeVersion": "v1"}, VersionState("v1", "Active", D1)),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v1", digest=D1),
            s("modelloop_version_phase", 1, version="v1", phase="Active"),
        },
    ),
    (
        "active without a known digest (its ModelVersion not watched yet): no info series rather than a wrong one",
        policy({"activeVersion": "v1"}),
        quiet(),
    ),
    (
        "mid-rollout: v1 active, v2 desired, each with its own digest",
        policy(
            {"activeVersion": "v1", "desired": DESIRED_V2},
            VersionState("v1", "Active", D1),
            VersionState("v2", "Promoting", D2),
        ),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v1", digest=D1),
            s("modelloop_desired_version_info", 1, model="digits", version="v2", digest=D2, reason="Promotion"),
            s("modelloop_version_phase", 1, version="v1", phase="Active"),
            s("modelloop_version_phase", 1, version="v2", phase="Promoting"),
            s("modelloop_rollout_stage", 1, version="v2", stage="promoting"),
        },
    ),
    (
        "rolling back from v2 to v1: the stage says so",
        policy(
            {
                "activeVersion": "v2",
                "desired": {**DESIRED_V2, "version": "v1", "manifestDigest": D1, "reason": "Rollback"},
            }
        ),
        quiet()
        | {
            s("modelloop_desired_version_info", 1, model="digits", version="v1", digest=D1, reason="Rollback"),
            s("modelloop_rollout_stage", 1, version="v1", stage="rollingBack"),
        },
    ),
    (
        "promoted: the active digest is the desired one's",
        policy({"activeVersion": "v2", "desired": DESIRED_V2}, VersionState("v2", "Active", None)),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v2", digest=D2),
            s("modelloop_desired_version_info", 1, model="digits", version="v2", digest=D2, reason="Promotion"),
            s("modelloop_version_phase", 1, version="v2", phase="Active"),
        },
    ),
    (
        "live accuracy of the active version",
        policy(
            {"activeVersion": "v1", "liveAccuracy": {"version": "v1", "reviews": 10, "correct": 9, "accuracy": 0.9}},
            VersionState("v1", "Active", D1),
        ),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v1", digest=D1),
            s("modelloop_live_accuracy", 0.9, version="v1"),
            s("modelloop_version_phase", 1, version="v1", phase="Active"),
        },
    ),
    (
        "v1 retired, v2 not reviewed yet: no live series for either (v1's is gone, not frozen)",
        policy(
            {"activeVersion": "v2", "liveAccuracy": {"version": "v1", "accuracy": 0.9}},
            VersionState("v1", "Superseded", D1),
            VersionState("v2", "Active", D2),
        ),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v2", digest=D2),
            s("modelloop_version_phase", 1, version="v1", phase="Superseded"),
            s("modelloop_version_phase", 1, version="v2", phase="Active"),
        },
    ),
    (
        "reviews counted but no accuracy yet: no live series",
        policy(
            {"activeVersion": "v1", "liveAccuracy": {"version": "v1", "reviews": 0}}, VersionState("v1", "Active", D1)
        ),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v1", digest=D1),
            s("modelloop_version_phase", 1, version="v1", phase="Active"),
        },
    ),
    (
        "v1 pruned by retention: its phase series is gone with its ModelVersion",
        policy({"activeVersion": "v3"}, VersionState("v2", "Superseded", D2), VersionState("v3", "Active", D3)),
        quiet()
        | {
            s("modelloop_active_version_info", 1, model="digits", version="v3", digest=D3),
            s("modelloop_version_phase", 1, version="v2", phase="Superseded"),
            s("modelloop_version_phase", 1, version="v3", phase="Active"),
        },
    ),
    (
        "retries exhausted (condition True)",
        policy({"conditions": [{"type": "RetriesExhausted", "status": "True", "reason": "RetriesExhausted"}]}),
        quiet(retries=1),
    ),
    (
        "retrying again after exhaustion (condition False)",
        policy({"conditions": [{"type": "RetriesExhausted", "status": "False", "reason": "NewAttempt"}]}),
        quiet(),
    ),
    (
        "budget exhausted: Training=False reason BudgetExhausted",
        policy({"conditions": [{"type": "Training", "status": "False", "reason": "BudgetExhausted"}]}),
        quiet(budget=1),
    ),
    (
        "a canary step: its share, and each version's live accuracy in the step",
        policy(
            {
                "canary": {
                    "version": "v3",
                    "activeVersion": "v2",
                    "percent": 10,
                    "candidateReviews": 4,
                    "candidateCorrect": 3,
                    "activeReviews": 10,
                    "activeCorrect": 9,
                }
            }
        ),
        quiet()
        | {
            s("modelloop_canary_percent", 10, version="v3"),
            s("modelloop_canary_live_accuracy", 0.75, version="v3", role="candidate"),
            s("modelloop_canary_live_accuracy", 0.9, version="v2", role="active"),
        },
    ),
    (
        "a canary step with no reviews yet: no accuracy series",
        policy({"canary": {"version": "v3", "activeVersion": "v2", "percent": 50}}),
        quiet() | {s("modelloop_canary_percent", 50, version="v3")},
    ),
    (
        "v3 in the shadow stage: the paired tally by cell, both accuracies on the same requests, the stage",
        policy(
            {
                "shadow": {
                    "version": "v3",
                    "activeVersion": "v2",
                    "bothRight": 5,
                    "onlyActive": 1,
                    "onlyCandidate": 3,
                    "bothWrong": 1,
                    "verdict": "Collect",
                },
                "conditions": [{"type": "ShadowStage", "status": "True", "reason": "CollectingReviews"}],
            }
        ),
        quiet()
        | {
            s("modelloop_shadow_reviews", 5, version="v3", active="v2", cell="both_right"),
            s("modelloop_shadow_reviews", 1, version="v3", active="v2", cell="only_active"),
            s("modelloop_shadow_reviews", 3, version="v3", active="v2", cell="only_candidate"),
            s("modelloop_shadow_reviews", 1, version="v3", active="v2", cell="both_wrong"),
            s("modelloop_shadow_live_accuracy", 0.8, version="v3", role="candidate"),
            s("modelloop_shadow_live_accuracy", 0.6, version="v2", role="active"),
            s("modelloop_rollout_stage", 1, version="v3", stage="shadow"),
            s(
                "modelloop_rollout_verdict_info",
                1,
                stage="shadow",
                version="v3",
                verdict="Collect",
                reason="CollectingReviews",
            ),
        },
    ),
    (
        "the shadow decided (Reject, ShadowStage False): the tally stays as evidence, no stage",
        policy(
            {
                "shadow": {"version": "v3", "activeVersion": "v2", "onlyActive": 2, "verdict": "Reject"},
                "conditions": [{"type": "ShadowStage", "status": "False", "reason": "Worse"}],
            }
        ),
        quiet()
        | {
            s("modelloop_shadow_reviews", 0, version="v3", active="v2", cell="both_right"),
            s("modelloop_shadow_reviews", 2, version="v3", active="v2", cell="only_active"),
            s("modelloop_shadow_reviews", 0, version="v3", active="v2", cell="only_candidate"),
            s("modelloop_shadow_reviews", 0, version="v3", active="v2", cell="both_wrong"),
            s("modelloop_shadow_live_accuracy", 0.0, version="v3", role="candidate"),
            s("modelloop_shadow_live_accuracy", 1.0, version="v2", role="active"),
            s("modelloop_rollout_verdict_info", 1, stage="shadow", version="v3", verdict="Reject", reason="Worse"),
        },
    ),
    (
        "v3 in the canary stage (CanaryStage True): its share, the stage, the verdict",
        policy(
            {
                "canary": {
                    "version": "v3",
                    "activeVersion": "v2",
                    "percent": 50,
                    "verdict": "Step",
                    "reason": "Better",
                },
                "conditions": [{"type": "CanaryStage", "status": "True", "reason": "Stepped"}],
            }
        ),
        quiet()
        | {
            s("modelloop_canary_percent", 50, version="v3"),
            s("modelloop_rollout_stage", 1, version="v3", stage="canary"),
            s("modelloop_rollout_verdict_info", 1, stage="canary", version="v3", verdict="Step", reason="Better"),
        },
    ),
    (
        "budget freed: Training=True InFlight",
        policy({"conditions": [{"type": "Training", "status": "True", "reason": "InFlight"}]}),
        quiet(),
    ),
]


@pytest.mark.parametrize(("case", "state", "expected"), CASES, ids=[c[0] for c in CASES])
def test_state_gauges_from_status(case: str, state: PolicyState, expected: set[Sample]) -> None:
    assert samples([state]) == expected


def test_policies_are_independent_and_a_deleted_one_leaves_nothing() -> None:
    a = PolicyState("ns", "a", "m", {"activeVersion": "v1"}, (VersionState("v1", "Active", D1),))
    b = PolicyState("ns", "b", "n", {"liveAccuracy": {"version": "v7", "accuracy": 0.5}, "activeVersion": "v7"})
    both, only_b = samples([a, b]), samples([b])
    assert {x for x in both if ("policy", "a") in x[1]} and not {x for x in only_b if ("policy", "a") in x[1]}
    assert {x for x in both if ("policy", "b") in x[1]} == only_b


def test_an_unreadable_status_costs_its_policy_not_the_scrape() -> None:
    bad = PolicyState(
        "ns",
        "bad",
        "m",
        {
            "activeVersion": "v1",
            "desired": {"version": "v1", "manifestDigest": D1},
            "feedback": {"pendingCorrections": "many"},
        },
    )
    good = policy({"activeVersion": "v1"}, VersionState("v1", "Active", D1))
    assert samples([bad, good]) == samples([good])


def test_every_family_is_described_even_when_empty() -> None:
    names = {f.name for f in state_families(())}
    assert "modelloop_active_version_info" in names and "modelloop_live_accuracy" in names
    assert all(not f.samples for f in state_families(()))


def test_the_collector_exports_only_while_this_replica_acts() -> None:
    """A standby (or a leader handing over) exports no state: only one replica reports a policy."""
    state = policy({"activeVersion": "v1"}, VersionState("v1", "Active", D1))
    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: [state]))
    try:
        metrics.set_leader(False)
        assert b"modelloop_active_version_info{" not in generate_latest(registry)
        metrics.set_leader(True)
        text = generate_latest(registry).decode()
        assert (
            f'modelloop_active_version_info{{digest="{D1}",model="digits",namespace="ns",policy="p",version="v1"}} 1.0'
            in text
        )
    finally:
        metrics.set_leader(False)
