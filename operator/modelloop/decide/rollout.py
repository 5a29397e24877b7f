"""Rollout progress: how many serving replicas report the desired digest, and when to give up waiting.

Replicas are counted, not trusted: a pod counts only when its own sidecar annotated it with
the exact manifest digest and it is not terminating. The total is the Deployment's
``spec.replicas`` (what the user asked for), not the pods that happen to exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class PodView:
    name: str
    serving_digest: str | None
    terminating: bool


@dataclass(frozen=True)
class RolloutDecision:
    updated: int
    total: int
    complete: bool
    stalled: bool
    summary: str
    message: str


def decide_rollout(
    desired_digest: str,
    desired_version: str,
    replicas: int | None,
    pods: Sequence[PodView],
    started_at: datetime,
    timeout: timedelta,
    now: datetime,
) -> RolloutDecision:
    """``replicas`` None means no serving Deployment is configured: promotion completes at once."""
    if replicas is None:
        return RolloutDecision(0, 0, True, False, "0/0", "no serving Deployment configured; promoted without rollout")
    updated = sum(1 for p in pods if not p.terminating and p.serving_digest == desired_digest)
    updated = min(updated, replicas)
    complete = updated >= replicas
    stalled = not complete and now - started_at >= timeout
    summary = f"{updated}/{replicas}"
    if complete:
        msg = f"{summary} replicas serve {desired_version}"
    else:
        waiting = sorted(p.name for p in pods if not p.terminating and p.serving_digest != desired_digest)
        msg = f"{summary} replicas serve {desired_version}; waiting for {', '.join(waiting) or 'pods to be created'}"
        if stalled:
            msg += (
                f" (over the rolloutTimeout of {int(timeout.total_seconds())}s: check those pods' reload-sidecar logs)"
            )
    return RolloutDecision(updated, replicas, complete, stalled, summary, msg)
