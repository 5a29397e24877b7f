"""Version numbering, the one-training-at-a-time rule, and a version's phase as the policy pass decided it.

The next number comes from both the ModelVersions that exist and ``status.latestVersion``: a
version deleted by retention (or by hand) must never have its number reused, since its
artifacts and Events may still name it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelloop.api.artifacts import version_number
from modelloop.api.constants import ANNOTATION_PHASE_DECISION
from modelloop.api.modelversion import IN_FLIGHT, Phase, phase_of


def next_version(existing: Iterable[str], latest: str | None) -> str:
    numbers = [version_number(v) for v in existing]
    if latest:
        numbers.append(version_number(latest))
    return f"v{max(numbers, default=0) + 1}"


def modelversion_name(policy: str, version: str) -> str:
    return f"{policy}-{version}"


def in_flight(phases: Mapping[str, Phase]) -> str | None:
    """The version still being trained or verified, if any (the oldest, should there be several)."""
    flying = sorted((v for v, p in phases.items() if p in IN_FLIGHT), key=version_number)
    return flying[0] if flying else None


def sorted_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_number)


def promotion_candidate(phases: Mapping[str, Phase], active: str | None) -> str | None:
    """The newest version newer than the active one that passed verification and is not serving yet.

    A Promoting version counts too: it is marked Promoting just before the policy's
    ``status.desired`` is written, so a crash between the two writes leaves it Promoting with
    nothing rolling it out. Picking it again finishes that promotion instead of stranding it.
    """
    floor = version_number(active) if active else 0
    ready = [v for v, p in phases.items() if p in (Phase.VERIFIED, Phase.PROMOTING) and version_number(v) > floor]
    return max(ready, key=version_number) if ready else None


@dataclass(frozen=True)
class PhaseDecision:
    """What the policy pass decided about a verified version: Promoting, Active, Superseded, Rejected (by
    live reviews), RolledBack. Recorded on the version's ``modelloop.dev/phase-decision`` annotation;
    the ModelVersion handler copies it into status (one writer per object's status)."""

    phase: Phase
    message: str
    promoted_at: datetime | None = None

    def encode(self) -> str:
        out: dict[str, str] = {"phase": self.phase.value, "message": self.message}
        if self.promoted_at is not None:
            out["promotedAt"] = self.promoted_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps(out, sort_keys=True)


def decision_of(mv: Mapping[str, Any]) -> dict[str, str] | None:
    """The decision annotation of a ModelVersion body as status fields, or None (absent or not ours)."""
    raw = ((mv.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PHASE_DECISION)
    if not raw:
        return None
    try:
        fields = json.loads(raw)
        Phase(fields["phase"])
    except (ValueError, KeyError, TypeError):
        return None
    return {k: str(v) for k, v in fields.items() if k in ("phase", "message", "promotedAt")}


def mirrored_status(mv: Mapping[str, Any]) -> dict[str, str]:
    """The status fields to write so the ModelVersion's status says what the decision says ({} when it does).

    A version still training or verifying is its own handler's to move on: no decision is mirrored then.
    """
    decision = decision_of(mv)
    status = mv.get("status") or {}
    if decision is None or phase_of(status) in IN_FLIGHT:
        return {}
    return {k: v for k, v in decision.items() if status.get(k) != v}


def version_phase(mv: Mapping[str, Any]) -> Phase:
    """A listed ModelVersion's phase, counting the policy pass's latest decision at once.

    The decision is written on the version's metadata by the pass and copied into its status by the
    ModelVersion handler shortly after; the next pass must not act on the phase before the decision
    (promote a version it has just rejected or abandoned), so the decision wins while the copy is pending.
    """
    status = mv.get("status") or {}
    if (fields := decision_of(mv)) is not None and phase_of(status) not in IN_FLIGHT:
        return Phase(fields["phase"])
    return phase_of(status)


def version_message(mv: Mapping[str, Any]) -> str:
    """The message that goes with :func:`version_phase` (the decision's while its copy is pending)."""
    status = mv.get("status") or {}
    if (fields := decision_of(mv)) is not None and phase_of(status) not in IN_FLIGHT:
        return fields.get("message", "")
    return str(status.get("message") or "")
