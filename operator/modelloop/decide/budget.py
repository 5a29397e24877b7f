"""The training budget: at most ``triggers.maxTrainingsPerDay`` trainings started in any rolling 24 h.

Reviews become training data, so whoever can post reviews can ask for trainings; the budget
bounds the GPU spend they can cause. Every start counts, whatever started it (feedback, the
schedule, retrain-now, a retry), because each one is a Job on the GPUs.

The starts come from two records that can each miss one: ``status.trainingStarts`` (lost if the
status write of the pass that created a version is lost) and the ModelVersions' creation times
(gone once retention prunes a version). Both undercount, never overcount, so the larger count
in the window is the better one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class BudgetDecision:
    allowed: bool
    used: int
    """Trainings started in the last 24 h."""
    next_at: datetime | None = None
    """When blocked: when the oldest counted start leaves the window."""
    message: str = ""


def recent_starts(starts: Sequence[datetime], now: datetime) -> list[datetime]:
    """The starts within the window, oldest first (what status.trainingStarts keeps)."""
    return sorted(s for s in starts if now - WINDOW < s <= now)


def decide_budget(
    limit: int | None,
    recorded: Sequence[datetime],
    versions_created: Sequence[datetime],
    now: datetime,
) -> BudgetDecision:
    """Whether one more training may start now."""
    counted = max((recent_starts(recorded, now), recent_starts(versions_created, now)), key=len)
    used = len(counted)
    if limit is None or used < limit:
        return BudgetDecision(True, used)
    next_at = counted[used - limit] + WINDOW
    return BudgetDecision(
        False,
        used,
        next_at,
        f"{used} trainings started in the last 24 h, the limit of triggers.maxTrainingsPerDay {limit}: the due"
        f" training waits until {next_at:%Y-%m-%dT%H:%M:%SZ}. Raise the limit to train sooner, or find what"
        " floods the triggers (reviews, retrain-now, failing retries)",
    )
