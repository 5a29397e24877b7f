"""triggers.maxTrainingsPerDay: the rolling 24 h window, the two records of starts, and when the next may start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.decide.budget import decide_budget, recent_starts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


# (limit, status.trainingStarts, ModelVersion creation times, allowed, used, next start allowed at)
CASES = {
    "no-budget": (None, [ago(1), ago(2), ago(3)], [], True, 3, None),
    "first-training": (1, [], [], True, 0, None),
    "one-of-one-used": (1, [ago(2)], [ago(2)], False, 1, ago(2) + timedelta(hours=24)),
    "outside-the-window": (1, [ago(24)], [ago(24.5)], True, 0, None),
    "under-the-limit": (3, [ago(1), ago(5)], [ago(1), ago(5)], True, 2, None),
    # The oldest start that must leave the window for one more to fit: with 3 of 2, the 2nd oldest.
    "over-the-limit-after-lowering-it": (2, [ago(20), ago(10), ago(1)], [], False, 3, ago(10) + timedelta(hours=24)),
    "lost-status-write-counted-by-versions": (1, [], [ago(3)], False, 1, ago(3) + timedelta(hours=24)),
    "pruned-version-counted-by-status": (2, [ago(3), ago(2)], [ago(2)], False, 2, ago(3) + timedelta(hours=24)),
    "future-clock-skew-ignored": (1, [NOW + timedelta(minutes=5)], [], True, 0, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_budget(case: str) -> None:
    limit, recorded, created, allowed, used, next_at = CASES[case]
    d = decide_budget(limit, recorded, created, NOW)
    assert (d.allowed, d.used, d.next_at) == (allowed, used, next_at)
    if not allowed:
        assert "maxTrainingsPerDay" in d.message and f"{next_at:%Y-%m-%dT%H:%M:%SZ}" in d.message


def test_recent_starts_keeps_the_window_sorted() -> None:
    assert recent_starts([ago(1), ago(30), ago(5)], NOW) == [ago(5), ago(1)]
