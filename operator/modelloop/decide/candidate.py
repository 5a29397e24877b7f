"""Which version serving sidecars may download ahead of promotion (``status.candidate``).

A promotion that must first download the version is as slow as the object store; one whose
version is already on every replica's disk is a local load and a swap. The candidate is the
newest version that may still be promoted and whose artifacts are complete (training wrote the
manifest digest into its status). It is cleared when that version is promoted (then
``status.desired`` names it), rejected or failed, or when the active version overtakes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelloop.api.artifacts import version_number
from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import CandidateVersion

PREFETCHABLE = frozenset({Phase.VERIFYING, Phase.VERIFIED})


@dataclass(frozen=True)
class VersionView:
    """What the decision needs of one ModelVersion: its phase and, once trained, its artifact."""

    version: str
    phase: Phase
    artifact_uri: str | None = None
    manifest_digest: str | None = None


def decide_candidate(
    versions: Iterable[VersionView], active: str | None, desired: str | None
) -> CandidateVersion | None:
    """The newest prefetchable version above the active one that is not already desired, else None."""
    floor = version_number(active) if active else 0
    eligible = [
        v
        for v in versions
        if v.phase in PREFETCHABLE
        and v.artifact_uri
        and v.manifest_digest
        and v.version != desired
        and version_number(v.version) > floor
    ]
    if not eligible:
        return None
    newest = max(eligible, key=lambda v: version_number(v.version))
    return CandidateVersion(
        version=newest.version, artifact_uri=newest.artifact_uri, manifest_digest=newest.manifest_digest
    )
