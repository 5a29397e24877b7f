"""The Open Inference Protocol (KServe v2 REST) beside ``/v1/predict``: stock OIP clients work unchanged.

``app.py`` only registers :func:`routes`; everything protocol-specific lives here. Inference goes
through the same path as ``/v1/predict`` (the plug-in's ``preprocess`` for validation, the shared
batching queue, the same metrics), so the two protocols answer the same inputs with the same
numbers and share one load limit. What differs is only the wire format:

- one input tensor named ``input``, FP32, shape ``[N, *input_shape]`` (or ``[N, prod(input_shape)]``),
  data flat or nested in JSON, or raw little-endian bytes with the binary tensor data extension
  (``Inference-Header-Content-Length``); BYTES inputs only where the plug-in has a decoder;
- outputs ``probabilities`` (FP32 ``[N, num_classes]``), ``predicted`` (INT64 ``[N]``, the class
  index) and ``label`` (BYTES ``[N]``, the class name), each in JSON or binary, and the
  ``classification`` extension (``score:index:label`` for the top k) that Triton's clients send.

Every refusal is a 4xx whose ``{"error": ...}`` names the offending field (``inputs[0].shape``),
in OIP's error format, which clients such as ``tritonclient`` raise as the exception message.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from torch import Tensor

from modelloop.api.receipts import check_client_id
from modelloop_trainer.plugin import InputError, ModelPlugin

from .batching import RETRY_AFTER_SECONDS, Overloaded
from .bodylimits import BodyTooLarge, nesting_depth, read_bounded
from .canary import ROUTING_KEY_HEADER, ROUTING_KEY_PARAMETER, check_routing_key
from .inputrefs import REFERENCE, UNDECODABLE, RefError
from .metrics import NO_VERSION
from .model import LoadedModel
from .receipts import bytes_facts, tensor_facts
from .settings import DEFAULT_MAX_JSON_DEPTH

if TYPE_CHECKING:
    from .app import Serving

SERVER_NAME = "modelloop"
PLATFORM = "modelloop_pytorch"
EXTENSIONS = ("binary_tensor_data", "classification")
INPUT = "input"
PROBABILITIES = "probabilities"
PREDICTED = "predicted"
LABEL = "label"
OUTPUTS = (PROBABILITIES, PREDICTED, LABEL)
HEADER_LENGTH = "inference-header-content-length"
_ROW = re.compile(r"^input (\d+): ")
_ROW_AS = r"row \1: "


class OIPError(Exception):
    """A refused OIP request: the status and the message the client's exception will carry."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.reason = reason  # set for a referenced input that did not decode, counted in the fetch metrics


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # 0: the tensor itself; k > 0: the top k as "score:index:label"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    x: Tensor
    outputs: tuple[RequestedOutput, ...]
    encoded: list[bytes] | None = None  # BYTES inputs as sent: receipts keep digest and size, and where they are stored
    routing_key: str | None = None  # parameters.routing_key: the canary split keeps a key on one version


@functools.cache
def server_version() -> str:
    try:
        return package_version("modelloop")
    except PackageNotFoundError:
        return "unknown"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def model_metadata(plugin: ModelPlugin, name: str, model: LoadedModel | None) -> dict[str, Any]:
    """``GET /v2/models/{name}``: what a client needs to build a request and read the answer."""
    parameters: dict[str, Any] = {"class_names": list(plugin.class_names)}
    if plugin.value_range is not None:
        parameters["value_range"] = list(plugin.value_range)
    if model is not None:
        parameters["digest"] = model.digest
    return {
        "name": name,
        "versions": [model.version] if model is not None else [],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *plugin.input_shape]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, plugin.num_classes]},
            {"name": PREDICTED, "datatype": "INT64", "shape": [-1]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": parameters,
    }


def _split_body(raw: bytes, header_length: str | None, max_depth: int) -> tuple[Any, bytes]:
    """(parsed JSON header, binary tail) of an infer body, with or without the binary extension."""
    if header_length is None:
        head, tail = raw, b""
    else:
        if not header_length.strip().isdigit():
            raise OIPError(400, f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
        n = int(header_length)
        if n == 0 or n > len(raw):
            raise OIPError(
                400, f"Inference-Header-Content-Length is {n}, but the body has {len(raw)} bytes; the JSON header "
                "must come first and be 1..body-length bytes long",
            )  # fmt: skip
        head, tail = raw[:n], raw[n:]
    if not head.strip():
        raise OIPError(400, 'empty request body: send {"inputs": [{"name": "input", "datatype": "FP32", ...}]}')
    depth = nesting_depth(head)
    if depth > max_depth:
        raise OIPError(
            400,
            f"request body nests arrays/objects {depth} levels deep; the limit is {max_depth} (MODELLOOP_MAX_JSON_DEPTH)",
        )
    try:
        return orjson.loads(head), tail
    except orjson.JSONDecodeError as e:
        hint = ""
        if any(w in head for w in (b"NaN", b"Infinity")):
            hint = " (NaN and Infinity are not valid JSON numbers, and not valid model inputs)"
        raise OIPError(400, f"request body is not valid JSON: {e}{hint}") from None


def _flatten_numbers(data: Any, where: str) -> list[float | int]:
    """The numbers of a flat or nested JSON list, row-major; booleans, strings and nulls refused."""
    if not isinstance(data, list):
        raise OIPError(400, f"{where} must be a list of numbers, got {type(data).__name__}")
    if all(type(v) is float or type(v) is int for v in data):  # the common flat case, at C speed
        return data
    out: list[float | int] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                shown = orjson.dumps(v).decode()[:40]
                raise OIPError(400, f"{where}: every value must be a number for FP32, got {type(v).__name__} {shown}")
            out.append(v)
        else:
            stack.pop()
    return out


def _binary_size(params: Any, where: str) -> int | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise OIPError(400, f"{where}.parameters must be an object, got {type(params).__name__}")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OIPError(400, f"{where}.parameters.binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _bytes_elements(tensor: dict[str, Any], chunk: bytes | None, count: int, where: str) -> list[bytes]:
    """BYTES elements: JSON strings, or the binary extension's 4-byte little-endian length prefixes."""
    if chunk is None:
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise OIPError(400, f"{where}.data must be a flat list of strings for BYTES")
        elements = [v.encode() for v in data]
    else:
        elements, at = [], 0
        while at < len(chunk):
            if at + 4 > len(chunk):
                raise OIPError(400, f"{where}: binary BYTES data ends inside an element's 4-byte length prefix")
            (n,) = struct.unpack_from("<I", chunk, at)
            if at + 4 + n > len(chunk):
                raise OIPError(400, f"{where}: binary BYTES element {len(elements)} claims {n} bytes past the data")
            elements.append(chunk[at + 4 : at + 4 + n])
            at += 4 + n
    if len(elements) != count:
        raise OIPError(400, f"{where}.shape says {count} elements, data has {len(elements)}")
    return elements


def _decode_bytes(
    plugin: ModelPlugin, elements: list[bytes], where: str, sources: Sequence[str] | None = None
) -> list[Any]:
    """Decoded BYTES elements; with ``sources`` (they were fetched by reference) a failure is a 422 naming the object."""
    rows = []
    for i, raw in enumerate(elements):
        try:
            row = plugin.decode_bytes(raw)
        except InputError as e:
            if sources is not None:
                raise OIPError(422, f"{where}.data[{i}] ({sources[i]}): {e}", reason=UNDECODABLE) from None
            raise OIPError(400, f"{where}.data[{i}]: {e}") from None
        if row is NotImplemented:
            shape = _shape_text([-1, *plugin.input_shape])
            raise OIPError(
                400,
                f"{where}.datatype: this model takes FP32 tensors of shape {shape}; BYTES (encoded inputs such as "
                f"images) needs a plug-in that decodes them (ModelPlugin.decode_bytes), and "
                f"{type(plugin).__name__} has none",
            )
        rows.append(row)
    return rows


def _input_tensor(
    tensor: Any, plugin: ModelPlugin, max_batch: int, tail: bytes, at: int, sources: Sequence[str] | None = None
) -> tuple[Tensor, int, list[bytes] | None]:
    """The model's input from ``inputs[0]``, how many tail bytes it used and, for BYTES, the encoded
    elements; every check names its field."""
    where = "inputs[0]"
    if not isinstance(tensor, dict):
        raise OIPError(400, f"{where} must be an object with name, datatype, shape and data")
    unknown = sorted(set(tensor) - {"name", "datatype", "shape", "data", "parameters"})
    if unknown:
        raise OIPError(400, f"{where}: unknown field(s) {', '.join(unknown)}")
    name = tensor.get("name")
    if name != INPUT:
        raise OIPError(400, f"{where}.name: this model's input is named {INPUT!r}, got {name!r}")
    datatype = tensor.get("datatype")
    if datatype not in ("FP32", "BYTES"):
        raise OIPError(400, f"{where}.datatype: this model takes FP32, got {datatype!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise OIPError(400, f"{where}.shape must be a non-empty list of non-negative integers, got {shape!r}")
    rows, feature = shape[0], tuple(shape[1:])
    flat = math.prod(plugin.input_shape)
    if datatype == "BYTES" and feature:
        raise OIPError(400, f"{where}.shape: BYTES input takes shape [N] (one encoded item per row), got {shape}")
    if datatype == "FP32" and feature not in (plugin.input_shape, (flat,)):
        also = f" (or [-1, {flat}])" if len(plugin.input_shape) > 1 else ""
        raise OIPError(
            400,
            f"{where}.shape {_shape_text(shape)} does not fit the model: it takes "
            f"{_shape_text([-1, *plugin.input_shape])}{also}; the first dimension is the batch",
        )
    if rows == 0:
        raise OIPError(400, f"{where}.shape: the batch dimension is 0; send at least one row")
    if rows > max_batch:
        raise OIPError(400, f"{where}.shape: batch of {rows} rows exceeds the limit of {max_batch}; split it")
    size = _binary_size(tensor.get("parameters"), where)
    if size is not None and "data" in tensor:
        raise OIPError(400, f"{where}: give either data or parameters.binary_data_size, not both")
    if size is None and "data" not in tensor:
        raise OIPError(400, f"{where}: no data (give data, or parameters.binary_data_size with a binary body)")
    chunk: bytes | None = None
    if size is not None:
        if at + size > len(tail):
            raise OIPError(
                400, f"{where}.parameters.binary_data_size is {size} bytes but only {len(tail) - at} binary bytes "
                "follow the JSON header (is Inference-Header-Content-Length set?)",
            )  # fmt: skip
        chunk = tail[at : at + size]
    used = size or 0
    encoded = None
    if datatype == "BYTES":
        encoded = _bytes_elements(tensor, chunk, rows, where)
        items: list[Any] = _decode_bytes(plugin, encoded, where, sources)
    else:
        count = rows * flat
        if chunk is not None:
            if len(chunk) != 4 * count:
                raise OIPError(
                    400, f"{where}.parameters.binary_data_size is {len(chunk)} bytes; shape {_shape_text(shape)} "
                    f"of FP32 needs {4 * count} (4 bytes x {count} elements)",
                )  # fmt: skip
            items = list(np.frombuffer(chunk, dtype="<f4").reshape(rows, flat))
        else:
            values = _flatten_numbers(tensor["data"], f"{where}.data")
            if len(values) != count:
                raise OIPError(
                    400, f"{where}.data has {len(values)} elements but {where}.shape {_shape_text(shape)} needs {count}"
                )
            items = [values[i * flat : (i + 1) * flat] for i in range(rows)]
    try:
        return plugin.preprocess(items), used, encoded
    except InputError as e:
        raise OIPError(400, f"{where}.data: {_ROW.sub(_ROW_AS, str(e))}") from None


def _requested_outputs(body: dict[str, Any]) -> tuple[RequestedOutput, ...]:
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise OIPError(400, f"parameters must be an object, got {type(params).__name__}")
    binary_default = bool((params or {}).get("binary_data_output", False))
    asked = body.get("outputs")
    if asked is None:
        return tuple(RequestedOutput(n, binary_default, 0) for n in OUTPUTS)
    if not isinstance(asked, list) or not asked:
        raise OIPError(400, f"outputs must be a non-empty list of {{name, parameters}}, got {asked!r}"[:200])
    out = []
    for i, o in enumerate(asked):
        where = f"outputs[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise OIPError(400, f"{where} must be an object with a name")
        if o["name"] not in OUTPUTS:
            raise OIPError(400, f"{where}.name: unknown output {o['name']!r}; this model has {', '.join(OUTPUTS)}")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise OIPError(400, f"{where}.parameters must be an object")
        binary = p.get("binary_data", binary_default)
        k = p.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise OIPError(400, f"{where}.parameters.classification must be a non-negative integer, got {k!r}")
        if k and o["name"] != PROBABILITIES:
            raise OIPError(400, f"{where}.parameters.classification applies to {PROBABILITIES!r} only")
        out.append(RequestedOutput(o["name"], bool(binary), k))
    return tuple(out)


def parse_infer(
    raw: bytes,
    header_length: str | None,
    plugin: ModelPlugin,
    max_batch: int,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    sources: Sequence[str] | None = None,
) -> InferRequest:
    """An OIP infer body (JSON, or JSON header + binary tensors) as the model's input, or an OIPError.

    The JSON's nesting depth is measured on the raw bytes before parsing, as for ``/v1/predict``.
    ``sources`` are the references the BYTES input was fetched from (:func:`resolve_references`).
    """
    body, tail = _split_body(raw, header_length, max_depth)
    if not isinstance(body, dict):
        raise OIPError(400, f"request body must be a JSON object with inputs, got a JSON {type(body).__name__}")
    unknown = sorted(set(body) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise OIPError(
            400, f"unknown field(s) {', '.join(unknown)}; an infer request has id, parameters, inputs, outputs"
        )
    request_id = body.get("id")
    if request_id is not None:
        try:
            check_client_id(request_id)
        except ValueError as e:
            raise OIPError(400, str(e)) from None
    outputs = _requested_outputs(body)
    routing_key = (body.get("parameters") or {}).get(ROUTING_KEY_PARAMETER)
    if routing_key is not None:
        try:
            check_routing_key(routing_key)
        except ValueError as e:
            raise OIPError(400, f"parameters.{ROUTING_KEY_PARAMETER}: {e}") from None
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} tensors" if isinstance(inputs, list) else type(inputs).__name__
        raise OIPError(400, f"inputs: this model takes exactly one input tensor named {INPUT!r}, got {got}")
    x, used, encoded = _input_tensor(inputs[0], plugin, max_batch, tail, 0, sources)
    if used != len(tail):
        raise OIPError(
            400, f"{len(tail) - used} binary bytes follow the JSON header that no input's binary_data_size accounts for"
        )
    return InferRequest(request_id, x, outputs, encoded, routing_key)


def _bytes_binary(values: Sequence[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


def _encode(datatype: str, values: np.ndarray | list[str], binary: bool) -> tuple[Any, bytes | None]:
    """(JSON data, None) or (None, raw little-endian bytes) of one output tensor."""
    if isinstance(values, list):
        return (None, _bytes_binary(values)) if binary else (values, None)
    if binary:
        return None, values.astype("<f4" if datatype == "FP32" else "<i8", copy=False).tobytes()
    return values.reshape(-1).tolist(), None


def render_outputs(
    probs: Tensor, class_names: Sequence[str], wanted: Sequence[RequestedOutput]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output tensors in OIP form, plus the binary chunks in the same order for those asked as binary.

    The predicted class is numpy's argmax, which, like ``/v1/predict``'s ``torch.max``, takes the
    first of tied maxima; each output is encoded only in the form that was asked for.
    """
    p = probs.numpy()
    n, classes = p.shape
    idx = p.argmax(axis=1)
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for o in wanted:
        values: np.ndarray | list[str]
        if o.classification:
            k = min(o.classification, classes)
            top = np.argsort(-p, axis=1, kind="stable")[:, :k]
            values = [f"{p[r, i]:f}:{i}:{class_names[i]}" for r in range(n) for i in top[r].tolist()]
            datatype, shape = "BYTES", [n, k]
        elif o.name == PROBABILITIES:
            values, datatype, shape = p, "FP32", [n, classes]
        elif o.name == PREDICTED:
            values, datatype, shape = idx, "INT64", [n]
        else:
            values, datatype, shape = [class_names[k] for k in idx.tolist()], "BYTES", [n]
        t: dict[str, Any] = {"name": o.name, "datatype": datatype, "shape": shape}
        data, raw = _encode(datatype, values, o.binary)
        if raw is not None:
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = data
        tensors.append(t)
    return tensors, chunks


async def _read_body(request: Request, limit: int) -> bytes:
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise OIPError(415, f"Content-Encoding {request.headers['content-encoding']!r} is not supported; send it plain")
    try:
        return await read_bounded(request, limit)
    except BodyTooLarge as e:
        raise OIPError(413, str(e)) from None


def _serving(request: Request) -> Serving:
    s: Serving = request.app.state.serving
    return s


def _header_routing_key(request: Request) -> str | None:
    key = request.headers.get(ROUTING_KEY_HEADER)
    if key is None:
        return None
    try:
        return check_routing_key(key)
    except ValueError as e:
        raise OIPError(400, f"header X-Modelloop-Routing-Key: {e}") from None


def _check_model(s: Serving, request: Request) -> LoadedModel | None:
    """The loaded model if the path names this server's model (and its served version, if one is named)."""
    name = request.path_params["name"]
    if name != s.settings.model:
        raise OIPError(404, f"model {name!r} is not served here; this server serves {s.settings.model!r}")
    model = s.holder.current
    asked = request.path_params.get("version")
    if asked is not None and (model is None or asked != model.version):
        serving = f"version {model.version}" if model is not None else "no version yet (none is loaded)"
        raise OIPError(404, f"model {name!r} version {asked!r} is not served here; this server serves {serving}")
    return model


async def server_metadata(request: Request) -> Response:
    return _json({"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)})


async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    loaded = _serving(request).holder.current is not None
    return _json({"ready": loaded}, 200 if loaded else 503)


async def metadata(request: Request) -> Response:
    s = _serving(request)
    try:
        model = _check_model(s, request)
    except OIPError as e:
        return _error(e.status, e.message)
    return _json(model_metadata(s.plugin_for(model), s.settings.model, model))


async def model_ready(request: Request) -> Response:
    s = _serving(request)
    try:
        model = _check_model(s, request)
    except OIPError as e:
        return _error(e.status, e.message)
    return _json({"name": s.settings.model, "ready": model is not None}, 200 if model is not None else 503)


def _reference_flag(body: dict[str, Any], tensor: dict[str, Any]) -> str | None:
    """The field that marks the input as references: its own ``parameters.content_type``, else the request's.

    The request-level form is for clients, such as ``tritonclient``, that cannot set an input's parameters.
    """
    for where, params in (("inputs[0].parameters", tensor.get("parameters")), ("parameters", body.get("parameters"))):
        if isinstance(params, dict) and "content_type" in params:
            return f"{where}.content_type" if params["content_type"] == REFERENCE else None
    return None


async def resolve_references(
    s: Serving, raw: bytes, header_length: str | None
) -> tuple[bytes, str | None, list[str] | None]:
    """A body whose BYTES input holds ``s3://`` references, rewritten with the fetched objects inline.

    Returns (body, Inference-Header-Content-Length, the references) for :func:`parse_infer`, which then
    decodes the objects exactly as inline BYTES; a body without references is returned as it came.
    """
    head = raw[: int(header_length)] if header_length and header_length.strip().isdigit() else raw
    if REFERENCE.encode() not in head:
        return raw, header_length, None
    body, tail = _split_body(raw, header_length, s.settings.max_json_depth)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        return raw, header_length, None  # parse_infer names what is wrong
    tensor, where = inputs[0], "inputs[0]"
    flag = _reference_flag(body, tensor)
    if flag is None:
        return raw, header_length, None
    if tensor.get("datatype") != "BYTES":
        raise OIPError(400, f"{flag}: {REFERENCE!r} needs datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or type(shape[0]) is not int or shape[0] < 1:
        raise OIPError(400, f"{where}.shape: references take shape [N] (one s3:// reference per row), got {shape!r}")
    if shape[0] > s.settings.max_batch:
        raise OIPError(400, f"{where}.shape: batch of {shape[0]} rows exceeds the limit of {s.settings.max_batch}")
    size = _binary_size(tensor.get("parameters"), where)
    if size is not None and size > len(tail):
        raise OIPError(400, f"{where}.parameters.binary_data_size is {size} bytes but only {len(tail)} follow")
    elements = _bytes_elements(tensor, None if size is None else tail[:size], shape[0], where)
    try:
        refs = [e.decode() for e in elements]
    except UnicodeDecodeError:
        raise OIPError(400, f"{where}.data: references must be UTF-8 text (s3://<bucket>/<key>)") from None
    try:
        blobs = await s.refs.fetch_all(refs, where)
    except RefError as e:
        raise OIPError(e.status, e.message, e.headers) from None
    packed = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    params = {k: v for k, v in (tensor.get("parameters") or {}).items() if k != "content_type"}
    inline = {k: v for k, v in tensor.items() if k != "data"} | {
        "parameters": {**params, "binary_data_size": len(packed)}
    }
    new_head = orjson.dumps({**body, "inputs": [inline]})
    return new_head + packed + tail[size or 0 :], str(len(new_head)), refs


async def infer(request: Request) -> Response:
    s = _serving(request)
    started = time.perf_counter()
    model = s.holder.current  # read once: this request finishes on this model whatever swaps meanwhile
    version = model.version if model else NO_VERSION
    header_id = request.headers.get("x-request-id")
    try:
        model = _check_model(s, request)
        raw = await _read_body(request, s.settings.max_body_bytes)
        raw, header_length, refs = await resolve_references(s, raw, request.headers.get(HEADER_LENGTH))
        decoder = s.plugin_for(model)
        req = parse_infer(raw, header_length, decoder, s.settings.max_batch, s.settings.max_json_depth, refs)
        if request.path_params.get("version") is None:  # a client that names the version gets that one
            model = s.route(req.routing_key or _header_routing_key(request))
        if model is None:
            raise OIPError(503, "no model loaded yet: the server is waiting for its sidecar to deliver a version")
        routed = s.plugin_for(model)
        if routed is not decoder and routed.preprocessing() != decoder.preprocessing():
            # a canary trained with other preprocessing (another image size): decoded again, as it was trained
            req = parse_infer(raw, header_length, routed, s.settings.max_batch, s.settings.max_json_depth, refs)
        try:
            probs = await s.batcher.probabilities(model, req.x)
        except Overloaded as e:
            s.metrics.shed.inc()
            raise OIPError(429, str(e), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except OIPError as e:
        if e.reason is not None:
            s.refs.failed(e.reason)
        s.metrics.requests.labels(str(e.status), version).inc()
        return _error(e.status, e.message, {"X-Request-Id": header_id or uuid.uuid4().hex, **e.headers})
    assert model is not None
    if req.encoded is None:
        facts = tensor_facts(req.x, s.settings.receipt_inline_values)
    elif refs is None:  # sent inline: stored off the response path, so a review of it can be trained on
        facts = s.inline_inputs.keep(req.encoded, bytes_facts(req.encoded))
    else:
        facts = bytes_facts(req.encoded, refs)
    pid, ids = s.receipt(model, probs, facts, req.id)
    request_id = header_id or pid
    s.shadow.submit(pid, model, req.x, probs, req.encoded)
    tensors, chunks = render_outputs(probs, s.plugin.class_names, req.outputs)
    body: dict[str, Any] = {"model_name": s.settings.model, "model_version": model.version, "id": pid}
    if len(ids) > 1:
        body["parameters"] = {"prediction_ids": ",".join(ids)}
    body["outputs"] = tensors
    headers = {"X-Model-Version": model.version, "X-Model-Digest": model.digest, "X-Request-Id": request_id}
    head = orjson.dumps(body)
    s.metrics.requests.labels("200", model.version).inc()
    s.metrics.latency.labels(model.version).observe(time.perf_counter() - started)
    if not chunks:
        return Response(head, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream", headers=headers)


def routes() -> list[Route]:
    """The OIP REST paths, registered by ``app.create_app`` beside the v1 routes."""
    out = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        out += [
            Route(base, metadata, methods=["GET"]),
            Route(f"{base}/ready", model_ready, methods=["GET"]),
            Route(f"{base}/infer", infer, methods=["POST"]),
        ]
    return out
