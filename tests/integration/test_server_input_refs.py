"""Inputs by reference, and inputs sent inline stored for training, on a real server and a real MinIO,
with the laundry image model.

A photo uploaded under ``s3://<bucket>/laundry/inputs/`` and named in an OIP BYTES input flagged
``content_type: reference`` must answer exactly as the same bytes sent inline (one decode path),
through the stock ``tritonclient`` as well as raw JSON; every refusal is the status the docs
promise (docs/models.md, "Inputs by reference") with a message naming the field; a store that
does not answer is a 503 with Retry-After within the timeout, never a 500 or a hung worker. A photo
sent inline is stored under ``<model>/inline-inputs/<sha256>`` and its review reaches the trainer's
index like a referenced one.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from test_server_support import start_server
from tritonclient.utils import InferenceServerException

from modelloop.api.artifacts import feedback_prefix
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, free_port, wait_for
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import png, swatch
from modelloop_trainer.feedback import load_feedback
from modelloop_trainer.streaming import IndexedDataset, Sample, StoreSource

MODEL = "laundry"
PLUGIN_REF = "modelloop_trainer.examples.laundry:LaundryPlugin"
SIZE = 64  # the model's input side: small, so a CPU-starved test machine answers quickly
MAX_REF_BYTES = 40_000
BUCKET = "inputrefs"
INFER = f"/v2/models/{MODEL}/infer"


def photos(n: int, seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [png(swatch(rng, SIZE, defect=i % 2 == 1).pixels) for i in range(n)]


def stop(proc: ManagedProcess) -> None:
    proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log, proc.log_tail()


def laundry_server(tmp: Path, **env: str) -> tuple[ManagedProcess, str]:
    proc, url, _ = start_server(
        tmp,
        plugin=(LaundryPlugin(image_size=SIZE, env={}), PLUGIN_REF),
        model=MODEL,
        # No MODELLOOP_LAUNDRY_IMAGE_SIZE (its default is 224): the versions' manifests say SIZE.
        MODELLOOP_MAX_BODY_BYTES=str(1 << 20),
        MODELLOOP_INPUT_REF_MAX_BYTES=str(MAX_REF_BYTES),
        **env,
    )
    return proc, url


@pytest.fixture(scope="module")
def store(minio: MinioServer) -> ObjectStore:
    s = minio.store(BUCKET)
    for i, image in enumerate(photos(3)):
        s.put_bytes(f"{MODEL}/inputs/{i}.png", image, "image/png")
    s.put_bytes(f"{MODEL}/inputs/notes.txt", b"this is not an image", "text/plain")
    s.put_bytes(f"{MODEL}/inputs/huge.png", b"\x89PNG" + bytes(MAX_REF_BYTES), "image/png")
    s.put_bytes(f"{MODEL}/secret.png", photos(1)[0], "image/png")
    minio.store("elsewhere").put_bytes(f"{MODEL}/inputs/0.png", photos(1)[0], "image/png")
    return s


@pytest.fixture(scope="module")
def server(minio: MinioServer, store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = laundry_server(tmp_path_factory.mktemp("server"), **minio.env(BUCKET))
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.removeprefix("http://"))
    try:
        yield c
    finally:
        c.close()


def ref(key: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{key}"


def by_reference(*refs: str) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "BYTES", "shape": [len(refs)], "data": list(refs)}
    return {"inputs": [{**tensor, "parameters": {"content_type": "reference"}}]}


def stock_infer(client: triton.InferenceServerClient, items: list[bytes], **kw: Any) -> tuple[np.ndarray, list[bytes]]:
    x = triton.InferInput("input", [len(items)], "BYTES")
    x.set_data_from_numpy(np.array(items, dtype=np.object_))
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")]
    result = client.infer(MODEL, [x], outputs=outputs, **kw)
    return result.as_numpy("probabilities"), list(result.as_numpy("label"))


def test_a_reference_answers_as_the_same_bytes_inline(client: triton.InferenceServerClient, server: str) -> None:
    images = photos(3)
    inline, inline_labels = stock_infer(client, images)
    keys = [f"{MODEL}/inputs/{i}.png" for i in range(3)]
    referenced, labels = stock_infer(client, [ref(k).encode() for k in keys], parameters={"content_type": "reference"})
    assert inline.shape == (3, 2)
    np.testing.assert_allclose(referenced, inline, rtol=1e-6, atol=1e-7)
    assert labels == inline_labels
    raw = httpx.post(f"{server}{INFER}", json=by_reference(*(ref(k) for k in keys)), timeout=30)
    assert raw.status_code == 200, raw.text
    probs = next(o for o in raw.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(np.array(probs["data"]).reshape(3, 2), inline, rtol=1e-6, atol=1e-7)


def test_the_server_takes_the_image_size_from_the_versions_manifest_not_its_environment(
    client: triton.InferenceServerClient, server: str
) -> None:
    """The server's environment leaves MODELLOOP_LAUNDRY_IMAGE_SIZE at its default (224); the version was
    trained at SIZE and its manifest says so, which is what metadata, FP32 shapes and photo decoding follow."""
    assert client.get_model_metadata(MODEL)["inputs"][0]["shape"] == [-1, 3, SIZE, SIZE]
    pixels = np.full((1, 3, SIZE, SIZE), 0.5, dtype=np.float32)
    fp32 = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]
    }
    r = httpx.post(f"{server}{INFER}", json=fp32, timeout=30)
    assert r.status_code == 200, r.text
    wrong = {"inputs": [{**fp32["inputs"][0], "shape": [1, 3, 224, 224], "data": [0.5] * (3 * 224 * 224)}]}
    r = httpx.post(f"{server}{INFER}", json=wrong, timeout=30)
    assert r.status_code == 400 and f"it takes [-1, 3, {SIZE}, {SIZE}]" in r.json()["error"], r.text


def stored_total(server: str) -> float:
    for line in httpx.get(f"{server}/metrics", timeout=10).text.splitlines():
        if line.startswith("modelloop_server_inline_inputs_stored_total "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("modelloop_server_inline_inputs_stored_total not in /metrics")


def test_a_photo_sent_inline_is_stored_and_its_review_reaches_the_trainers_index(
    client: triton.InferenceServerClient, server: str, store: ObjectStore
) -> None:
    image = photos(1, seed=11)[0]
    sha = hashlib.sha256(image).hexdigest()
    stored = f"s3://{BUCKET}/{MODEL}/inline-inputs/{sha}"
    before = stored_total(server)
    stock_infer(client, [image], request_id="TASK-inline-1")
    stock_infer(client, [image], request_id="TASK-inline-2")  # the same photo again: the same object
    wait_for(lambda: stored_total(server) == before + 1, 30, "the inline photo stored in the bucket")
    assert store.get_bytes(f"{MODEL}/inline-inputs/{sha}") == image
    for rid in ("TASK-inline-1", "TASK-inline-2"):
        review = httpx.post(
            f"{server}/v1/feedback", json={"id": rid, "label": "defect", "reason": "missed stain"}, timeout=30
        )
        assert review.status_code == 202, review.text

    through = max(store.list_keys(feedback_prefix(MODEL)))
    plugin = LaundryPlugin(image_size=SIZE, env={})
    feedback = load_feedback(store, plugin, MODEL, through)
    assert feedback.refs == [Sample(stored, 1), Sample(stored, 1)] and feedback.stored_inline == 2
    assert feedback.skipped == {}
    streamed = IndexedDataset(plugin, feedback.refs, StoreSource(store.config, "datasets/laundry"))
    x, label = streamed[0]
    assert label == 1 and torch.equal(x, plugin.decode_bytes(image))
    assert stored_total(server) == before + 1, "the repeated photo is not stored again"


REFUSALS = [
    pytest.param(by_reference(ref(f"{MODEL}/secret.png")), 403,
                 f"inputs[0].data[0]: s3://{BUCKET}/{MODEL}/secret.png is outside the prefixes this server reads "
                 f"inputs from (s3://{BUCKET}/{MODEL}/inputs/)", id="outside-the-prefix"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/0.png", "elsewhere")), 403,
                 f"inputs[0].data[0]: s3://elsewhere/{MODEL}/inputs/0.png is outside", id="another-bucket"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/../secret.png")), 400,
                 "inputs[0].data[0]: the key has an empty, '.' or '..' path segment", id="dot-dot"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/0.png"), "http://169.254.169.254/latest/meta-data"), 400,
                 "inputs[0].data[1]: must be s3://<bucket>/<key>", id="not-s3"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/gone.png")), 404,
                 f"inputs[0].data[0]: no object at s3://{BUCKET}/{MODEL}/inputs/gone.png (bucket {BUCKET!r}, "
                 f"key '{MODEL}/inputs/gone.png')", id="missing"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/0.png"), ref(f"{MODEL}/inputs/huge.png")), 413,
                 f"inputs[0].data[1]: s3://{BUCKET}/{MODEL}/inputs/huge.png is {MAX_REF_BYTES + 4:,} bytes; the "
                 f"limit for a referenced input is {MAX_REF_BYTES:,} bytes", id="too-big"),
    pytest.param(by_reference(ref(f"{MODEL}/inputs/notes.txt")), 422,
                 f"inputs[0].data[0] (s3://{BUCKET}/{MODEL}/inputs/notes.txt): not a readable image",
                 id="undecodable"),
    pytest.param({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "data": [0.5],
                              "parameters": {"content_type": "reference"}}]}, 400,
                 "inputs[0].parameters.content_type: 'reference' needs datatype BYTES", id="fp32-flagged"),
    pytest.param({**by_reference(), "inputs": [{**by_reference("x")["inputs"][0], "shape": [1, 2]}]}, 400,
                 "inputs[0].shape: references take shape [N]", id="wrong-shape"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message"), REFUSALS)
def test_refused_references_get_the_documented_status_naming_the_field(
    server: str, body: dict[str, Any], status: int, message: str
) -> None:
    r = httpx.post(f"{server}{INFER}", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"].startswith(message), r.json()["error"]


def test_the_stock_client_sees_why_and_the_metrics_count_it(client: triton.InferenceServerClient, server: str) -> None:
    with pytest.raises(InferenceServerException) as e:
        stock_infer(client, [ref(f"{MODEL}/secret.png").encode()], parameters={"content_type": "reference"})
    assert "inputs[0].data[0]: s3://" in str(e.value) and "is outside the prefixes" in str(e.value)
    text = httpx.get(f"{server}/metrics", timeout=10).text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("modelloop_server_input_ref"))
    assert float(samples['modelloop_server_input_ref_failures_total{reason="forbidden"}']) >= 1
    assert float(samples["modelloop_server_input_ref_fetches_total"]) >= 3
    assert float(samples["modelloop_server_input_ref_bytes_total"]) >= sum(len(p) for p in photos(3))
    assert float(samples["modelloop_server_input_ref_fetch_seconds_count"]) >= 3


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An "object store" that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(64)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_store_that_does_not_answer_is_a_503_with_retry_after_within_the_timeout(
    minio: MinioServer, blackhole: str, tmp_path: Path
) -> None:
    env = {**minio.env(BUCKET), "MODELLOOP_S3_ENDPOINT": blackhole, "MODELLOOP_INPUT_REF_TIMEOUT_SECONDS": "1"}
    proc, url = laundry_server(tmp_path, **env)
    try:
        started = time.monotonic()
        r = httpx.post(f"{url}{INFER}", json=by_reference(ref(f"{MODEL}/inputs/0.png")), timeout=30)
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"].startswith("inputs[0]")
        assert "retry shortly" in r.json()["error"]
        assert took < 10, f"the 1 s fetch deadline took {took:.1f}s"
        assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        stop(proc)
