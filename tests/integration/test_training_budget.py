"""triggers.maxTrainingsPerDay against the real operator: a flood of triggers trains once and says why not more.

With a budget of 1, the bootstrap v1 spends the day's budget; its failure makes a retry due, then
retrain-now (twice) and a batch of corrections ask again. None of them starts a training: the policy
shows Training=False reason BudgetExhausted with the time the next may start, one Warning Event is
posted for the block, and modelloop_training_budget_exhausted is 1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    POLICY,
    Operator,
    annotate_policy,
    create_fixtures,
    create_policy,
    fail_job,
    get_policy,
    job_exists,
    jobs,
    phase,
    policy_body,
    policy_status,
    versions,
)

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def training_condition(api: client.ApiClient, ns: str) -> dict[str, Any]:
    conds = {x["type"]: x for x in (get_policy(api, ns).get("status") or {}).get("conditions", [])}
    return conds.get("Training") or {}


def budget_events(api: client.ApiClient, ns: str) -> list[client.CoreV1Event]:
    return [e for e in client.CoreV1Api(api).list_namespaced_event(ns).items if e.reason == "BudgetExhausted"]


def test_a_flood_of_triggers_trains_once_per_day_and_reports_the_block(
    control_plane: ControlPlane,
    minio: MinioServer,
    namespace: str,
    bucket: str,
    api: client.ApiClient,
    operator: Operator,
) -> None:
    ns = namespace
    create_fixtures(api, minio, ns)
    body = policy_body(minio, bucket, retry={"maxAttempts": 2})
    body["spec"]["triggers"]["maxTrainingsPerDay"] = 1
    create_policy(api, body, ns)
    wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "the bootstrap training Job", operator.proc)

    # v1 fails: a retry is due, but it would be the second training today.
    fail_job(api, ns, "digits-v1-train")
    wait_for(lambda: phase(api, ns, "v1") == "Failed", 60, "v1 Failed", operator.proc)
    wait_for(
        lambda: training_condition(api, ns).get("reason") == "BudgetExhausted", 60, "the retry blocked", operator.proc
    )
    cond = training_condition(api, ns)
    assert cond["status"] == "False"
    started = datetime.fromisoformat(policy_status(api, ns)["trainingStarts"][0])
    assert "maxTrainingsPerDay 1" in cond["message"]
    assert f"until {started + timedelta(hours=24):%Y-%m-%dT%H:%M:%SZ}" in cond["message"]
    wait_for(lambda: len(budget_events(api, ns)) == 1, 30, "one BudgetExhausted Event", operator.proc)
    assert operator.metric("modelloop_training_budget_exhausted", namespace=ns, policy=POLICY) == 1.0

    # More triggers: retrain-now twice, then enough corrections for the feedback trigger.
    annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "first")
    annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "second")
    now = datetime.now(UTC)
    recs = [
        FeedbackRecord(id=str(i), version="v1", input=[0.0], predicted=1, label=2, reviewed_at=now) for i in range(5)
    ]
    minio.store(bucket).put_bytes(batch_key(MODEL), encode_batch(recs))
    wait_for(
        lambda: policy_status(api, ns)["feedback"]["pendingCorrections"] == 5,
        60, "a pass that counted the corrections (after the retrain-now requests)", operator.proc,
    )  # fmt: skip
    st = policy_status(api, ns)
    assert sorted(versions(api, ns)) == ["v1"], "no training beyond the day's budget"
    assert jobs(api, ns) == ["digits-v1-train"]
    assert len(st["trainingStarts"]) == 1
    assert st["handled"].get("retrainNow") is None, "the request waits for the budget; it is not dropped"
    assert training_condition(api, ns)["reason"] == "BudgetExhausted"
    assert len(budget_events(api, ns)) == 1, "one Event per block, not one per pass"
    assert operator.metric("modelloop_training_budget_exhausted", namespace=ns, policy=POLICY) == 1.0
