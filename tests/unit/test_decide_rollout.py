"""Rollout progress: only non-terminating pods reporting the exact digest count; stall after the timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.decide.rollout import PodView, decide_rollout

NOW = datetime(2026, 3, 10, tzinfo=UTC)
D = "sha256:" + "d" * 64
OLD = "sha256:" + "0" * 64
T = timedelta(minutes=10)

CASES = [
    ("no deployment configured", None, [], NOW, (0, 0, True, False)),
    ("none updated", 2, [PodView("a", OLD, False), PodView("b", None, False)], NOW, (0, 2, False, False)),
    ("half", 2, [PodView("a", D, False), PodView("b", OLD, False)], NOW, (1, 2, False, False)),
    ("all", 2, [PodView("a", D, False), PodView("b", D, False)], NOW, (2, 2, True, False)),
    ("terminating pod does not count", 2, [PodView("a", D, False), PodView("b", D, True)], NOW, (1, 2, False, False)),
    ("surge pods capped at replicas", 2, [PodView(n, D, False) for n in "abc"], NOW, (2, 2, True, False)),
    ("scaled to zero completes", 0, [], NOW, (0, 0, True, False)),
    ("exactly at timeout is stalled", 1, [PodView("a", OLD, False)], NOW - T, (0, 1, False, True)),
    ("just before timeout", 1, [PodView("a", OLD, False)], NOW - T + timedelta(seconds=1), (0, 1, False, False)),
    ("complete is never stalled", 1, [PodView("a", D, False)], NOW - 10 * T, (1, 1, True, False)),
]


@pytest.mark.parametrize(("replicas", "pods", "started", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rollout(
    replicas: int | None, pods: list[PodView], started: datetime, expected: tuple[int, int, bool, bool]
) -> None:
    d = decide_rollout(D, "v2", replicas, pods, started, T, NOW)
    assert (d.updated, d.total, d.complete, d.stalled) == expected
    assert d.summary == f"{d.updated}/{d.total}"
    assert "v2" in d.message or replicas is None


def test_stalled_message_names_the_waiting_pods() -> None:
    d = decide_rollout(D, "v2", 2, [PodView("a", D, False), PodView("web-b", OLD, False)], NOW - T, T, NOW)
    assert "web-b" in d.message and "rolloutTimeout" in d.message
