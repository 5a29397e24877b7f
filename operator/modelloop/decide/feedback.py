"""Which feedback objects a counting pass must read: new ones, late ones, never one twice.

A key-name cursor (count what sorts after the last key counted) misses a batch uploaded late: a
serving pod names its batch when it cuts it, and after an object-store outage it uploads batches
whose keys sort before keys already counted. So what was processed is tracked by upload time, as
the store's clock writes it (``LastModified``), never by the operator's clock:

- ``seen_through``: every object under the prefix uploaded at or before this time has been
  processed (counted or quarantined): the newest upload a listing showed, less ``SETTLE`` (an
  upload that started earlier, still in flight during that listing, has finished by then);
- ``recent``: the keys processed that were uploaded after ``seen_through`` (a handful: those of
  the last ``SETTLE`` seconds), so they are not processed twice.

An object is processed iff it was uploaded after ``seen_through`` and is not in ``recent``. A
listing starts at the key named ``late_window`` before ``seen_through``: a batch uploaded more
than that after its key's time is not seen (it is still trained on: the trainer reads every key up
to its bound). Both are in the policy's status, so a restarted operator neither skips nor recounts.
A policy counted before this scheme, or whose upload-time state was lost with a status write
(``seen_through`` unset), counts after its key cursor once, from a listing of the whole prefix: the
batches at or before the cursor that were uploaded in the last ``SETTLE`` must be in that listing to
be remembered in ``recent``, or the next pass would count them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from modelloop.api.feedback import MAX_FEEDBACK_OBJECT_BYTES, key_at

SETTLE = timedelta(seconds=30)
MAX_RECENT = 5000
"""Keys kept in ``recent``; past it the oldest are dropped (only a burst of 5,000 uploads in 30 s gets there)."""


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class CountingState:
    cursor: str
    seen_through: datetime | None
    recent: frozenset[str]


def listing_start(model: str, state: CountingState, late_window: timedelta) -> str | None:
    """``start_after`` of the listing: ``late_window`` before what was seen; the whole prefix in cursor mode."""
    if state.seen_through is None:
        return None
    return key_at(model, state.seen_through - late_window)


def to_process(listing: Iterable[ListedObject], state: CountingState) -> list[ListedObject]:
    """The batches (``.jsonl``) of ``listing`` not processed yet, in key order."""
    batches = (o for o in listing if o.key.endswith(".jsonl"))
    if state.seen_through is None:
        fresh = [o for o in batches if o.key > state.cursor]
    else:
        seen = state.seen_through
        fresh = [o for o in batches if o.last_modified > seen and o.key not in state.recent]
    return sorted(fresh, key=lambda o: o.key)


def after_listing(listing: Iterable[ListedObject], state: CountingState, processed: Iterable[str]) -> CountingState:
    """The state once every object ``to_process`` returned for ``listing`` is in ``processed``."""
    objects = [o for o in listing if o.key.endswith(".jsonl")]
    done = set(processed)
    if state.seen_through is None:  # counted by key cursor until now: what sorts at or before it was processed
        done |= {o.key for o in objects if o.key <= state.cursor}
    newest = max((o.last_modified for o in objects), default=None)
    seen = state.seen_through
    if newest is not None and (seen is None or newest - SETTLE > seen):
        seen = newest - SETTLE
    cursor = max([state.cursor, *done]) if done else state.cursor
    if seen is None:
        return CountingState(cursor, None, frozenset())
    young = sorted((o for o in objects if o.last_modified > seen), key=lambda o: o.last_modified)
    recent = [o.key for o in young if o.key in done or o.key in state.recent][-MAX_RECENT:]
    return CountingState(cursor, seen, frozenset(recent))


def quarantine_reason(obj: ListedObject) -> str | None:
    """Why an object is not read at all (decided from the listing, before any download)."""
    if obj.size > MAX_FEEDBACK_OBJECT_BYTES:
        return f"{obj.size} bytes, over the {MAX_FEEDBACK_OBJECT_BYTES} bytes a feedback batch may hold"
    return None
