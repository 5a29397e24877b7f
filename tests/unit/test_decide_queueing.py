"""A Kueue-queued Job's place in the queue, from its Workload's conditions, and the Events it earns."""

from __future__ import annotations

from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.decide.queueing import QueueState, queue_event, queue_state

QUEUED_JOB = {"metadata": {"name": "p-v1-train", "labels": {c.KUEUE_LABEL_QUEUE_NAME: "training"}}}


def workload(*conditions: tuple[str, str, str, str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-p-v1-train-1a2b3"},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions],
            **status,
        },
    }


PENDING = ("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set main: insufficient quota for cpu")
RESERVED = ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue training")
ADMITTED = ("Admitted", "True", "Admitted", "The workload is admitted")
EVICTED = ("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x) due to prioritization")
PREEMPTED = ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a higher priority Workload")
FINISHED = ("Finished", "True", "Succeeded", "Job finished successfully")


@pytest.mark.parametrize(
    ("workloads", "queued", "reason", "says"),
    [
        ([], True, "WaitingForWorkload", "Kueue controller"),
        ([workload()], True, "Pending", "no ClusterQueue decision yet"),
        ([workload(PENDING)], True, "Pending", "insufficient quota for cpu"),
        ([workload(RESERVED)], True, "QuotaReserved", "admission checks"),
        ([workload(RESERVED, ADMITTED, admission={"clusterQueue": "cq"})], False, "Admitted", "ClusterQueue cq"),
        ([workload(PENDING, EVICTED, PREEMPTED)], True, "Preempted", "higher priority"),
        ([workload(("Evicted", "True", "InactiveWorkload", "deactivated"))], True, "Evicted", "deactivated"),
        ([workload(RESERVED, ADMITTED, FINISHED)], False, "Finished", "finished"),
        # A Workload being deleted (its Job went) says nothing about where the Job stands.
        ([{**workload(ADMITTED), "metadata": {"name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z"}}],
         True, "WaitingForWorkload", "LocalQueue training"),
    ],
)  # fmt: skip
def test_queue_state_from_the_workload(workloads: list[dict[str, Any]], queued: bool, reason: str, says: str) -> None:
    state = queue_state(QUEUED_JOB, workloads)
    assert state is not None
    assert (state.queued, state.reason) == (queued, reason)
    assert says in state.message


def test_a_job_without_a_queue_label_is_not_kueues() -> None:
    assert queue_state({"metadata": {"name": "p-v1-train", "labels": {}}}, [workload(PENDING)]) is None


@pytest.mark.parametrize(
    ("previous", "now", "event"),
    [
        (None, "Pending", ("Queued", "Normal")),
        (None, "WaitingForWorkload", ("Queued", "Normal")),
        ("WaitingForWorkload", "Pending", None),  # still waiting: no second Event
        ("Pending", "Pending", None),
        ("Pending", "QuotaReserved", None),
        ("Pending", "Admitted", ("Admitted", "Normal")),
        (None, "Admitted", ("Admitted", "Normal")),
        ("Admitted", "Admitted", None),
        ("Admitted", "Preempted", ("Preempted", "Warning")),
        ("Admitted", "Evicted", ("Evicted", "Warning")),
        ("Preempted", "Pending", None),  # waiting again after the preemption was told
        ("Preempted", "Admitted", ("Admitted", "Normal")),
        ("Admitted", "Finished", None),
    ],
)
def test_one_event_per_change_of_place_in_the_queue(
    previous: str | None, now: str, event: tuple[str, str] | None
) -> None:
    state = QueueState(now not in {"Admitted", "Finished"}, now, "m")
    assert queue_event(previous, state) == event
