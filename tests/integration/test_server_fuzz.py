"""The public HTTP endpoints (v1 and the Open Inference Protocol) under a property-based fuzzer: no input makes
the server answer 5xx or raise.

The real ASGI app, in process (httpx's ASGITransport on one event loop that also runs the app's
lifespan, flusher and control socket; any exception inside the app fails the test), with a real model loaded and
a real MinIO behind ``/v1/feedback`` so that accepted reviews take the whole path (receipt join, spool,
fsync, upload). Bodies are arbitrary bytes, arbitrary JSON, near-valid requests with one thing wrong, and
very deep nesting; headers (Content-Type, X-Request-Id) vary too. Bounded in examples, not in
time, so a failure reproduces; ``MODELLOOP_FUZZ_EXAMPLES`` raises the count for a longer run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelloop.api import constants as c
from modelloop_dev.minio import MinioServer
from modelloop_server.app import create_app
from modelloop_server.settings import ServerSettings
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MODELLOOP_FUZZ_EXAMPLES", "700"))  # 10-25 s on a busy 2-core machine
OIP_INFER = "/v2/models/digits/infer"
PUBLIC = ["/v1/predict", "/v1/feedback", "/healthz", "/readyz", "/metrics", OIP_INFER, "/v2/models/digits", "/v2"]
FEATURES = 64

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=40,
)


def _vector(seed: int, shape: str, odd: Any) -> list[Any]:
    """64 numbers from ``seed``; ``shape`` bends them out of the model's domain in one way.

    Cheap to generate (one integer drawn, not 64 floats), so the time goes into requests.
    """
    rng = random.Random(seed)
    values: list[Any] = [rng.choice([rng.uniform(0, 16), rng.randint(0, 16)]) for _ in range(FEATURES)]
    if shape == "short":
        return values[: rng.randrange(FEATURES)]
    if shape == "long":
        return [*values, 1.0]
    if shape == "out-of-range":
        values[rng.randrange(FEATURES)] = rng.choice([-1e-9, 16.5, 1e300, -1e300, 2**63, -(2**63)])
    if shape == "odd-value":
        values[rng.randrange(FEATURES)] = odd
    return values


vectors = st.builds(
    _vector,
    st.integers(min_value=0, max_value=2**32),
    st.sampled_from(["good", "good", "short", "long", "out-of-range", "odd-value"]),
    json_values,
)
good_vectors = st.integers(min_value=0, max_value=2**32).map(lambda seed: _vector(seed, "good", None))
maybe_vector = vectors | json_values
KNOWN_IDS = [f"fz-{i}" for i in range(10)]
known_ids = st.sampled_from(KNOWN_IDS)  # answered by the fixture, so reviews of them can be accepted


@st.composite
def predict_bodies(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["one", "batch", "extra-field", "with-id", "any"]))
    if kind == "one":
        return {"input": draw(maybe_vector)}
    if kind == "with-id":
        return {"input": draw(vectors), "id": draw(known_ids | st.text(max_size=100) | json_values)}
    if kind == "batch":
        return {"inputs": draw(st.lists(maybe_vector, max_size=10) | json_values)}
    if kind == "extra-field":
        return {"input": draw(vectors), draw(st.text(max_size=8)): draw(json_values)}
    return draw(json_values)


@st.composite
def feedback_bodies(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):  # well formed but for what the fuzzer changes in the values
        return {
            "id": draw(known_ids | st.text(max_size=140)),
            "label": draw(st.integers(min_value=0, max_value=9) | st.sampled_from(DigitsPlugin().class_names)),
            **({"reason": draw(st.text(max_size=600))} if draw(st.booleans()) else {}),
        }
    fields = {
        "id": known_ids | st.text(max_size=140) | json_values,
        "label": st.integers(min_value=-2, max_value=12) | json_values,
        "reason": st.text(max_size=600) | json_values,
        "input": maybe_vector,  # the next three are refused: the receipt says what was answered
        "predicted": st.integers(min_value=-2, max_value=12) | json_values,
        "version": st.sampled_from(["v1", "v2", "v0", "latest", ""]) | st.text(max_size=12) | json_values,
        "requestId": st.text(max_size=140) | json_values,
        draw(st.text(max_size=8)): json_values,
    }
    chosen = draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields)))
    return {name: draw(fields[name]) for name in chosen}


@st.composite
def oip_bodies(draw: st.DrawFn) -> Any:
    """Open Inference Protocol infer bodies: near-valid tensors with one field bent, or anything."""
    if draw(st.booleans()):
        v = draw(vectors)
        tensor: dict[str, Any] = {
            "name": draw(st.just("input") | json_values),
            "datatype": draw(st.sampled_from(["FP32", "FP32", "BYTES", "INT64"]) | json_values),
            "shape": draw(st.just([1, len(v)]) | st.lists(st.integers(-1, 70), max_size=3) | json_values),
            "data": v,
        }
        body: dict[str, Any] = {"inputs": [tensor]}
        if draw(st.booleans()):
            body["outputs"] = [{"name": draw(st.sampled_from(["probabilities", "predicted", "label", "x"]))}]
        if draw(st.booleans()):
            body["id"] = draw(st.text(max_size=10) | json_values)
        return body
    return {"inputs": draw(json_values), **draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))}


REF_PREFIX = "s3://fuzz-refs/digits/inputs/"  # a bucket that does not exist: every allowed fetch asks MinIO and misses
references = st.sampled_from(
    [
        REF_PREFIX + "a.png",
        REF_PREFIX + "../model.safetensors",
        "s3://fuzz-refs/digits/versions/v1/model.safetensors",
        "s3://other-bucket/digits/inputs/a.png",
        "http://169.254.169.254/latest/meta-data",
        "s3://",
        REF_PREFIX,
    ]
) | st.text("ab./-_\n", min_size=1, max_size=20).map(lambda t: REF_PREFIX + t)


@st.composite
def reference_bodies(draw: st.DrawFn) -> Any:
    """BYTES inputs by reference (flag on the input or the request), mostly well-formed, sometimes one field bent."""
    refs = draw(st.lists(references, min_size=1, max_size=2))
    flag = {"content_type": draw(st.sampled_from(["reference", "reference", "reference", "str"]))}
    tensor: dict[str, Any] = {
        "name": "input",
        "datatype": draw(st.sampled_from(["BYTES", "BYTES", "BYTES", "FP32"])),
        "shape": [len(refs)] if draw(st.integers(0, 3)) else draw(st.lists(st.integers(-1, 9), max_size=2)),
        "data": refs,
    }
    if draw(st.booleans()):
        return {"inputs": [{**tensor, "parameters": flag}]}
    return {"inputs": [tensor], "parameters": flag}


def encoded(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


deep = st.integers(min_value=1, max_value=20_000).map(lambda n: b'{"input": ' + b"[" * n + b"1" + b"]" * n + b"}")
raw_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(encoded),
    predict_bodies().map(encoded),
    feedback_bodies().map(encoded),
    oip_bodies().map(encoded),
    reference_bodies().map(encoded),
    deep,
    predict_bodies().map(encoded).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
content_types = (
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "", "application/"]
    )
    | header_text
)


class Client:
    """Synchronous requests to the app on a loop of its own, which runs between requests' awaits too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, http: httpx.AsyncClient) -> None:
        self.loop, self.http = loop, http

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, path, **kwargs))


paths = st.sampled_from([*PUBLIC, "/v1/predict", "/v1/feedback", "/v1/reload"]) | st.text(
    "abcdefghijklmnopqrstuvwxyz0123456789/-_.~", max_size=30
).map(lambda t: "/" + t)
request_ids = st.none() | header_text
any_requests = st.tuples(
    st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]), paths, raw_bodies, content_types, request_ids
)
well_formed_requests = (
    st.tuples(
        st.just("POST"),
        st.just("/v1/predict"),
        st.one_of(
            good_vectors.map(lambda v: {"input": v}),
            st.lists(good_vectors, min_size=1, max_size=8).map(lambda v: {"inputs": v}),
            predict_bodies(),
        ).map(encoded),
        st.just("application/json"),
        request_ids,
    )
    | st.tuples(
        st.just("POST"),
        st.just("/v1/feedback"),
        feedback_bodies().map(encoded),
        st.just("application/json"),
        request_ids,
    )
    | st.tuples(
        st.just("POST"),
        st.just(OIP_INFER),
        st.one_of(
            good_vectors.map(
                lambda v: {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": v}]}
            ),
            oip_bodies(),
            reference_bodies(),
        ).map(encoded),
        content_types,
        request_ids,
    )
)


@pytest.fixture
def client(tmp_path: Path, minio: MinioServer, bucket: str) -> Iterator[Client]:
    model_dir = tmp_path / "models"
    write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, "digits", "v1", 1)
    server_settings = ServerSettings(
        model="digits",
        plugin=c.DEFAULT_PLUGIN,
        model_dir=model_dir,
        max_body_bytes=64 << 10,
        max_batch=8,
        inference_threads=1,
        warmup_passes=1,
        feedback_flush_seconds=0.5,
        review_auth="off",  # fuzz what a review carries; who may send one is tested in test_review_auth.py
        input_ref_prefixes=(REF_PREFIX,),
    )
    app = create_app(server_settings, minio.store(bucket), DigitsPlugin())
    loop = asyncio.new_event_loop()
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz")
    try:
        fuzz = Client(loop, http)
        assert fuzz.request("GET", "/readyz").json()["version"] == "v1"
        for rid in KNOWN_IDS:
            r = fuzz.request("POST", "/v1/predict", json={"input": [1.0] * FEATURES, "id": rid})
            assert r.status_code == 200 and r.json()["id"] == rid
        yield fuzz
    finally:
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def test_public_endpoints_never_answer_5xx_or_raise(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    started = time.monotonic()
    in_app = [0.0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(req=st.one_of(any_requests, well_formed_requests))
    def one_request(req: tuple[str, str, bytes, str, str | None]) -> None:
        method, path, body, content_type, request_id = req
        headers = {"Content-Type": content_type}
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        t0 = time.monotonic()
        r = client.request(method, path, content=body if method in ("POST", "PUT") else None, headers=headers)
        in_app[0] += time.monotonic() - t0
        statuses[(path if path in PUBLIC or path == "/v1/reload" else "other", r.status_code)] += 1
        assert r.status_code < 500, (method, path, body[:200], headers, r.status_code, r.text[:300])
        if path == "/v1/reload":
            assert r.status_code == 404, "the public port has no reload route"
        if path in ("/v1/predict", "/v1/feedback", OIP_INFER) and method == "POST" and r.status_code >= 400:
            assert r.json()["error"], "every refusal says what is wrong"

    one_request()
    tried = sum(statuses.values())
    with capsys.disabled():
        print(
            f"\nfuzzed {tried} requests in {time.monotonic() - started:.1f}s ({in_app[0]:.1f}s in the app), "
            "0 answered >= 500; by (path, status):"
        )
        for (path, status), n in sorted(statuses.items()):
            print(f"  {path} {status}: {n}")
    assert tried >= EXAMPLES
    answered = {status for (path, status) in statuses if path == "/v1/predict"}
    assert 200 in answered and 422 in answered, "the fuzzer reached both valid and invalid predictions"
    assert 202 in {status for (path, status) in statuses if path == "/v1/feedback"}, "some reviews were accepted"
    assert {200, 400} <= {status for (path, status) in statuses if path == OIP_INFER}, "valid and invalid OIP infers"
