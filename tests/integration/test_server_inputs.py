"""Every malformed request gets a 4xx that says what to fix; none gets a 500. Real server process."""

from __future__ import annotations

import json
import math
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server_support import control, reload, start_server

from modelloop.api import constants as c
from modelloop_server.control import ControlClient
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

BIN = Path(sys.executable).parent
JSON = {"Content-Type": "application/json"}
GOOD = [float(i % 17) for i in range(64)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    proc, url, model_dir = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield url, model_dir
    finally:
        proc.stop()
        assert "Application shutdown complete" in proc.log_path.read_text(), proc.log_tail()


BAD: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("empty body", b"", JSON, 400, "empty request body"),
    ("whitespace body", b"  \n", JSON, 400, "empty request body"),
    ("invalid JSON", b'{"input": [1, 2', JSON, 400, "not valid JSON"),
    ("NaN literal", b'{"input": [NaN' + b", 0" * 63 + b"]}", JSON, 400, "NaN and Infinity are not valid JSON"),
    (
        "wrong content type",
        json.dumps({"input": GOOD}).encode(),
        {"Content-Type": "text/plain"},
        415,
        "application/json",
    ),
    ("no content type", json.dumps({"input": GOOD}).encode(), {}, 415, "no Content-Type"),
    ("huge body", b'{"input": [' + b"1," * 40_000 + b"1]}", JSON, 413, "exceeds the limit of 65536 bytes"),
    ("not an object", b"[1, 2, 3]", JSON, 422, "must be a JSON object"),
    ("neither field", b'{"x": 1}', JSON, 422, "unknown field(s) x"),
    ("both fields", json.dumps({"input": GOOD, "inputs": [GOOD]}).encode(), JSON, 422, "exactly one of"),
    ("too few values", b'{"input": [1, 2, 3]}', JSON, 422, "shape (3,) does not match the model's input shape (64,)"),
    ("nested wrong shape", json.dumps({"input": [GOOD[:32], GOOD[32:]]}).encode(), JSON, 422, "shape (2, 32)"),
    ("ragged", json.dumps({"input": [[1.0], [1.0, 2.0]]}).encode(), JSON, 422, "not a rectangular array of numbers"),
    ("strings", json.dumps({"input": ["1"] * 64}).encode(), JSON, 422, "every value must be a number, got str"),
    ("booleans", json.dumps({"input": [True] * 64}).encode(), JSON, 422, "every value must be a number, got bool"),
    ("null", json.dumps({"input": None}).encode(), JSON, 422, "input must be a list of numbers"),
    ("scalar", json.dumps({"input": 5}).encode(), JSON, 422, "input must be a list of numbers"),
    ("out of range", json.dumps({"input": [99.0] * 64}).encode(), JSON, 422, "values must lie in [0, 16]"),
    ("huge number", json.dumps({"input": [1e30] * 64}).encode(), JSON, 422, "values must lie in"),
    ("overflow to inf", b'{"input": [1e999' + b", 0" * 63 + b"]}", JSON, 400, "infinity"),
    ("empty batch", b'{"inputs": []}', JSON, 422, "empty list"),
    (
        "batch too large",
        json.dumps({"inputs": [GOOD] * 9}).encode(),
        JSON,
        422,
        "batch of 9 inputs exceeds the limit of 8",
    ),
    ("batch not a list", b'{"inputs": {"a": 1}}', JSON, 422, "'inputs' must be a list"),
    ("bad item in batch", json.dumps({"inputs": [GOOD, GOOD[:5]]}).encode(), JSON, 422, "input 1: shape (5,)"),
]


@pytest.mark.parametrize(("case", "body", "headers", "status", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_predict_requests_get_a_precise_4xx(
    server: tuple[str, Path], case: str, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    url, _ = server
    r = httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=30)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert fragment in r.json()["error"], (case, r.json())
    assert r.headers["x-request-id"] == r.json()["requestId"]


def test_predictions_name_the_version_in_body_and_headers(server: tuple[str, Path]) -> None:
    url, _ = server
    r = httpx.post(f"{url}/v1/predict", json={"input": GOOD}, headers={"X-Request-Id": "abc-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["requestId"] == "abc-1" and r.headers["x-request-id"] == "abc-1"
    assert r.headers["x-model-version"] == body["version"] == "v2"  # the newest on disk at start-up
    assert r.headers["x-model-digest"] == body["digest"] and body["digest"].startswith("sha256:")
    assert 0 <= body["predicted"] < 10 and body["className"] == str(body["predicted"])
    assert math.isclose(sum(body["probabilities"]), 1.0, rel_tol=1e-5)
    assert body["confidence"] == max(body["probabilities"])

    r = httpx.post(f"{url}/v1/predict", json={"inputs": [GOOD, [0.0] * 64, [16] * 64]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3


def test_reload_refuses_paths_outside_the_model_dir_and_bad_weights(server: tuple[str, Path], tmp_path: Path) -> None:
    url, model_dir = server
    r = reload(model_dir, "v1", tmp_path)
    assert r.status_code == 403 and "not a version directory under" in r.json()["error"]
    r = reload(model_dir, "v1", model_dir / ".." / "..")
    assert r.status_code == 403
    r = reload(model_dir, "latest", model_dir / "v1")
    assert r.status_code == 422 and "v<N>" in r.json()["error"]

    write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, "digits", "v3", 3)
    weights = model_dir / "v3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = reload(model_dir, "v3")
    assert r.status_code == 422 and "model.safetensors" in r.json()["error"], r.text
    assert httpx.get(f"{url}/readyz").json()["version"] == "v2"

    r = reload(model_dir, "v1")
    assert r.status_code == 200 and r.json()["previous"] == "v2" and not r.json()["fromMemory"]
    r = reload(model_dir, "v2")
    assert r.status_code == 200 and r.json()["fromMemory"], "rollback to the previous version must not load again"
    assert httpx.post(f"{url}/v1/predict", json={"input": GOOD}).headers["x-model-version"] == "v2"


def test_reload_is_not_served_on_the_public_port(server: tuple[str, Path]) -> None:
    """Not even from loopback: the swap is reachable only through the control socket in the Pod's volume."""
    url, model_dir = server
    for method in ("POST", "GET", "PUT"):
        r = httpx.request(method, f"{url}/v1/reload", json={"version": "v1", "path": str(model_dir / "v1")})
        assert r.status_code == 404, (method, r.status_code, r.text)
    assert httpx.get(f"{url}/readyz").json()["version"] == "v2", "the public request swapped nothing"
    socket_file = model_dir / ".control.sock"
    assert stat.S_ISSOCK(socket_file.lstat().st_mode) and stat.S_IMODE(socket_file.lstat().st_mode) == 0o660
    assert control(model_dir, "GET", "/readyz").json()["version"] == "v2"
    assert control(model_dir, "POST", "/v1/predict", {"input": GOOD}).status_code == 404, "predict is public only"


def test_deeply_nested_bodies_get_a_400_naming_the_depth_not_a_500(server: tuple[str, Path]) -> None:
    url, _ = server
    for depth in (40, 5_000, 30_000):
        body = b'{"input": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        r = httpx.post(f"{url}/v1/predict", content=body, headers=JSON, timeout=30)
        assert r.status_code == 400, (depth, r.status_code, r.text)
        assert f"{depth + 1} levels deep; the limit is 32" in r.json()["error"], r.json()
    brackets_in_strings = json.dumps({"input": GOOD, "x": "[[[[" * 100}).encode()
    r = httpx.post(f"{url}/v1/predict", content=brackets_in_strings, headers=JSON, timeout=30)
    assert r.status_code == 422 and "unknown field(s) x" in r.json()["error"], "brackets in strings do not nest"
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_the_control_socket_works_on_a_path_longer_than_a_socket_address_holds(tmp_path: Path) -> None:
    """A Pod's emptyDir on the development node, or a deep temp dir, can pass the 108 bytes of sockaddr_un."""
    deep = tmp_path / ("volumes-" + "x" * 80) / ("models-" + "y" * 40) / "control.sock"
    assert len(str(deep)) > 108
    proc, url, model_dir = start_server(tmp_path, MODELLOOP_CONTROL_SOCKET=str(deep))
    try:
        status, raw = ControlClient(deep).request("GET", "/readyz", timeout=10)
        assert status == 200 and json.loads(raw)["version"] == "v2"
        body = json.dumps({"version": "v1", "path": str(model_dir / "v1")}).encode()
        status, raw = ControlClient(deep).request("POST", "/v1/reload", body, timeout=60)
        assert status == 200 and json.loads(raw)["previous"] == "v2", raw
        assert httpx.post(f"{url}/v1/predict", json={"input": GOOD}).json()["version"] == "v1"
        assert not (model_dir / ".control.sock").exists(), "the setting moved the socket"
    finally:
        proc.stop()
    assert not deep.exists(), "the server removes its socket when it stops"
