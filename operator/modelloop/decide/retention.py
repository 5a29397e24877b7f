"""Which versions to prune: keep the newest ``keepVersions``, never anything still needed.

Protected whatever their age: the active, previous and desired versions (serving or about to
be, and the rollback target) and anything in flight (its Job is still writing artifacts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from modelloop.api.artifacts import version_number
from modelloop.api.modelversion import IN_FLIGHT, Phase


def pick_pruned(phases: Mapping[str, Phase], keep: int, protected: Iterable[str | None]) -> list[str]:
    keep_set = {v for v in protected if v}
    newest_first = sorted(phases, key=version_number, reverse=True)
    kept = 0
    pruned: list[str] = []
    for v in newest_first:
        if v in keep_set or phases[v] in IN_FLIGHT:
            kept += 1
            continue
        if kept < keep:
            kept += 1
            continue
        pruned.append(v)
    return sorted(pruned, key=version_number)
