"""Will a version fit on the model volume? Asked before a byte of it is downloaded.

The kubelet evicts a Pod whose ``emptyDir`` grows past its ``sizeLimit``. Every replica downloads
a promoted version at about the same moment, so a version bigger than the room left would get
every replica evicted within one housekeeping period: the whole model Service down at once, for a
download that could never succeed. The sidecar therefore compares the version's size (from its
manifest, before any weights are fetched) with the volume's ``sizeLimit`` (from its own Pod spec)
minus what the volume already holds. It first drops versions it keeps only for convenience (the
previous version's disk copy, an old prefetched candidate: the server keeps the previous model in
memory for an instant rollback anyway), oldest first; if the version still does not fit, it is
refused, the old model keeps serving, and the Event says how big the volume must be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

from .memory import size

REASON_NO_ROOM = "ModelVolumeTooSmall"
"""The sidecar's Event reason when a version would overflow the model volume's sizeLimit."""


@dataclass(frozen=True)
class VolumeLimit:
    """The ``sizeLimit`` of the emptyDir mounted at the model dir, as declared and in bytes."""

    volume: str
    declared: str
    limit_bytes: int


@dataclass(frozen=True)
class RoomDecision:
    fits: bool
    drop: tuple[str, ...] = ()
    """Versions to remove from the volume first (oldest first); empty when it fits as it is."""
    message: str = ""


def volume_limit(pod: Mapping[str, Any], model_dir: Path, container: str | None = None) -> VolumeLimit | None:
    """The sizeLimit of the emptyDir that ``container`` (or any container) mounts at ``model_dir``.

    None when the model dir is not an emptyDir or has no sizeLimit: then only the disk itself
    bounds it, and a full disk is handled where the download fails.
    """
    spec = pod.get("spec") or {}
    volume_name = None
    for k in spec.get("containers") or []:
        if container is not None and k.get("name") != container:
            continue
        for mount in k.get("volumeMounts") or []:
            if Path(mount.get("mountPath", "")) == model_dir:
                volume_name = mount.get("name")
                break
        if volume_name:
            break
    for volume in spec.get("volumes") or []:
        if volume.get("name") != volume_name:
            continue
        declared = (volume.get("emptyDir") or {}).get("sizeLimit")
        if declared is None:
            return None
        return VolumeLimit(str(volume_name), str(declared), int(parse_quantity(str(declared))))  # type: ignore[no-untyped-call]
    return None


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path``, counted in blocks as ``du`` (and the kubelet) count them."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def reserve_for(limit_bytes: int) -> int:
    """Slack kept below the limit: the manifest and metrics files, filesystem rounding, a log."""
    return max(64 << 10, limit_bytes // 50)


def room_decision(
    version: str,
    need: int,
    limit: VolumeLimit | None,
    used: int,
    droppable: Sequence[tuple[str, int]],
    kept: Sequence[str],
) -> RoomDecision:
    """Whether ``need`` more bytes fit under the volume's limit, after dropping what may be dropped.

    ``used`` is everything on the volume now; ``droppable`` the (version, bytes) the sidecar may
    remove, oldest first; ``kept`` names what must stay (the served version, downloads under way),
    for the message.
    """
    if limit is None:
        return RoomDecision(True)
    reserve = reserve_for(limit.limit_bytes)
    free = limit.limit_bytes - reserve - used
    if need <= free:
        return RoomDecision(True)
    drop: list[str] = []
    for name, nbytes in droppable:
        drop.append(name)
        free += nbytes
        if need <= free:
            return RoomDecision(True, tuple(drop))
    still = ", ".join(kept) if kept else "nothing else"
    at_least = limit.limit_bytes + (need - free)
    return RoomDecision(
        False,
        message=(
            f"{version} needs {size(need)} on the model volume '{limit.volume}' (emptyDir sizeLimit "
            f"{limit.declared}), but only {size(max(0, free))} would be free with {still} kept; the kubelet "
            f"evicts a Pod whose emptyDir exceeds its sizeLimit, so {version} was not downloaded. Raise "
            f"sizeLimit of volume '{limit.volume}' in the serving Deployment to at least {size(at_least)}"
        ),
    )
