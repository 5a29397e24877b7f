"""MinIO stops in the middle of an upload or a download: retried, and never a half-visible version.

The store's retry loop, the artifact store and MinIO are all real. The one seam is a tripwire on
the byte stream (the file being uploaded, the HTTP body being downloaded) that stops MinIO after
a set number of bytes, so the outage lands mid-transfer every time instead of whenever a timer
happens to fire. MinIO comes back when the client has logged its first retry, i.e. the client
has really seen the outage.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelloop.api.artifacts import ArtifactError, Manifest, version_prefix
from modelloop.clients.artifactstore import fetch_version, publish_version, read_manifest
from modelloop.clients.objectstore import ObjectStore, StoreConfig

pytestmark = [pytest.mark.faults, pytest.mark.integration]

T = TypeVar("T")
MODEL = "outage"
BIG = 96 << 20  # two 64 MiB multipart parts: the outage hits after the first part went up
WAIT = 120.0


class RetryWatch(logging.Handler):
    """Sets ``seen`` when the object store logs that it is retrying (it has met the outage)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "retry" in msg:
            self.messages.append(msg)
            self.seen.set()


@pytest.fixture
def retry_watch() -> Iterator[RetryWatch]:
    watch = RetryWatch()
    logger = logging.getLogger("modelloop.clients.objectstore")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


class Outage:
    """Stops MinIO once, from whichever thread trips it; brings it back from the test's main thread.

    The harness's servers die with the thread that started them (PR_SET_PDEATHSIG follows the
    thread), so a restart must not happen on a short-lived helper thread.
    """

    def __init__(self, minio: Any) -> None:
        self.minio = minio
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def trip(self) -> None:
        with self._lock:
            if not self.stopped.is_set():
                self.minio.stop()
                self.stopped.set()

    def restore(self) -> None:
        if not self.minio.alive():
            self.minio.start()


def through_outage(
    outage: Outage,
    op: Callable[[], T],
    restart_when: threading.Event | None,
    while_down: Callable[[], None] | None = None,
) -> T:
    """Run ``op`` on a worker thread; once ``restart_when`` is set, check ``while_down`` and restart MinIO."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(op)
        try:
            if restart_when is not None:
                deadline = time.monotonic() + WAIT
                while not restart_when.wait(0.05) and not future.done():
                    assert time.monotonic() < deadline, "the client never logged a retry while MinIO was down"
                if outage.stopped.is_set() and while_down is not None:
                    while_down()
        finally:
            if restart_when is not None:
                outage.restore()
            try:
                result = future.result(WAIT)
            finally:
                outage.restore()
    return result


class TripwireReader(io.RawIOBase):
    """Passes reads through to the client's stream and calls ``trip`` once ``after`` bytes have gone by."""

    def __init__(self, inner: Any, after: int, trip: Callable[[], None]) -> None:
        self._inner = inner
        self._after = after
        self._trip = trip
        self._read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._inner.read(size)
        self._read += len(data)
        if self._read > self._after:
            self._trip()
        return data


def _tripwire_uploads(mp: pytest.MonkeyPatch, store: ObjectStore, big_key_suffix: str, outage: Outage) -> None:
    """Make the store's uploads of the big file read through a tripwire (the first attempt only)."""
    real_put = store.client.put_object
    armed = {"on": True}

    def put_object(bucket: str, key: str, data: Any, length: int, **kw: Any) -> Any:
        if armed["on"] and key.endswith(big_key_suffix):
            armed["on"] = False
            data = TripwireReader(data, after=70 << 20, trip=outage.trip)
        return real_put(bucket, key, data, length, **kw)

    mp.setattr(store.client, "put_object", put_object)


def _tripwire_downloads(mp: pytest.MonkeyPatch, store: ObjectStore, big_key_suffix: str, outage: Outage) -> None:
    real_get = store.client.get_object
    armed = {"on": True}

    def get_object(bucket: str, key: str, *a: Any, **kw: Any) -> Any:
        resp = real_get(bucket, key, *a, **kw)
        if armed["on"] and key.endswith(big_key_suffix):
            armed["on"] = False
            real_stream = resp.stream

            def stream(amt: int = 65536, decode_content: bool | None = None) -> Iterator[bytes]:
                for i, block in enumerate(real_stream(amt, decode_content=decode_content)):
                    if i == 1:
                        outage.trip()
                    yield block

            mp.setattr(resp, "stream", stream)
        return resp

    mp.setattr(store.client, "get_object", get_object)


def _version_dir(root: Path) -> Path:
    d = root / "src"
    d.mkdir()
    (d / "metrics.json").write_text('{"accuracy": 0.97}')
    with (d / "model.safetensors").open("wb") as f:
        for _ in range(BIG >> 20):
            f.write(os.urandom(1 << 20))
    (d / "training-curve.png").write_bytes(os.urandom(4096))
    return d


def _manifest(version: str) -> Manifest:
    return Manifest(model=MODEL, version=version, created_at=datetime.now(UTC), files=[])


def _store(minio: Any, bucket: str, attempts: int) -> ObjectStore:
    cfg = StoreConfig(minio.endpoint, minio.access_key, minio.secret_key, bucket)
    return ObjectStore(cfg, attempts=attempts, base_delay=0.2, max_delay=1.0)


def _keys(store: ObjectStore, prefix: str) -> set[str]:
    return {k[len(prefix) :] for k in store.list_keys(prefix)}


def test_upload_survives_minio_restart_mid_transfer(
    minio: Any, bucket: str, tmp_path: Path, retry_watch: RetryWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _version_dir(tmp_path)
    store = _store(minio, bucket, attempts=40)
    observer = _store(minio, bucket, attempts=40)
    prefix = version_prefix(MODEL, "v1")
    outage = Outage(minio)
    _tripwire_uploads(monkeypatch, store, "model.safetensors", outage)

    digest = through_outage(outage, lambda: publish_version(store, _manifest("v1"), src), retry_watch.seen)

    assert outage.stopped.is_set(), "the tripwire never fired: the outage did not happen mid-upload"
    assert retry_watch.messages, "the upload succeeded without retrying, so it never met the outage"
    assert _keys(observer, prefix) == {"manifest.json", "metrics.json", "model.safetensors", "training-curve.png"}
    manifest, read_digest = read_manifest(observer, MODEL, "v1")
    assert read_digest == digest
    assert {f.path: f.size for f in manifest.files}["model.safetensors"] == BIG
    fetched = fetch_version(observer, MODEL, "v1", tmp_path / "fetched", expected_digest=digest)
    assert (tmp_path / "fetched" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert [f.path for f in fetched.files] == [f.path for f in manifest.files]


def test_upload_that_gives_up_leaves_no_manifest(
    minio: Any, bucket: str, tmp_path: Path, retry_watch: RetryWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _version_dir(tmp_path)
    store = _store(minio, bucket, attempts=2)
    observer = _store(minio, bucket, attempts=40)
    outage = Outage(minio)
    _tripwire_uploads(monkeypatch, store, "model.safetensors", outage)

    with pytest.raises(Exception) as failure:
        through_outage(outage, lambda: publish_version(store, _manifest("v1"), src), restart_when=None)

    assert outage.stopped.is_set()
    assert retry_watch.messages, f"gave up without retrying: {failure.value!r}"
    prefix = version_prefix(MODEL, "v1")
    left = _keys(observer, prefix)
    assert "manifest.json" not in left, f"a failed publish left a manifest: {sorted(left)}"
    assert "metrics.json" in left, "the files before the big one should be there (the outage came mid-way)"
    with pytest.raises(ArtifactError, match="never completed"):
        fetch_version(observer, MODEL, "v1", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_download_survives_minio_restart_mid_transfer(
    minio: Any, bucket: str, tmp_path: Path, retry_watch: RetryWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _version_dir(tmp_path)
    digest = publish_version(_store(minio, bucket, attempts=40), _manifest("v2"), src)
    dest = tmp_path / "serving" / "model"
    dest.parent.mkdir()
    store = _store(minio, bucket, attempts=40)
    outage = Outage(minio)
    _tripwire_downloads(monkeypatch, store, "model.safetensors", outage)

    def dest_absent_while_down() -> None:
        assert not dest.exists(), "the model dir appeared before the download was complete and verified"

    through_outage(
        outage,
        lambda: fetch_version(store, MODEL, "v2", dest, expected_digest=digest),
        retry_watch.seen,
        while_down=dest_absent_while_down,
    )

    assert outage.stopped.is_set(), "the tripwire never fired: the outage did not happen mid-download"
    assert retry_watch.messages
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"], "temporary download dirs were left behind"


def test_download_that_gives_up_keeps_the_old_model(
    minio: Any, bucket: str, tmp_path: Path, retry_watch: RetryWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _version_dir(tmp_path)
    publisher = _store(minio, bucket, attempts=40)
    publish_version(publisher, _manifest("v1"), src)
    (src / "metrics.json").write_text('{"accuracy": 0.99}')
    publish_version(publisher, _manifest("v2"), src)
    dest = tmp_path / "serving" / "model"
    fetch_version(publisher, MODEL, "v1", dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    store = _store(minio, bucket, attempts=2)
    outage = Outage(minio)
    _tripwire_downloads(monkeypatch, store, "model.safetensors", outage)
    with pytest.raises(Exception):  # noqa: B017 - whichever transport error the outage produced
        through_outage(outage, lambda: fetch_version(store, MODEL, "v2", dest), restart_when=None)

    assert outage.stopped.is_set()
    assert retry_watch.messages
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before, "the old model was touched by a failed fetch"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"], "temporary download dirs were left behind"
