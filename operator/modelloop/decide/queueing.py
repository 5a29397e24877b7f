"""Where a Kueue-queued Job stands, from its Workload's conditions: waiting, admitted or preempted.

Kueue (sigs.k8s.io/kueue) owns a queued Job's ``spec.suspend``: it creates a Workload for the Job,
reserves quota in a ClusterQueue (condition QuotaReserved), admits it (Admitted) and unsuspends
the Job; to preempt it evicts the Workload (Evicted, reason Preempted) and suspends the Job again.
The operator only reads this, to say on the ModelVersion why a version is not training yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelloop.api import constants as c


@dataclass(frozen=True)
class QueueState:
    """``queued``: the Job waits for Kueue (condition Queued=True); ``reason`` is the condition's reason."""

    queued: bool
    reason: str
    message: str


def queue_name(job: dict[str, Any]) -> str | None:
    """The LocalQueue a Job was submitted to; None for a Job Kueue does not manage."""
    labels: dict[str, str] = (job.get("metadata") or {}).get("labels") or {}
    return labels.get(c.KUEUE_LABEL_QUEUE_NAME)


def _true(workload: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _condition(workload: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def queue_state(job: dict[str, Any], workloads: list[dict[str, Any]]) -> QueueState | None:
    """The Job's place in Kueue; None when no queue manages it (the Job runs as created).

    ``workloads``: those Kueue made for this Job (label kueue.x-k8s.io/job-uid), normally one.
    """
    queue = queue_name(job)
    if queue is None:
        return None
    name = (job.get("metadata") or {}).get("name", "")
    live = [w for w in workloads if not (w.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return QueueState(
            True,
            "WaitingForWorkload",
            f"Job {name} waits for Kueue to create its Workload in LocalQueue {queue};"
            " if this lasts, check that the Kueue controller runs and manages batch/job",
        )
    workload = live[0]
    wl = (workload.get("metadata") or {}).get("name", "")
    if _true(workload, "Finished"):
        return QueueState(False, "Finished", f"Workload {wl} finished")
    if _true(workload, "Admitted"):
        cq = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue", "")
        return QueueState(False, "Admitted", f"Workload {wl} admitted" + (f" by ClusterQueue {cq}" if cq else ""))
    evicted = _true(workload, "Evicted")
    if evicted is not None:
        why = evicted.get("reason") or "Evicted"
        preempted = _true(workload, "Preempted")
        detail = (preempted or evicted).get("message") or "no message from Kueue"
        reason = "Preempted" if why == "Preempted" else "Evicted"
        return QueueState(
            True,
            reason,
            f"Workload {wl} was {reason.lower()} ({detail}); the Job is suspended and resumes from its"
            f" last checkpoint when LocalQueue {queue} admits it again",
        )
    if _true(workload, "QuotaReserved"):
        return QueueState(True, "QuotaReserved", f"Workload {wl} has quota and waits for its admission checks")
    pending = _condition(workload, "QuotaReserved")
    detail = pending.get("message") or "no ClusterQueue decision yet"
    return QueueState(True, "Pending", f"Workload {wl} waits in LocalQueue {queue}: {detail}")


def queue_event(previous_reason: str | None, state: QueueState) -> tuple[str, str] | None:
    """(Event reason, "Normal" | "Warning") when the Job's place in the queue changed; None otherwise.

    ``previous_reason``: the reason of the version's Queued condition before this pass, if any.
    One Event per transition: queued (or preempted) once, admitted once, however often the timer runs.
    """
    if previous_reason == state.reason:
        return None
    if state.reason == "Preempted":
        return "Preempted", "Warning"
    if state.reason == "Evicted":
        return "Evicted", "Warning"
    if state.queued and (previous_reason is None or previous_reason in {"Admitted", "Finished"}):
        return "Queued", "Normal"
    if not state.queued and state.reason == "Admitted":
        return "Admitted", "Normal"
    return None
