"""Kubernetes-style conditions with metav1.Condition semantics.

``lastTransitionTime`` moves only when ``status`` changes, so a dashboard shows how long a
condition has been in its state rather than when the operator last looked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelloop.api.common import ConditionStatus


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(s: str | None) -> datetime | None:
    """The inverse of :func:`rfc3339` (and of the API server's timestamps); None for a missing one."""
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; other conditions and their order are kept."""
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        changed = c.get("status") != status
        out.append(
            _condition(type_, status, reason, message, rfc3339(now) if changed else c["lastTransitionTime"], generation)
        )
    if not found:
        out.append(_condition(type_, status, reason, message, rfc3339(now), generation))
    return out


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def _condition(type_: str, status: str, reason: str, message: str, ltt: str, generation: int | None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": ltt,
    }
    if generation is not None:
        c["observedGeneration"] = generation
    return c
