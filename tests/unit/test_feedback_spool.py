"""What a restarted server recovers from the feedback spool a previous run left behind."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from modelloop.api.feedback import FeedbackRecord, batch_key, decode_batch, encode_batch, feedback_prefix
from modelloop_server.feedback import OPEN_JOURNAL, FeedbackBuffer
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


def test_a_spool_that_cannot_be_written_keeps_the_batch_in_memory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_text("a file where the spool directory should be")
    fb = buffer(spool)
    fb.add(records("a")[0])
    fb._cut()
    assert fb.backlog == 1, "the batch stays in memory when the spool cannot be written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]
    assert spool.read_text() == "a file where the spool directory should be"


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
