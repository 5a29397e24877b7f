"""Pure parts of the Open Inference Protocol adapter: parsing infer bodies (JSON and binary), the
BYTES decoder hook of the plug-in interface, and rendering outputs. No process, no socket."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from modelloop_server.oip import OIPError, RequestedOutput, model_metadata, parse_infer, render_outputs
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.plugin import InputError

PLUGIN = DigitsPlugin()


class CsvDigits(DigitsPlugin):
    """A plug-in that takes an encoded input: 64 comma-separated numbers as text."""

    def decode_bytes(self, raw: bytes) -> Tensor:
        try:
            return torch.tensor([float(v) for v in raw.decode().split(",")])
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"not comma-separated numbers ({e})") from None


def _framed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_a_plugin_without_a_decoder_refuses_bytes_naming_the_datatype() -> None:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["1,2"]}]}).encode()
    with pytest.raises(OIPError) as e:
        parse_infer(body, None, PLUGIN, 8)
    assert e.value.status == 400
    assert "inputs[0].datatype: this model takes FP32 tensors of shape [-1, 64]" in e.value.message
    assert "DigitsPlugin has none" in e.value.message


def test_a_plugin_with_a_decoder_takes_bytes_in_json_and_binary() -> None:
    rows = [",".join(str(i % 17) for i in range(64)), ",".join("3" for _ in range(64))]
    body = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": rows}]}).encode()
    from_json = parse_infer(body, None, CsvDigits(), 8)
    raw = _framed(*(r.encode() for r in rows))
    head = json.dumps(
        {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    from_binary = parse_infer(head + raw, str(len(head)), CsvDigits(), 8)
    assert from_json.x.shape == (2, 64)
    assert torch.equal(from_json.x, from_binary.x)
    assert from_json.x[1].tolist() == [3.0] * 64


def test_decoded_bytes_still_pass_the_plugins_checks() -> None:
    """A decoder's output goes through preprocess like any FP32 input: value_range still applies."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["99," * 63 + "99"]}]})
    with pytest.raises(OIPError) as e:
        parse_infer(body.encode(), None, CsvDigits(), 8)
    assert "inputs[0].data: row 0: values must lie in [0, 16]" in e.value.message
    bad = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
    with pytest.raises(OIPError) as e:
        parse_infer(bad.encode(), None, CsvDigits(), 8)
    assert e.value.message.startswith("inputs[0].data[0]: not comma-separated numbers")


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        ({"shape": [1, 64]}, None),
        ({"shape": [1, 8, 8]}, "inputs[0].shape [1, 8, 8] does not fit the model: it takes [-1, 64]; the first"),
        ({"shape": [1, 64], "data": [[0.0] * 64]}, None),
        ({"shape": [1, 64], "extra": 1}, "inputs[0]: unknown field(s) extra"),
        ({"shape": [0, 64], "data": []}, "the batch dimension is 0"),
        ({"shape": [1, -64]}, "inputs[0].shape must be a non-empty list of non-negative integers"),
        ({"shape": "1x64"}, "inputs[0].shape must be a non-empty list"),
        ({"shape": [1, 64], "data": [0.0] * 63 + [None]}, "got NoneType null"),
        (
            {"shape": [1, 64], "parameters": {"binary_data_size": 256}},
            "give either data or parameters.binary_data_size",
        ),
        ({"shape": [1, 64], "parameters": []}, "inputs[0].parameters must be an object"),
    ],
)
def test_infer_bodies(tensor: dict[str, object], fragment: str | None) -> None:
    t = {"name": "input", "datatype": "FP32", "data": [[0.0] * 8] * 8, **tensor}
    body = json.dumps({"inputs": [t]}).encode()
    if fragment is None:
        assert parse_infer(body, None, PLUGIN, 8).x.shape == (1, 64)
        return
    with pytest.raises(OIPError) as e:
        parse_infer(body, None, PLUGIN, 8)
    assert e.value.status == 400
    assert fragment in e.value.message


def test_binary_data_size_past_the_body_is_refused() -> None:
    head = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}]}
    )
    with pytest.raises(OIPError) as e:
        parse_infer(head.encode() + b"\0" * 8, str(len(head)), PLUGIN, 8)
    assert "binary_data_size is 256 bytes but only 8 binary bytes follow" in e.value.message


def test_binary_bytes_no_input_accounts_for_are_refused() -> None:
    x = np.zeros(64, dtype="<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]})
    with pytest.raises(OIPError) as e:
        parse_infer(head.encode() + x, str(len(head)), PLUGIN, 8)
    assert "256 binary bytes follow the JSON header that no input's binary_data_size accounts for" in e.value.message


def test_render_outputs_in_the_order_asked_with_binary_sizes() -> None:
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    names = ("ok", "defect", "unsure")
    wanted = [
        RequestedOutput("label", binary=False, classification=0),
        RequestedOutput("predicted", binary=True, classification=0),
        RequestedOutput("probabilities", binary=False, classification=2),
    ]
    tensors, chunks = render_outputs(probs, names, wanted)
    assert tensors[0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["defect", "ok"]}
    assert tensors[1] == {
        "name": "predicted",
        "datatype": "INT64",
        "shape": [2],
        "parameters": {"binary_data_size": 16},
    }
    assert np.frombuffer(chunks[0], dtype="<i8").tolist() == [1, 0]
    assert tensors[2]["shape"] == [2, 2]
    assert tensors[2]["data"] == ["0.700000:1:defect", "0.200000:2:unsure", "0.500000:0:ok", "0.300000:2:unsure"]


def test_metadata_without_a_loaded_model_lists_no_version() -> None:
    meta = model_metadata(PLUGIN, "digits", None)
    assert meta["versions"] == []
    assert meta["inputs"][0]["shape"] == [-1, 64]
    assert meta["parameters"]["class_names"][9] == "9"


_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4))
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.just("input") | _json,
        "datatype": st.sampled_from(["FP32", "BYTES", "INT64"]) | _json,
        "shape": st.lists(st.integers(-2, 70), max_size=3) | _json,
        "data": st.lists(st.floats(0, 16), max_size=130) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 300) | _json}),
    },
)
_outputs = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["probabilities", "predicted", "label", "x"]) | _json},
        optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": _json, "classification": _json})},
    ),
    max_size=3,
)
_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": _json,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": _json}) | _json,
            "inputs": st.lists(_tensor, max_size=2) | _json,
            "outputs": _outputs | _json,
        },
    )
    | _json
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_bodies, st.binary(max_size=300), st.none() | st.sampled_from(["", "x", "0", "-1", "exact"]))
def test_any_body_and_framing_is_parsed_or_refused_with_a_4xx(body: object, tail: bytes, header: str | None) -> None:
    """Whatever the JSON, binary tail and header length, the result is a request or an OIPError 4xx, never a crash."""
    head = json.dumps(body).encode()
    if header == "exact":
        header = str(len(head))
    try:
        req = parse_infer(head + (tail if header else b""), header, PLUGIN, 8)
    except OIPError as e:
        assert 400 <= e.status < 500 and e.message
        return
    tensors, chunks = render_outputs(torch.softmax(torch.randn(req.x.shape[0], 10), 1), PLUGIN.class_names, req.outputs)
    assert len(tensors) == len(req.outputs) and len(chunks) <= len(tensors)
