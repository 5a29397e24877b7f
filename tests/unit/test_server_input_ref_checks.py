"""Inputs by reference: which references are well-formed and allowed, and how a fetch is bounded.

Parsing and the allowlist are pure (tables below). The fetcher runs against a fake reader that
records its calls, so the order (size before any read), the size bound, the deadline and the
concurrency bound are checked without a store; tests/integration/test_server_input_refs.py runs the
same against a real server and MinIO.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from modelloop_server.inputrefs import (
    BUSY,
    FORBIDDEN,
    MALFORMED,
    MISSING,
    TOO_LARGE,
    UNAVAILABLE,
    InputRefs,
    Missing,
    ObjectRef,
    RefError,
    RefLimits,
    Unavailable,
    check_reference,
    parse_prefix,
    parse_prefixes,
    parse_reference,
)
from modelloop_server.metrics import ServerMetrics
from modelloop_server.settings import ServerSettings, SettingsError

ALLOWED = (parse_prefix("s3://models/laundry/inputs/"), parse_prefix("s3://tasks/"))


@pytest.mark.parametrize(
    ("text", "bucket", "key"),
    [
        ("s3://models/laundry/inputs/a.png", "models", "laundry/inputs/a.png"),
        ("s3://tasks/TASK-12345.jpg", "tasks", "TASK-12345.jpg"),
        ("s3://my.bucket-1/x y/ü.png", "my.bucket-1", "x y/ü.png"),
    ],
)
def test_well_formed_references(text: str, bucket: str, key: str) -> None:
    ref = parse_reference(text)
    assert ref == ObjectRef(bucket, key)
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://models/laundry/inputs/a.png", "must be s3://<bucket>/<key>"),
        ("S3://models/a.png", "must be s3://<bucket>/<key>"),
        ("/models/a.png", "must be s3://<bucket>/<key>"),
        ("s3://Models/a.png", "is not an S3 bucket name"),
        ("s3://ab/a.png", "is not an S3 bucket name"),
        ("s3://a..b/a.png", "is not an S3 bucket name"),
        ("s3://169.254.169.254:80/latest", "is not an S3 bucket name"),
        ("s3://models", "names no object"),
        ("s3://models/", "names no object"),
        ("s3://models/laundry/inputs/", "names no object"),
        ("s3://models/laundry/inputs/../versions/v1/model.safetensors", "'..' path segment"),
        ("s3://models/laundry//inputs/a.png", "empty, '.' or '..' path segment"),
        ("s3://models/./a.png", "'.'"),
        ("s3://models/a\nb.png", "control characters"),
        ("s3://models/a\\b.png", "backslash"),
        ("s3://models/" + "k" * 1025, "over S3's 1024 bytes"),
    ],
)
def test_malformed_references_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_reference(text)
    assert says in str(e.value)


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        ("s3://models/laundry/inputs/a.png", None, None),
        ("s3://models/laundry/inputs/deep/er/a.png", None, None),
        ("s3://tasks/TASK-1.jpg", None, None),
        ("s3://models/laundry/inputs-private/a.png", 403, FORBIDDEN),
        ("s3://models/laundry/versions/v1/model.safetensors", 403, FORBIDDEN),
        ("s3://models/laundry/feedback/batch.jsonl", 403, FORBIDDEN),
        ("s3://other/laundry/inputs/a.png", 403, FORBIDDEN),
        ("s3://models/laundry/inputs/../versions/v1/model.safetensors", 400, MALFORMED),
        ("http://minio:9000/models/laundry/inputs/a.png", 400, MALFORMED),
    ],
)
def test_allowlist(text: str, status: int | None, reason: str | None) -> None:
    if status is None:
        assert check_reference(text, ALLOWED, "inputs[0].data[3]") == parse_reference(text)
        return
    with pytest.raises(RefError) as e:
        check_reference(text, ALLOWED, "inputs[0].data[3]")
    assert (e.value.status, e.value.reason) == (status, reason)
    assert e.value.message.startswith("inputs[0].data[3]: ")


def test_nothing_is_allowed_without_prefixes() -> None:
    with pytest.raises(RefError) as e:
        check_reference("s3://models/laundry/inputs/a.png", (), "inputs[0].data[0]")
    assert e.value.status == 403
    assert "none (MODELLOOP_INPUT_REF_PREFIXES=off or no bucket)" in e.value.message


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("s3://models/laundry/inputs/", ("s3://models/laundry/inputs/",)),
        (" s3://a-b/x/ , s3://tasks/ ", ("s3://a-b/x/", "s3://tasks/")),
        ("s3://tasks", ("s3://tasks",)),
        ("off", ()),
    ],
)
def test_prefix_lists(raw: str, parsed: tuple[str, ...]) -> None:
    assert parse_prefixes(raw) == parsed


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("s3://models/laundry/inputs", "must end in '/'"),
        ("https://models/x/", "must be s3://"),
        ("s3://models/x/, gs://b/", "must be s3://"),
    ],
)
def test_bad_prefix_lists(raw: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_prefixes(raw)
    assert says in str(e.value)


def test_settings_default_to_the_models_inputs_folder_and_name_the_variable() -> None:
    env = {"MODELLOOP_MODEL": "laundry", "MODELLOOP_MODEL_DIR": "/m"}
    assert ServerSettings.from_env(env).input_ref_prefixes == ()
    with_bucket = ServerSettings.from_env({**env, "MODELLOOP_BUCKET": "models"})
    assert with_bucket.input_ref_prefixes == ("s3://models/laundry/inputs/",)
    assert (with_bucket.input_ref_max_bytes, with_bucket.input_ref_timeout_seconds) == (8 << 20, 5.0)
    assert (with_bucket.input_ref_concurrency, with_bucket.input_ref_max_request_bytes) == (8, 64 << 20)
    off = ServerSettings.from_env({**env, "MODELLOOP_BUCKET": "models", "MODELLOOP_INPUT_REF_PREFIXES": "off"})
    assert off.input_ref_prefixes == ()
    with pytest.raises(SettingsError, match=r"MODELLOOP_INPUT_REF_PREFIXES: .* must end in '/'"):
        ServerSettings.from_env({**env, "MODELLOOP_INPUT_REF_PREFIXES": "s3://models/inputs"})
    with pytest.raises(SettingsError, match="MODELLOOP_INPUT_REF_CONCURRENCY=0 must be at least 1"):
        ServerSettings.from_env({**env, "MODELLOOP_INPUT_REF_CONCURRENCY": "0"})


class FakeReader:
    """Objects by key; records calls; ``gate`` (when set up) holds every read until opened."""

    def __init__(self, objects: dict[str, bytes], down: bool = False) -> None:
        self.objects = objects
        self.down = down
        self.calls: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def size(self, ref: ObjectRef) -> int:
        self.calls.append(("size", ref.key))
        if self.down:
            raise Unavailable("connection refused")
        if ref.key not in self.objects:
            raise Missing("NoSuchKey")
        return len(self.objects[ref.key])

    def read(self, ref: ObjectRef, limit: int) -> bytes:
        self.calls.append(("read", ref.key))
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "the test never opened the gate"
            return self.objects[ref.key][: limit + 1]
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def metrics() -> ServerMetrics:
    return ServerMetrics()


@pytest.fixture
def reader() -> Iterator[FakeReader]:
    r = FakeReader({f"laundry/inputs/{i}.png": bytes([i]) * (10 + i) for i in range(8)})
    r.objects["laundry/inputs/big.png"] = b"x" * 1000
    yield r
    if r.gate is not None:
        r.gate.set()


def refs(reader: FakeReader, metrics: ServerMetrics, **limits: float) -> InputRefs:
    return InputRefs(("s3://models/laundry/inputs/",), reader, RefLimits(**limits), metrics)  # type: ignore[arg-type]


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return v or 0.0


def test_fetches_in_order_and_counts(reader: FakeReader, metrics: ServerMetrics) -> None:
    r = refs(reader, metrics, max_bytes=100)
    texts = [f"s3://models/laundry/inputs/{i}.png" for i in (2, 0, 1)]
    assert asyncio.run(r.fetch_all(texts, "inputs[0]")) == [b"\x02" * 12, b"\x00" * 10, b"\x01" * 11]
    assert value(metrics, "modelloop_server_input_ref_fetches_total") == 3
    assert value(metrics, "modelloop_server_input_ref_bytes_total") == 33
    assert value(metrics, "modelloop_server_input_ref_fetch_seconds_count") == 3
    r.close()


def test_an_oversized_object_is_refused_before_it_is_read(reader: FakeReader, metrics: ServerMetrics) -> None:
    r = refs(reader, metrics, max_bytes=999)
    with pytest.raises(RefError) as e:
        asyncio.run(
            r.fetch_all(["s3://models/laundry/inputs/0.png", "s3://models/laundry/inputs/big.png"], "inputs[0]")
        )
    assert e.value.status == 413
    assert e.value.message.startswith("inputs[0].data[1]: s3://models/laundry/inputs/big.png is 1,000 bytes")
    assert "MODELLOOP_INPUT_REF_MAX_BYTES" in e.value.message
    assert ("read", "laundry/inputs/big.png") not in reader.calls
    assert value(metrics, "modelloop_server_input_ref_failures_total", reason=TOO_LARGE) == 1
    r.close()


def test_a_refused_reference_fetches_nothing(reader: FakeReader, metrics: ServerMetrics) -> None:
    r = refs(reader, metrics)
    with pytest.raises(RefError) as e:
        asyncio.run(r.fetch_all(["s3://models/laundry/inputs/0.png", "s3://models/laundry/x.png"], "inputs[0]"))
    assert (e.value.status, e.value.reason) == (403, FORBIDDEN)
    assert e.value.message.startswith("inputs[0].data[1]: s3://models/laundry/x.png is outside")
    assert reader.calls == []
    r.close()


def test_missing_and_unreachable(metrics: ServerMetrics) -> None:
    r = refs(FakeReader({}), metrics)
    with pytest.raises(RefError) as e:
        asyncio.run(r.fetch_all(["s3://models/laundry/inputs/gone.png"], "inputs[0]"))
    assert (e.value.status, e.value.reason) == (404, MISSING)
    assert "key 'laundry/inputs/gone.png'" in e.value.message
    down = refs(FakeReader({}, down=True), metrics)
    with pytest.raises(RefError) as e:
        asyncio.run(down.fetch_all(["s3://models/laundry/inputs/a.png"], "inputs[0]"))
    assert (e.value.status, e.value.reason, e.value.headers) == (503, UNAVAILABLE, {"Retry-After": "2"})
    assert value(metrics, "modelloop_server_input_ref_failures_total", reason=MISSING) == 1
    r.close()
    down.close()


def test_a_slow_store_hits_the_deadline_and_fetches_never_exceed_the_concurrency(
    reader: FakeReader, metrics: ServerMetrics
) -> None:
    gate = reader.gate = threading.Event()
    r = refs(reader, metrics, timeout_seconds=0.5, concurrency=2)
    texts = [f"s3://models/laundry/inputs/{i}.png" for i in range(3)]

    async def scenario() -> list[BaseException | list[bytes]]:
        outcomes = await asyncio.gather(
            r.fetch_all(texts, "inputs[0]"), r.fetch_all(texts[:1], "inputs[0]"), return_exceptions=True
        )
        assert r.slots.locked(), "the slots stay held while the stuck reads run, so no third fetch starts"
        gate.set()
        async with asyncio.timeout(10):
            while r.slots.locked():
                await asyncio.sleep(0.01)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RefError) and o.status == 503 for o in outcomes), outcomes
    assert all(o.headers == {"Retry-After": "2"} for o in outcomes if isinstance(o, RefError))
    assert reader.most_running == 2
    failed = sum(value(metrics, "modelloop_server_input_ref_failures_total", reason=x) for x in (UNAVAILABLE, BUSY))
    assert failed == 2
    r.close()


def test_a_request_whose_references_add_up_to_too_much_is_refused(reader: FakeReader, metrics: ServerMetrics) -> None:
    r = refs(reader, metrics, max_bytes=100, max_request_bytes=25)
    texts = [f"s3://models/laundry/inputs/{i}.png" for i in range(3)]  # 10 + 11 + 12 bytes
    with pytest.raises(RefError) as e:
        asyncio.run(r.fetch_all(texts, "inputs[0]"))
    assert e.value.status == 413
    assert "add up to over 25 bytes (MODELLOOP_INPUT_REF_MAX_REQUEST_BYTES)" in e.value.message
    assert asyncio.run(r.fetch_all(texts[:2], "inputs[0]")) == [b"\x00" * 10, b"\x01" * 11]
    r.close()
