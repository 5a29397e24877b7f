"""What a restarted server recovers from the feedback spool a previous run left behind."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from modelloop.api.feedback import FeedbackRecord, batch_key, decode_batch, encode_batch, feedback_prefix
from modelloop_server.feedback import OPEN_JOURNAL, BacklogFull, FeedbackBuffer, SpoolUnavailable
from modelloop_server.metrics import ServerMetrics

MODEL = "digits"


def records(*ids: str) -> list[FeedbackRecord]:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    return [FeedbackRecord(id=i, version="v1", input=[0.0], predicted=1, label=2, reviewed_at=now) for i in ids]


def buffer(spool: Path) -> FeedbackBuffer:
    return FeedbackBuffer(MODEL, None, spool, ServerMetrics())


def spooled_name() -> str:
    return PurePosixPath(batch_key(MODEL)).name


def test_finished_and_unrenamed_spool_files_are_restored_and_a_torn_one_is_set_aside(tmp_path: Path) -> None:
    done, unrenamed, torn = spooled_name(), spooled_name(), spooled_name()
    (tmp_path / done).write_bytes(encode_batch(records("a", "b")))
    (tmp_path / f".{unrenamed}.tmp").write_bytes(encode_batch(records("c")))
    (tmp_path / f".{torn}.tmp").write_bytes(encode_batch(records("d"))[:-9])

    fb = buffer(tmp_path)
    assert fb.restore_spool() == 3
    assert fb.backlog == 3
    fb.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([done, unrenamed, f"{torn}.bad"])
    pending = {k: [r.id for r in v] for k, v in fb._pending.items()}
    assert pending == {feedback_prefix(MODEL) + done: ["a", "b"], feedback_prefix(MODEL) + unrenamed: ["c"]}


def test_a_review_that_cannot_be_spooled_is_refused_not_kept_in_memory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_text("a file where the spool directory should be")
    fb = buffer(spool)
    with pytest.raises(SpoolUnavailable, match="the review was not accepted"):
        fb.add(records("a")[0])
    assert fb.backlog == 0 and fb.backlog_bytes == 0, "a 202 means on disk: nothing is accepted into memory only"
    spool.unlink()
    fb.add(records("b")[0])
    assert [r.id for r in decode_batch((spool / OPEN_JOURNAL).read_bytes())] == ["b"], "accepted again once writable"
    fb.close()


def test_the_spool_is_bounded_in_bytes_and_refuses_with_a_message_naming_the_limit(tmp_path: Path) -> None:
    one = len(encode_batch(records("a")))
    fb = FeedbackBuffer(MODEL, None, tmp_path, ServerMetrics(), batch_records=2, max_bytes=3 * one)
    for r in records("a", "b", "c"):
        fb.add(r)
    fb._cut()  # two batches now: one pending (a, b) and one open (c)
    assert fb.backlog_bytes == 3 * one
    with pytest.raises(BacklogFull) as e:
        fb.add(records("d")[0])
    assert f"{3 * one} bytes of reviews are waiting" in str(e.value)
    assert f"limit {3 * one} bytes, MODELLOOP_FEEDBACK_MAX_SPOOL_BYTES" in str(e.value)
    assert fb.backlog == 3, "the refused review was not taken"
    assert sum(len(p.read_bytes()) for p in tmp_path.iterdir()) == 3 * one, "what is counted is what is on disk"
    assert fb.metrics.feedback_backlog_bytes._value.get() == 3 * one
    fb.close()

    again = buffer(tmp_path)
    again.restore_spool()
    assert again.backlog_bytes == 3 * one, "a restarted server counts the restored spool against the bound"


def test_each_accepted_review_is_fsynced_with_its_directory_before_add_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    fb = buffer(tmp_path)
    fb.add(records("a")[0])
    assert synced == [str(tmp_path), str(tmp_path / OPEN_JOURNAL)], "the new journal's name, then its bytes"
    fb.add(records("b")[0])
    assert synced[2:] == [str(tmp_path / OPEN_JOURNAL)]
    fb._cut()
    assert synced[3:] == [str(tmp_path)], "the rename of the journal into its spool file is made durable"
    fb.close()


def spool_contents(spool: Path) -> dict[str, list[str]]:
    return {p.name: [line for line in p.read_text().splitlines()] for p in sorted(spool.iterdir())}


def test_accepted_reviews_of_a_killed_server_are_restored_from_the_journal(tmp_path: Path) -> None:
    fb = buffer(tmp_path)
    for r in records("a", "b", "c"):
        fb.add(r)
    assert list(spool_contents(tmp_path)) == [OPEN_JOURNAL], "each accepted review is on disk before the 202"
    fb.close()  # what a kill leaves on disk: no cut, no flush, only the journal

    again = buffer(tmp_path)
    assert again.restore_spool() == 3
    assert again.backlog == 3
    [(key, restored)] = again._pending.items()
    assert [r.id for r in restored] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [PurePosixPath(key).name], "restored under its own key"


def test_a_torn_last_journal_line_costs_only_that_line(tmp_path: Path) -> None:
    data = encode_batch(records("a", "b", "c"))
    (tmp_path / OPEN_JOURNAL).write_bytes(data[:-20])
    fb = buffer(tmp_path)
    assert fb.restore_spool() == 2
    assert [r.id for batch in fb._pending.values() for r in batch] == ["a", "b"]


def test_cutting_a_batch_turns_its_journal_into_the_spool_file(tmp_path: Path) -> None:
    fb = buffer(tmp_path)
    for r in records("a", "b"):
        fb.add(r)
    fb._cut()
    [name] = [n for n in spool_contents(tmp_path) if n != OPEN_JOURNAL]
    assert [r.id for r in decode_batch((tmp_path / name).read_bytes())] == ["a", "b"]
    assert not (tmp_path / OPEN_JOURNAL).exists()
    fb.add(records("c")[0])
    assert [r.id for r in decode_batch((tmp_path / OPEN_JOURNAL).read_bytes())] == ["c"], "a new batch, a new journal"
    assert fb.backlog == 3
    fb.close()
