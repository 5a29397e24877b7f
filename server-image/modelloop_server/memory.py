"""Will a model version fit in the serving container's memory? Asked before it is loaded.

On a real node the server container has a memory limit; a version too big for it would get the
server OOM-killed mid-load, restarted by the kubelet, and crash-looping on every replica at once.
``ModelHolder.load`` therefore asks :func:`headroom_decision` first, with the container's own
cgroup numbers (:func:`read_limits`, the file root injectable for tests) and an estimate of what
the load adds (:func:`estimate_need`); a refusal raises :class:`ModelTooLarge`, which the reload
endpoint answers with 409 and the sidecar turns into a ``ModelTooLarge`` Event.

Usage is the working set (usage minus inactive page cache), as the kubelet counts it: the page
cache of files the sidecar just downloaded is reclaimed before the OOM killer acts, so counting
it would refuse models that fit. The models the server already holds (the serving one and the
previous one kept for instant rollback) are part of that usage, and both stay resident while the
new one loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MiB = 1 << 20
UNLIMITED_V1 = 1 << 62
"""cgroup v1 reports "no limit" as a huge page-aligned number (9223372036854771712 on x86-64)."""

REASON_TOO_LARGE = "ModelTooLarge"
"""The ``reason`` of the server's 409 answer to /v1/reload, and of the sidecar's Event (the sidecar
imports it from here: this module needs no torch)."""

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_OVERHEAD_FACTOR = 1.2
DEFAULT_RESERVE_BYTES = 64 * MiB


@dataclass(frozen=True)
class MemoryLimits:
    """The container's memory limit and what it uses now, from its cgroup."""

    limit_bytes: int | None
    """None: no limit (v2 ``max``, or the v1 "unlimited" value)."""
    usage_bytes: int
    """Working set: usage minus inactive file cache (what cannot be reclaimed before an OOM kill)."""
    source: str
    """The file the limit was read from, for messages."""


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _working_set(usage: int, stat: dict[str, int], *keys: str) -> int:
    inactive = next((stat[k] for k in keys if k in stat), 0)
    return max(0, usage - inactive)


def read_limits(root: Path) -> MemoryLimits | None:
    """The limits of the cgroup mounted at ``root`` (v2 first, then v1); None when neither is readable.

    None means "cannot tell" (not in a container, no memory controller, an unexpected format): the
    caller then loads without a check, as before, rather than refusing every model.
    """
    v2_max = root / "memory.max"
    if v2_max.is_file():
        try:
            raw = v2_max.read_text().strip()
        except OSError as e:
            log.debug("cannot read %s: %s", v2_max, e)
            return None
        usage = _read_int(root / "memory.current")
        if usage is None:
            log.debug("%s exists but %s/memory.current is unreadable", v2_max, root)
            return None
        if raw == "max":
            limit: int | None = None
        elif raw.isdigit():
            limit = int(raw)
        else:
            log.debug("unexpected content %r in %s", raw, v2_max)
            return None
        stat = _read_stat(root / "memory.stat")
        return MemoryLimits(limit, _working_set(usage, stat, "inactive_file"), str(v2_max))
    v1 = root / "memory"
    v1_limit = _read_int(v1 / "memory.limit_in_bytes")
    v1_usage = _read_int(v1 / "memory.usage_in_bytes")
    if v1_limit is None or v1_usage is None:
        log.debug("no readable cgroup v2 or v1 memory files under %s", root)
        return None
    stat = _read_stat(v1 / "memory.stat")
    # a limit set on a parent cgroup applies too; v1 reports the effective one in memory.stat
    effective = min(v1_limit, stat.get("hierarchical_memory_limit", v1_limit))
    return MemoryLimits(
        None if effective >= UNLIMITED_V1 else effective,
        _working_set(v1_usage, stat, "total_inactive_file", "inactive_file"),
        str(v1 / "memory.limit_in_bytes"),
    )


def estimate_need(weights_bytes: int, factor: float, reserve_bytes: int) -> int:
    """Bytes a load adds: safetensors tensors take about their file size, times ``factor`` for the
    plug-in's module objects and warm-up activations, plus a fixed reserve."""
    return int(weights_bytes * factor) + reserve_bytes


def size(n: int) -> str:
    """Bytes for people: MiB below a GiB, GiB above."""
    if abs(n) >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / MiB:.1f} MiB"


def headroom_decision(
    need: int, limits: MemoryLimits | None, what: str = "the model", held: str = ""
) -> tuple[bool, str]:
    """(fits?, why): whether ``need`` more bytes fit under the limit on top of the current usage.

    ``held`` names what the usage already includes (the models kept resident during the load).
    """
    if limits is None:
        return True, "no cgroup memory limit readable; not checked"
    if limits.limit_bytes is None:
        return True, f"no memory limit ({limits.source}); {what} needs about {size(need)}"
    free = max(0, limits.limit_bytes - limits.usage_bytes)
    if need <= free:
        return True, f"{what} needs about {size(need)}, {size(free)} of the {size(limits.limit_bytes)} limit is free"
    at_least_mib = -(-(limits.usage_bytes + need) // MiB)  # rounded up, written as a Kubernetes quantity
    return False, (
        f"{what} needs about {size(need)} ({need} bytes) to load but only {size(free)} is free: "
        f"memory limit {size(limits.limit_bytes)} ({limits.limit_bytes} bytes, {limits.source}), "
        f"in use {size(limits.usage_bytes)} ({limits.usage_bytes} bytes{', ' + held if held else ''}). Loading it would get the server "
        f"OOM-killed. Raise the serving container's memory limit (resources.limits.memory) to at least "
        f"{at_least_mib}Mi, or shrink the model"
    )


class ModelTooLarge(Exception):
    """A version refused before loading because it would not fit in the container's memory."""

    def __init__(self, version: str, need: int, limits: MemoryLimits, message: str) -> None:
        super().__init__(message)
        self.version = version
        self.need = need
        self.limits = limits
        self.message = message


@dataclass(frozen=True)
class MemoryCheck:
    """The server's admission check for loads: settings plus the cgroup root to read."""

    cgroup_root: Path = DEFAULT_CGROUP_ROOT
    overhead_factor: float = DEFAULT_OVERHEAD_FACTOR
    reserve_bytes: int = DEFAULT_RESERVE_BYTES

    def admit(self, version: str, weights_bytes: int, held: str = "") -> None:
        """Raise :class:`ModelTooLarge` unless ``version`` (``weights_bytes`` on disk) fits now.

        ``held`` says which models the usage includes (resident during the load), for the message.
        """
        need = estimate_need(weights_bytes, self.overhead_factor, self.reserve_bytes)
        limits = read_limits(self.cgroup_root)
        what = (
            f"{version} (weights {size(weights_bytes)} x {self.overhead_factor:g} + {size(self.reserve_bytes)} reserve)"
        )
        ok, why = headroom_decision(need, limits, what, held)
        log.debug("memory check for %s: %s", version, why)
        if not ok:
            assert limits is not None
            raise ModelTooLarge(version, need, limits, why)
