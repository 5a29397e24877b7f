"""Feedback reaches the bucket.

Write-through (the default): a 2xx means the review is in the bucket; concurrent reviews share one
PUT; while MinIO is down reviews get 503 + Retry-After and nothing is acknowledged; a server killed
right after a 2xx loses nothing. Spool mode (``MODELLOOP_FEEDBACK_DURABILITY=spool``): batched,
counted by kind, flushed on SIGTERM, spooled while MinIO is down.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelloop.api import constants as c
from modelloop.api.artifacts import feedback_prefix
from modelloop.api.feedback import FeedbackRecord, decode_batch
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, free_port, wait_for
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL = "digits"
SPOOL = {"MODELLOOP_FEEDBACK_DURABILITY": "spool"}


class Server:
    def __init__(self, tmp: Path, s3_env: dict[str, str], **env: str) -> None:
        self.model_dir = tmp / "models"
        if not self.model_dir.exists():
            self.model_dir.mkdir(parents=True)
            write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, self.model_dir, MODEL, "v1", 1)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
        self.proc = ManagedProcess(
            "server",
            [BIN / "modelloop-server"],
            tmp / "server.log",
            env={
                **base,
                **s3_env,
                c.ENV_MODEL: MODEL,
                "MODELLOOP_MODEL_DIR": str(self.model_dir),
                "MODELLOOP_BIND_HOST": "127.0.0.1",
                "MODELLOOP_REVIEW_AUTH": "off",  # no sidecar here; reviews are authenticated in test_review_auth.py
                "MODELLOOP_PORT": str(port),
                **env,
            },
        )

    def start(self) -> Server:
        self.proc.start()
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, 120, "server ready", self.proc)
        return self

    def ask(self, i: int, correct: bool) -> dict[str, object]:
        """A prediction, and the review that confirms its answer or corrects it to another class."""
        x = [float((i * 7 + k) % 17) for k in range(64)]
        answer = httpx.post(f"{self.url}/v1/predict", json={"input": x}).json()
        return {"id": answer["id"], "label": answer["predicted"] if correct else (answer["predicted"] + 1) % 10}

    def review(self, i: int, correct: bool) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/feedback", json=self.ask(i, correct))

    def post_all(self, bodies: list[dict[str, object]]) -> list[httpx.Response]:
        """All reviews at once, as concurrent reviewers send them."""

        async def send() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
                return list(await asyncio.gather(*(client.post("/v1/feedback", json=b) for b in bodies)))

        return asyncio.run(send())

    def metric(self, line_start: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{line_start} not in /metrics")

    def stop(self) -> None:
        """SIGTERM, as the kubelet does; the lifespan shutdown must flush before the process exits."""
        self.proc.stop(timeout=60)
        assert "Application shutdown complete" in self.proc.log_path.read_text(), self.proc.log_tail()


def stored(store: ObjectStore) -> tuple[list[str], list[FeedbackRecord]]:
    keys = list(store.list_keys(feedback_prefix(MODEL)))
    return keys, [r for k in keys for r in decode_batch(store.get_bytes(k))]


@pytest.fixture
def store(minio: MinioServer, bucket: str) -> Iterator[ObjectStore]:
    yield minio.store(bucket)
    if not minio.alive():
        minio.start()


def test_feedback_is_spooled_batched_counted_and_flushed_on_sigterm(
    minio: MinioServer, bucket: str, store: ObjectStore, tmp_path: Path
) -> None:
    server = Server(
        tmp_path, minio.env(bucket), MODELLOOP_FEEDBACK_BATCH="10", MODELLOOP_FEEDBACK_FLUSH_SECONDS="3600", **SPOOL
    ).start()
    ids = set()
    corrections = 0
    try:
        for i in range(25):
            r = server.review(i, correct=i % 3 != 0)
            assert r.status_code == 202, r.text
            ids.add(r.json()["id"])
            corrections += int(r.json()["correction"])
        # two full batches of 10 are stored without waiting for the (hour-long) timer
        wait_for(lambda: len(stored(store)[0]) == 2, 30, "two feedback batches in the bucket", server.proc)
        assert server.metric('modelloop_server_feedback_received_total{kind="correction"}') == corrections
        assert server.metric('modelloop_server_feedback_received_total{kind="confirmation"}') == 25 - corrections
        assert server.metric("modelloop_server_feedback_backlog_records") == 5
        bad = httpx.post(f"{server.url}/v1/feedback", json={"id": next(iter(ids)), "label": 12})
        assert bad.status_code == 422 and "label must be a class index 0..9" in bad.json()["error"]
    finally:
        server.stop()

    keys, records = stored(store)
    assert len(keys) == 3 and keys == sorted(keys)
    assert {r.id for r in records} == ids
    assert sum(r.is_correction for r in records) == corrections == 9
    assert all(r.version == "v1" and r.input is not None and len(r.input) == 64 for r in records)
    assert not list((server.model_dir / ".feedback-spool").glob("*.jsonl")), "spool not cleaned after upload"


def test_spooled_feedback_survives_an_object_store_outage_across_a_restart(
    minio: MinioServer, bucket: str, store: ObjectStore, tmp_path: Path
) -> None:
    env = {"MODELLOOP_FEEDBACK_BATCH": "100", "MODELLOOP_FEEDBACK_FLUSH_SECONDS": "3600", **SPOOL}
    server = Server(tmp_path, minio.env(bucket), **env).start()
    minio.stop()
    try:
        for i in range(7):
            assert server.review(i, correct=False).status_code == 202
    finally:
        server.stop()
    spooled = list((server.model_dir / ".feedback-spool").glob("*.jsonl"))
    assert len(spooled) == 1 and len(decode_batch(spooled[0].read_bytes())) == 7
    assert "not stored (object store unreachable)" in server.proc.log_path.read_text()

    minio.start()
    again = Server(tmp_path, minio.env(bucket), **env).start()
    try:
        wait_for(lambda: len(stored(store)[1]) == 7, 60, "the spooled batch uploaded after restart", again.proc)
        assert stored(store)[0][0].endswith(spooled[0].name), "the batch keeps the key it was given"
    finally:
        again.stop()
    assert not list((server.model_dir / ".feedback-spool").glob("*.jsonl"))


def test_write_through_acknowledges_only_what_is_in_the_bucket_across_an_outage(
    minio: MinioServer, bucket: str, store: ObjectStore, tmp_path: Path
) -> None:
    server = Server(tmp_path, minio.env(bucket), MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS="1").start()
    acknowledged: list[str] = []
    try:
        together = [server.ask(i, correct=i % 2 == 0) for i in range(20)]
        answers = server.post_all(together)
        assert [r.status_code for r in answers] == [202] * 20, [r.text for r in answers if r.status_code != 202]
        acknowledged += [r.json()["id"] for r in answers]
        keys, records = stored(store)
        assert Counter(r.id for r in records) == Counter(acknowledged), "a 202 means in the bucket, before the answer"
        assert len(keys) <= 4, f"20 reviews posted together took {len(keys)} PUTs: they should share them"
        assert server.metric("modelloop_server_feedback_commit_records_count") == len(keys)

        minio.stop()
        during = [server.ask(100 + i, correct=False) for i in range(8)]
        refused = server.post_all(during)
        assert [r.status_code for r in refused] == [503] * 8, [r.text for r in refused]
        assert all(
            r.headers["Retry-After"] == "5" and "not accepted, retry later" in r.json()["error"] for r in refused
        )
        assert server.metric("modelloop_server_feedback_flush_errors_total") >= 1

        minio.start()
        retried = server.post_all(during)  # the clients retry what was refused
        assert [r.status_code for r in retried] == [202] * 8, [r.text for r in retried]
        acknowledged += [r.json()["id"] for r in retried]
        replay = httpx.post(f"{server.url}/v1/feedback", json=during[0])
        assert replay.status_code == 200 and replay.json()["replay"] is True

        last = server.ask(200, correct=False)
        answer = httpx.post(f"{server.url}/v1/feedback", json=last)
        assert answer.status_code == 202, answer.text
        acknowledged.append(answer.json()["id"])
        server.proc.kill_now()  # SIGKILL right after the 2xx: no lifespan shutdown, no flush
        wait_for(lambda: not server.proc.alive(), 30, "the killed server gone")
    finally:
        server.proc.stop(timeout=30)

    _, records = stored(store)
    assert Counter(r.id for r in records) == Counter(acknowledged), "every acknowledged review exactly once"
    assert len(acknowledged) == 29 == len(set(acknowledged))
    assert not list((server.model_dir / ".feedback-spool").glob("*")), "write-through keeps nothing on the Pod's disk"
