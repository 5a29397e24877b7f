"""Which feedback batches a counting pass reads: new and late ones once, never one twice, bounded state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelloop.api.feedback import MAX_FEEDBACK_OBJECT_BYTES, batch_key, key_at
from modelloop.decide.feedback import (
    MAX_RECENT,
    SETTLE,
    CountingState,
    ListedObject,
    after_listing,
    listing_start,
    quarantine_reason,
    to_process,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def key(cut: datetime, suffix: str = "aa") -> str:
    return f"digits/feedback/{cut:%Y%m%dT%H%M%S}.000000Z-{suffix}.jsonl"


def obj(cut: datetime, uploaded: datetime, suffix: str = "aa", size: int = 100) -> ListedObject:
    return ListedObject(key(cut, suffix), size, uploaded)


def run(listing: list[ListedObject], state: CountingState) -> tuple[list[str], CountingState]:
    """One complete pass over what the store lists from ``listing_start``: what it reads, the state it leaves."""
    start = listing_start("digits", state, timedelta(hours=6))
    listing = [o for o in listing if start is None or o.key > start]
    read = [o.key for o in to_process(listing, state)]
    return read, after_listing(listing, state, read)


EMPTY = CountingState("", None, frozenset())
A = obj(T0, T0 + S, "a")
B = obj(T0 + 60 * S, T0 + 61 * S, "b")
LATE = obj(T0 - 3600 * S, T0 + 300 * S, "late")  # cut an hour before A, uploaded after an outage
C = obj(T0 + 400 * S, T0 + 401 * S, "c")  # uploaded after LATE


@pytest.mark.parametrize(
    ("case", "passes", "expected_reads"),
    [
        ("fresh bucket, two passes", [[A], [A, B]], [[A.key], [B.key]]),
        ("nothing new: nothing read", [[A, B], [A, B], [A, B]], [[A.key, B.key], [], []]),
        ("a late batch older than the cursor is read once", [[A, B], [LATE, A, B], [LATE, A, B, C]],
         [[A.key, B.key], [LATE.key], [C.key]]),
        ("uploads within the settle time are not read twice", [[A], [A, obj(T0, T0 + 2 * S, "a2")]],
         [[A.key], [key(T0, "a2")]]),
        ("non-batch objects are ignored", [[A, ListedObject("digits/feedback/README", 5, T0 + S)]], [[A.key]]),
        ("a deleted batch is not missed, nor the rest", [[A, B], [B, C]], [[A.key, B.key], [C.key]]),
    ],
)  # fmt: skip
def test_passes(case: str, passes: list[list[ListedObject]], expected_reads: list[list[str]]) -> None:
    state = EMPTY
    for listing, expected in zip(passes, expected_reads, strict=True):
        read, state = run(listing, state)
        assert read == expected, case


def test_the_cursor_is_the_highest_key_counted_even_after_a_late_batch() -> None:
    _, state = run([A, B], EMPTY)
    _, state = run([LATE, A, B], state)
    assert state.cursor == B.key, "the trainer's bound must cover the late batch: it sorts below B"


def test_seen_through_follows_the_store_clock_less_the_settle_time() -> None:
    _, state = run([A, B], EMPTY)
    assert state.seen_through == B.last_modified - SETTLE
    assert state.recent == {B.key}, "only uploads after seenThrough are remembered by key"
    _, later = run([A, B, C], state)
    assert later.seen_through == C.last_modified - SETTLE and later.recent == {C.key}


def test_a_partial_pass_keeps_what_it_counted() -> None:
    """Interrupted after A (the store failed): the handler has added A to recent; the next pass reads B only."""
    _, state = run([A], EMPTY)
    a2 = obj(T0 + 10 * S, T0 + 11 * S, "a2")
    interrupted = CountingState(a2.key, state.seen_through, state.recent | {a2.key})
    read, _ = run([A, a2, B], interrupted)
    assert read == [B.key]


def test_policies_counted_before_this_scheme_continue_from_their_key_cursor() -> None:
    old = CountingState(A.key, None, frozenset())
    assert listing_start("digits", old, timedelta(hours=6)) is None, "the whole prefix, once"
    read, state = run([B], old)
    assert read == [B.key] and state.seen_through is not None


def test_after_falling_back_to_the_cursor_what_it_covers_is_never_read_again() -> None:
    """An operator that lost the status write of a counting pass restores only the key cursor (from the
    ModelVersion it created); the batches that pass counted, uploaded seconds ago, must not count twice."""
    restored = CountingState(B.key, None, frozenset())
    read, state = run([A, B], restored)
    assert read == [] and B.key in state.recent
    assert run([A, B, C], state)[0] == [C.key]


def test_after_falling_back_with_a_new_batch_the_ones_the_cursor_covers_are_still_not_read_again() -> None:
    """The SIGKILL fault test's seed 3770381633: the restored cursor's pass also finds a new batch, so it
    leaves cursor mode; the covered batches uploaded within the settle time must go into ``recent``."""
    restored = CountingState(B.key, None, frozenset())
    c_soon = obj(T0 + 62 * S, T0 + 63 * S, "c")
    read, state = run([A, B, c_soon], restored)
    assert read == [c_soon.key] and state.seen_through is not None
    assert B.key in state.recent
    assert run([A, B, c_soon], state)[0] == []


def test_listing_starts_the_late_window_before_what_was_seen() -> None:
    state = CountingState(B.key, T0, frozenset())
    start = listing_start("digits", state, timedelta(hours=6))
    assert start == key_at("digits", T0 - timedelta(hours=6))
    assert start is not None
    assert (
        batch_key("digits", T0 - timedelta(hours=6)) > start > batch_key("digits", T0 - timedelta(hours=6, seconds=1))
    )


def test_recent_is_bounded() -> None:
    burst = [obj(T0, T0 + timedelta(milliseconds=i), f"{i:06d}") for i in range(MAX_RECENT + 50)]
    _, state = run(burst, EMPTY)
    assert len(state.recent) == MAX_RECENT


@pytest.mark.parametrize(
    ("size", "quarantined"), [(100, False), (MAX_FEEDBACK_OBJECT_BYTES, False), (MAX_FEEDBACK_OBJECT_BYTES + 1, True)]
)
def test_oversized_objects_are_quarantined_before_download(size: int, quarantined: bool) -> None:
    reason = quarantine_reason(obj(T0, T0, size=size))
    assert (reason is not None) == quarantined
    if reason:
        assert str(size) in reason
