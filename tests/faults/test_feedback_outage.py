"""Spool mode: MinIO is down while reviewers keep sending feedback: every review is taken, none is lost or stored twice.

The servers here run ``MODELLOOP_FEEDBACK_DURABILITY=spool`` (the default, write-through, answers 503
while MinIO is down instead: tests/integration/test_server_feedback.py). A real ``modelloop-server`` process and the real MinIO. Reviews arrive before, during and after an
outage that also spans a server restart (SIGTERM, as the kubelet sends it); the spool on the model
volume is what carries them across. The assertions are on the bucket's batches (decoded with the
real decoder), the spool directory and ``/metrics``. Only the one documented refusal, a backlog past
``MODELLOOP_FEEDBACK_MAX_BACKLOG``, may answer 503, and what it refused must not be stored.
"""

from __future__ import annotations

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
from modelloop_server.feedback import OPEN_JOURNAL
from modelloop_server.settings import DEFAULT_SPOOL_DIR_NAME as SPOOL_DIR
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BIN = Path(sys.executable).parent
MODEL = "digits"
BATCH = 4
BEFORE, DURING, AFTER_RESTART = 6, 11, 5
WAIT = 120.0


class Server:
    """One server process on a fixed port and model volume, so a restart finds the same spool."""

    def __init__(self, tmp: Path, s3_env: dict[str, str], **env: str) -> None:
        self.model_dir = tmp / "models"
        self.model_dir.mkdir(parents=True)
        write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, self.model_dir, MODEL, "v1", 1)
        self.spool = self.model_dir / SPOOL_DIR
        self.url = f"http://127.0.0.1:{free_port()}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
        self.base_env = {
            **base,
            **s3_env,
            c.ENV_MODEL: MODEL,
            "MODELLOOP_MODEL_DIR": str(self.model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
            "MODELLOOP_REVIEW_AUTH": "off",  # no sidecar here; reviews are authenticated in test_review_auth.py
            "MODELLOOP_PORT": self.url.rsplit(":", 1)[1],
            "MODELLOOP_FEEDBACK_BATCH": str(BATCH),
            "MODELLOOP_FEEDBACK_FLUSH_SECONDS": "1",
            "MODELLOOP_FEEDBACK_DURABILITY": "spool",
            **env,
        }
        self.proc = ManagedProcess("server", [BIN / "modelloop-server"], tmp / "server.log", env=self.base_env)

    def start(self, **env: str) -> None:
        self.proc.env = {**self.base_env, **env}
        self.proc.start()
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, WAIT, "server ready", self.proc)

    def stop(self) -> None:
        """SIGTERM; the lifespan's last flush must finish (or spool) before the process exits."""
        self.proc.stop(timeout=60)

    def review(self, review_id: str, i: int) -> httpx.Response:
        """Ask (with our own id), then review that answer by its id."""
        x = [float((i * 5 + k) % 16) for k in range(64)]
        answered = httpx.post(f"{self.url}/v1/predict", json={"input": x, "id": review_id}, timeout=30)
        assert answered.status_code == 200, answered.text
        return httpx.post(f"{self.url}/v1/feedback", json={"id": review_id, "label": (i * 3) % 10}, timeout=30)

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} is not in /metrics")

    def spooled(self) -> list[FeedbackRecord]:
        return [r for p in sorted(self.spool.glob("*.jsonl")) for r in decode_batch(p.read_bytes())]

    def log(self) -> str:
        return self.proc.log_path.read_text()


def stored(store: ObjectStore) -> list[FeedbackRecord]:
    return [r for k in store.list_keys(feedback_prefix(MODEL)) for r in decode_batch(store.get_bytes(k))]


@pytest.fixture
def minio_back(minio: MinioServer) -> Iterator[MinioServer]:
    """MinIO is up again after the test, whatever happened (the session's other tests share it)."""
    yield minio
    if not minio.alive():
        minio.start()


def accept_all(server: Server, prefix: str, count: int, offset: int) -> list[str]:
    ids = []
    for i in range(count):
        review_id = f"{prefix}-{i}"
        r = server.review(review_id, offset + i)
        assert r.status_code == 202, f"review {review_id} was not accepted: HTTP {r.status_code} {r.text}"
        assert r.json()["id"] == review_id
        ids.append(review_id)
    return ids


def test_feedback_sent_during_an_outage_and_a_restart_is_stored_exactly_once(
    minio_back: MinioServer, bucket: str, tmp_path: Path
) -> None:
    minio = minio_back
    observer = minio.store(bucket)
    server = Server(tmp_path, minio.env(bucket))
    server.start()
    try:
        up = accept_all(server, "up", BEFORE, 0)
        wait_for(lambda: len(stored(observer)) == BEFORE, WAIT, "the reviews sent while MinIO is up", server.proc)

        minio.stop()
        down = accept_all(server, "down", DURING, BEFORE)
        wait_for(
            lambda: server.metric("modelloop_server_feedback_flush_errors_total") >= 1 and bool(server.spooled()),
            WAIT, "a failed upload and a spooled batch while MinIO is down", server.proc,
        )  # fmt: skip
        assert server.metric("modelloop_server_feedback_backlog_records") == DURING
        assert {r.id for r in server.spooled()} <= set(down)
        assert "could not store feedback batch" in server.log()
    finally:
        server.stop()

    assert Counter(r.id for r in server.spooled()) == Counter(down), "SIGTERM must leave every unstored review spooled"
    assert "not stored (object store unreachable)" in server.log()
    assert not list(server.spool.glob(".*.tmp")), "a half-written spool file was left behind"

    # the restarted server takes the spool back as backlog; the limit is then reached exactly
    server.start(MODELLOOP_FEEDBACK_MAX_BACKLOG=str(DURING + AFTER_RESTART))
    try:
        assert server.metric("modelloop_server_feedback_backlog_records") == DURING
        later = accept_all(server, "restart", AFTER_RESTART, BEFORE + DURING)
        refused = server.review("refused-0", 99)
        assert refused.status_code == 503, refused.text
        assert "waiting for the object store" in refused.json()["error"]
        assert server.metric("modelloop_server_feedback_backlog_records") == DURING + AFTER_RESTART

        minio.start()
        expected = set(up + down + later)
        wait_for(
            lambda: {r.id for r in stored(observer)} == expected,
            WAIT, "every accepted review in the bucket after MinIO came back", server.proc,
        )  # fmt: skip
        wait_for(
            lambda: server.metric("modelloop_server_feedback_backlog_records") == 0,
            WAIT, "the backlog gauge back to 0", server.proc,
        )  # fmt: skip
        assert server.metric("modelloop_server_feedback_flushed_records_total") == DURING + AFTER_RESTART
    finally:
        server.stop()

    records = stored(observer)
    counts = Counter(r.id for r in records)
    assert set(counts) == expected, f"missing {expected - set(counts)}, unexpected {set(counts) - expected}"
    assert [i for i, n in counts.items() if n > 1] == [], "a batch was stored twice"
    assert "refused-0" not in counts, "a review answered with 503 must not be stored"
    assert all(r.version == "v1" and len(r.input) == 64 for r in records)
    assert sorted(p.name for p in server.spool.iterdir()) == [], "the spool still holds files after the upload"


def test_reviews_in_the_open_batch_survive_a_sigkill(minio_back: MinioServer, bucket: str, tmp_path: Path) -> None:
    """An OOM kill gives no lifespan shutdown: what was answered 202 must already be on the volume."""
    observer = minio_back.store(bucket)
    server = Server(tmp_path, minio_back.env(bucket), MODELLOOP_FEEDBACK_FLUSH_SECONDS="3600")
    server.start()
    try:
        ids = accept_all(server, "killed", BATCH + 2, 0)
        wait_for(lambda: len(stored(observer)) == BATCH, WAIT, "the first full batch stored", server.proc)
        server.proc.kill_now()
        wait_for(lambda: not server.proc.alive(), WAIT, "the server to die of SIGKILL")
        assert server.proc.returncode() == -9
    finally:
        server.stop()
    journal = decode_batch((server.spool / OPEN_JOURNAL).read_bytes())
    assert [r.id for r in journal] == ids[BATCH:], "the open batch's reviews are in the journal"

    server.start(MODELLOOP_FEEDBACK_FLUSH_SECONDS="1")
    try:
        wait_for(
            lambda: Counter(r.id for r in stored(observer)) == Counter(ids),
            WAIT, "every review answered before the kill in the bucket, once", server.proc,
        )  # fmt: skip
        assert "restored 2 feedback records" in server.log()
    finally:
        server.stop()
    assert sorted(p.name for p in server.spool.iterdir()) == [], "the spool still holds files after the upload"
