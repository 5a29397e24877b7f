"""Version numbering and the one-training-at-a-time rule.

The next number comes from both the ModelVersions that exist and ``status.latestVersion``: a
version deleted by retention (or by hand) must never have its number reused, since its
artifacts and Events may still name it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from modelloop.api.artifacts import version_number
from modelloop.api.modelversion import IN_FLIGHT, Phase


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
