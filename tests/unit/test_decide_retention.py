"""Retention never deletes the active, previous, desired or in-flight versions."""

from __future__ import annotations

import pytest

from modelloop.api.modelversion import Phase
from modelloop.decide.retention import pick_pruned


def phases(n: int, phase: Phase = Phase.SUPERSEDED) -> dict[str, Phase]:
    return {f"v{i}": phase for i in range(1, n + 1)}


CASES = [
    ("fewer than keep", phases(3), 5, [], []),
    ("exactly keep", phases(5), 5, [], []),
    ("one over", phases(6), 5, [], ["v1"]),
    ("sorted numerically, not as strings", phases(12), 10, [], ["v1", "v2"]),
    ("active old version protected", phases(6), 2, ["v1"], ["v2", "v3", "v4"]),
    ("active, previous, desired protected", phases(8), 2, ["v1", "v2", "v3"], ["v4", "v5", "v6"]),
    ("None entries ignored", phases(3), 2, [None, None], ["v1"]),
    ("in flight never pruned", {**phases(4), "v1": Phase.TRAINING}, 2, [], ["v2"]),
]


@pytest.mark.parametrize(("ph", "keep", "protected", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pick_pruned(ph: dict[str, Phase], keep: int, protected: list[str | None], expected: list[str]) -> None:
    pruned = pick_pruned(ph, keep, protected)
    assert pruned == expected
    assert not set(pruned) & {p for p in protected if p}
