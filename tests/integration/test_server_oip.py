"""The Open Inference Protocol (KServe v2 REST) on a real server process, driven by a stock client.

``tritonclient[http]`` is used exactly as its users would use it, unchanged: if our paths, field
names or binary framing drifted from the protocol, it would fail here. Answers are compared with
``/v1/predict``'s for the same inputs on the same server, and every malformed request must get a
4xx whose ``{"error": ...}`` names the field.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from test_server_support import start_server
from tritonclient.utils import InferenceServerException

from modelloop_trainer.examples.digits import DigitsPlugin

MODEL = "digits"
SERVED = "v2"  # start_server publishes v1 and v2; the newest is loaded at start-up
ROWS = 5


def inputs(rows: int = ROWS, seed: int = 3) -> np.ndarray:
    rnd = random.Random(seed)
    return np.array([[float(rnd.randint(0, 16)) for _ in range(64)] for _ in range(rows)], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url, _ = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield url
    finally:
        proc.stop()
        log = proc.log_path.read_text()
        assert "Application shutdown complete" in log, proc.log_tail()
        assert "Traceback" not in log, proc.log_tail()


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.removeprefix("http://"))
    try:
        yield c
    finally:
        c.close()


def v1_predict(url: str, x: np.ndarray) -> list[dict[str, Any]]:
    r = httpx.post(f"{url}/v1/predict", json={"inputs": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    predictions: list[dict[str, Any]] = r.json()["predictions"]
    return predictions


def test_health_and_metadata_through_the_stock_client(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, SERVED)
    assert not client.is_model_ready(MODEL, "v1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "modelloop"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL
    assert meta["versions"] == [SERVED]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "predicted", "datatype": "INT64", "shape": [-1]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["parameters"]["class_names"] == list(DigitsPlugin.class_names)
    assert meta["parameters"]["value_range"] == [0.0, 16.0]
    assert client.get_model_metadata(MODEL, SERVED) == meta
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata(MODEL, "v1")
    assert missing.value.status() == "404"
    assert f"this server serves version {SERVED}" in missing.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_through_the_stock_client_answers_as_v1_predict(
    server: str, client: triton.InferenceServerClient, binary: bool
) -> None:
    x = inputs()
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "predicted", "label")]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id="req-42")
    expected = v1_predict(server, x)

    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["model_name"] == MODEL
    assert response["model_version"] == SERVED
    probs = result.as_numpy("probabilities")
    assert probs is not None and probs.dtype == np.float32 and probs.shape == (ROWS, 10)
    np.testing.assert_array_equal(probs, np.array([p["probabilities"] for p in expected], dtype=np.float32))
    np.testing.assert_array_equal(result.as_numpy("predicted"), [p["predicted"] for p in expected])
    labels = result.as_numpy("label")
    assert labels is not None
    assert [v.decode() if isinstance(v, bytes) else v for v in labels] == [p["className"] for p in expected]


def test_infer_with_default_outputs_and_classification(client: triton.InferenceServerClient, server: str) -> None:
    """No outputs asked: all of them, in binary (what tritonclient requests); class_count: top k as score:index:label."""
    x = inputs(2, seed=9)
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(MODEL, [tensor], model_version=SERVED)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "predicted", "label"]
    expected = v1_predict(server, x)
    top = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    best = top.as_numpy("probabilities")
    assert best is not None and best.shape == (2, 3)
    for row, p in zip(best, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == p["predicted"] and label == p["className"]
        assert float(score) == pytest.approx(p["confidence"], abs=1e-6)


def test_json_data_nested_or_flat_and_outputs_honoured(server: str) -> None:
    x = inputs(3, seed=5)
    url = f"{server}/v2/models/{MODEL}/versions/{SERVED}/infer"
    answers = []
    for data in (x.tolist(), x.reshape(-1).tolist()):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": data}]}
        body["outputs"] = [{"name": "predicted"}]
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == SERVED
        answers.append(r.json())
    ids = [(a.pop("id"), a.pop("parameters")["prediction_ids"]) for a in answers]
    assert answers[0] == answers[1]
    assert [o["name"] for o in answers[0]["outputs"]] == ["predicted"]
    assert answers[0]["outputs"][0]["data"] == [p["predicted"] for p in v1_predict(server, x)]
    assert ids[0] != ids[1], "every answer gets its own prediction id (test_server_receipts.py reviews them)"
    assert ids[0][1].split(",") == [f"{ids[0][0]}.{row}" for row in range(3)], "one id per row, for reviews"


def _tensor(**overrides: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": inputs(1).reshape(-1).tolist()}
    t.update(overrides)
    return t


def _body(*tensors: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(tensors) or [_tensor()], **fields}).encode()


def _binary(values: np.ndarray, shape: list[int], size: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = values.astype("<f4").tobytes()
    head = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                     "parameters": {"binary_data_size": len(raw) if size is None else size}}]}
    ).encode()  # fmt: skip
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


INFER = f"/v2/models/{MODEL}/infer"
NAN, _ = _binary(np.full(64, np.nan), [1, 64])
NAN_HEADERS = _binary(np.full(64, np.nan), [1, 64])[1]
SHORT, SHORT_HEADERS = _binary(np.zeros(3), [1, 64])
JUNK_HEAD = json.dumps(_tensor()).encode()

BAD: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("wrong datatype", INFER, _body(_tensor(datatype="INT64")), {}, 400,
     "inputs[0].datatype: this model takes FP32, got 'INT64'"),
    ("BYTES without a decoder", INFER, _body(_tensor(datatype="BYTES", shape=[1], data=["aGk="])), {}, 400,
     "inputs[0].datatype: this model takes FP32 tensors of shape [-1, 64]; BYTES"),
    ("element count vs shape", INFER, _body(_tensor(shape=[2, 64])), {}, 400,
     "inputs[0].data has 64 elements but inputs[0].shape [2, 64] needs 128"),
    ("wrong feature dimension", INFER, _body(_tensor(shape=[2, 32])), {}, 400,
     "inputs[0].shape [2, 32] does not fit the model: it takes [-1, 64]"),
    ("no batch dimension", INFER, _body(_tensor(shape=[64])), {}, 400, "inputs[0].shape [64] does not fit the model"),
    ("NaN in binary data", INFER, NAN, NAN_HEADERS, 400, "inputs[0].data: row 0: contains NaN"),
    ("NaN literal in JSON", INFER, b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
     {}, 400, "NaN and Infinity are not valid JSON numbers"),
    ("overflow to inf", INFER, _body(_tensor(data=[1e39] * 64)), {}, 400, "inputs[0].data: row 0: contains NaN"),
    ("out of value_range", INFER, _body(_tensor(data=[17.0] * 64)), {}, 400,
     "inputs[0].data: row 0: values must lie in [0, 16], got [17, 17]"),
    ("strings as FP32", INFER, _body(_tensor(data=["1"] * 64)), {}, 400,
     "inputs[0].data: every value must be a number for FP32, got str"),
    ("booleans as FP32", INFER, _body(_tensor(data=[True] * 64)), {}, 400, "every value must be a number for FP32, got bool"),
    ("wrong input name", INFER, _body(_tensor(name="x")), {}, 400, "inputs[0].name: this model's input is named 'input'"),
    ("two inputs", INFER, _body(_tensor(), _tensor()), {}, 400, "exactly one input tensor named 'input', got 2"),
    ("batch over the limit", INFER, _body(_tensor(shape=[9, 64], data=[0.0] * 576)), {}, 400,
     "inputs[0].shape: batch of 9 rows exceeds the limit of 8"),
    ("unknown output", INFER, _body(outputs=[{"name": "logits"}]), {}, 400, "outputs[0].name: unknown output 'logits'"),
    ("binary size vs shape", INFER, SHORT, SHORT_HEADERS, 400,
     "inputs[0].parameters.binary_data_size is 12 bytes; shape [1, 64] of FP32 needs 256"),
    ("binary size past the body", INFER, *_binary(np.zeros(64), [1, 64], size=1024), 400,
     "binary_data_size is 1024 bytes but only 256 binary bytes follow"),
    ("header length past the body", INFER, _body(), {"Inference-Header-Content-Length": "99999"}, 400,
     "Inference-Header-Content-Length is 99999"),
    ("malformed JSON", INFER, b'{"inputs": [', {}, 400, "request body is not valid JSON"),
    ("not an object", INFER, b"[1, 2]", {}, 400, "request body must be a JSON object with inputs"),
    ("empty body", INFER, b"", {}, 400, "empty request body"),
    ("unknown top-level field", INFER, _body(input=[1]), {}, 400, "unknown field(s) input"),
    ("oversized", INFER, b'{"inputs": [' + b"1," * 40_000 + b"1]}", {}, 413, "exceeds the limit of 65536 bytes"),
    ("unknown model", "/v2/models/nope/infer", _body(), {}, 404, "model 'nope' is not served here; this server serves 'digits'"),
    ("version not served", f"/v2/models/{MODEL}/versions/v1/infer", _body(), {}, 404,
     f"model 'digits' version 'v1' is not served here; this server serves version {SERVED}"),
    ("gzip body", INFER, _body(), {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "path", "body", "headers", "status", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_infer_requests_get_a_4xx_naming_the_field(
    server: str, case: str, path: str, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    r = httpx.post(f"{server}{path}", content=body, headers=headers, timeout=30)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
    error = r.json()
    assert set(error) == {"error"}, error
    assert fragment in error["error"], f"{case}: {error['error']!r} lacks {fragment!r}"


def test_the_stock_client_sees_the_servers_message(client: triton.InferenceServerClient) -> None:
    """What a tritonclient user reads when the server refuses: our message, unchanged, and the status."""
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), 99.0, dtype=np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [tensor])
    assert refused.value.status() == "400"
    assert "inputs[0].data: row 0: values must lie in [0, 16], got [99, 99]" in refused.value.message()
    bad = triton.InferInput("input", [1, 64], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 64), dtype=np.int32))
    with pytest.raises(InferenceServerException) as wrong_type:
        client.infer(MODEL, [bad])
    assert "inputs[0].datatype: this model takes FP32, got 'INT32'" in wrong_type.value.message()


def test_server_metadata_and_readiness_raw(server: str) -> None:
    assert httpx.get(f"{server}/v2/health/live").status_code == 200
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server}/v2/models/{MODEL}/versions/v1/ready").status_code == 404
    r = httpx.get(f"{server}/v2/models/nope")
    assert r.status_code == 404 and "this server serves 'digits'" in r.json()["error"]


def test_binary_framing_is_what_the_extension_says(server: str) -> None:
    """Raw bytes, no client library: header length, then each binary output in order, FP32 little-endian."""
    x = inputs(1, seed=11)
    body, headers = _binary(x, [1, 64])
    req = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    req["parameters"] = {"binary_data_output": True}
    head = json.dumps(req).encode()
    r = httpx.post(
        f"{server}{INFER}",
        content=head + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert sizes[:2] == [40, 8] and n + sum(sizes) == len(r.content)
    probs = np.frombuffer(r.content[n : n + 40], dtype="<f4")
    expected = v1_predict(server, x)[0]
    np.testing.assert_array_equal(probs, np.array(expected["probabilities"], dtype=np.float32))
    (length,) = struct.unpack_from("<I", r.content, n + 48)
    assert r.content[n + 52 : n + 52 + length].decode() == expected["className"]


def test_a_full_queue_sheds_oip_requests_with_429(tmp_path: Path) -> None:
    """OIP infer shares /v1/predict's inference queue and its bound: bursts past it get 429 + Retry-After."""
    proc, url, _ = start_server(tmp_path, MODELLOOP_INFERENCE_THREADS="1", MODELLOOP_MAX_QUEUED_ROWS="8")
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [8, 64], "data": inputs(8).tolist()}]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return await asyncio.gather(*(http.post(INFER, json=body) for _ in range(48)))

    try:
        shed: list[httpx.Response] = []
        total = 0
        deadline = time.monotonic() + 60
        while not shed and time.monotonic() < deadline:
            answers = asyncio.run(burst())
            assert {r.status_code for r in answers} <= {200, 429}, {r.status_code: r.text for r in answers}
            assert any(r.status_code == 200 for r in answers), "a request that finds the queue empty is taken"
            shed = [r for r in answers if r.status_code == 429]
            total += len(shed)
        assert shed, "48 concurrent 8-row requests never filled an 8-row queue in 60 s"
        assert shed[0].headers["retry-after"] == "1"
        assert "the server is overloaded" in shed[0].json()["error"]
        metrics = httpx.get(f"{url}/metrics").text
        assert f"modelloop_server_shed_requests_total {float(total)}" in metrics, "each shed OIP request is counted"
    finally:
        proc.stop()


def _predictions_by_class(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        s.labels["class"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelloop_server_predictions_total" and s.labels.get("version") == SERVED
    }


def test_predictions_are_counted_by_class_name(server: str) -> None:
    before = _predictions_by_class(server)
    x = inputs(ROWS, seed=11)
    answers = v1_predict(server, x)
    after = _predictions_by_class(server)
    assert set(after) <= set(DigitsPlugin.class_names), "only the model's declared class names label the series"
    grown = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    expected: dict[str, float] = {}
    for a in answers:
        expected[a["className"]] = expected.get(a["className"], 0.0) + 1
    assert grown == expected
