"""Verification gates: every configured gate reported, boundaries, margins, missing baseline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelloop.api.artifacts import Verification
from modelloop.api.retrainpolicy import GateSpec
from modelloop.decide.gates import evaluate_gates, failing_summary

ALL_GATES = {
    "validationAccuracy",
    "holdoutAccuracy",
    "beatsActive",
    "minClassAccuracy",
    "latencyP95Ms",
    "peakMemoryMiB",
    "throughputRps",
}


def verification(**kw: Any) -> Verification:
    base: dict[str, Any] = {
        "model": "digits",
        "version": "v2",
        "manifestDigest": "sha256:" + "a" * 64,
        "baselineVersion": "v1",
        "holdoutSamples": 360,
        "validationAccuracy": 0.95,
        "holdoutAccuracy": 0.93,
        "baselineHoldoutAccuracy": 0.92,
        "perClassAccuracy": {"0": 0.99, "1": 0.91, "2": 0.95},
        "macroF1": 0.93,
        "latencyP50Ms": 2.0,
        "latencyP95Ms": 5.0,
        "peakMemoryMiB": 300.0,
        "throughputRps": 900.0,
        "measuredAt": datetime(2026, 3, 1, tzinfo=UTC),
    }
    base.update(kw)
    return Verification.model_validate(base)


GATES = GateSpec.model_validate({"minClassAccuracy": 0.9, "beatMargin": 0.01})

CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None, set[str]]] = [
    ("all pass", {}, {}, "v1", set()),
    ("validation exactly at threshold passes", {}, {"validationAccuracy": 0.90}, "v1", set()),
    ("validation just below", {}, {"validationAccuracy": 0.8999}, "v1", {"validationAccuracy"}),
    ("validation not measured", {}, {"validationAccuracy": None}, "v1", {"validationAccuracy"}),
    ("holdout below 0.88", {}, {"holdoutAccuracy": 0.85, "baselineHoldoutAccuracy": 0.5}, "v1", {"holdoutAccuracy"}),
    ("beats active by exactly the margin", {}, {"holdoutAccuracy": 0.93, "baselineHoldoutAccuracy": 0.92}, "v1", set()),
    (
        "beats active by less than the margin",
        {},
        {"holdoutAccuracy": 0.925, "baselineHoldoutAccuracy": 0.92},
        "v1",
        {"beatsActive"},
    ),
    (
        "no active version: first version passes beatsActive",
        {},
        {"baselineVersion": None, "baselineHoldoutAccuracy": None},
        None,
        set(),
    ),
    (
        "active exists but baseline missing",
        {},
        {"baselineVersion": None, "baselineHoldoutAccuracy": None},
        "v1",
        {"beatsActive"},
    ),
    ("baseline measured against the wrong version", {}, {"baselineVersion": "v0"}, "v1", {"beatsActive"}),
    ("one class below floor", {}, {"perClassAccuracy": {"0": 0.99, "1": 0.89}}, "v1", {"minClassAccuracy"}),
    ("class accuracies missing", {}, {"perClassAccuracy": {}}, "v1", {"minClassAccuracy"}),
    ("latency exactly at limit passes", {}, {"latencyP95Ms": 200.0}, "v1", set()),
    ("latency over", {}, {"latencyP95Ms": 200.1}, "v1", {"latencyP95Ms"}),
    ("memory over", {}, {"peakMemoryMiB": 4096.0}, "v1", {"peakMemoryMiB"}),
    ("throughput under", {}, {"throughputRps": 49.9}, "v1", {"throughputRps"}),
    (
        "several failures all reported",
        {},
        {"holdoutAccuracy": 0.5, "latencyP95Ms": 999.0, "throughputRps": 1.0},
        "v1",
        {"holdoutAccuracy", "beatsActive", "latencyP95Ms", "throughputRps"},
    ),
    (
        "mustBeatActive off",
        {"mustBeatActive": False},
        {"holdoutAccuracy": 0.9, "baselineHoldoutAccuracy": 0.99},
        "v1",
        set(),
    ),
]


@pytest.mark.parametrize(("gate_kw", "v_kw", "active", "failing"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gates(gate_kw: dict[str, Any], v_kw: dict[str, Any], active: str | None, failing: set[str]) -> None:
    gates = GateSpec.model_validate({**GATES.model_dump(by_alias=True), **gate_kw})
    results = evaluate_gates(gates, verification(**v_kw), active)
    expected_names = ALL_GATES - ({"beatsActive"} if gate_kw.get("mustBeatActive") is False else set())
    assert {r.name for r in results} == expected_names, "every configured gate is reported"
    assert {r.name for r in results if not r.passed} == failing
    assert all(r.message for r in results)


def test_disabled_gates_are_not_reported() -> None:
    gates = GateSpec.model_validate(
        {"minValidationAccuracy": None, "maxLatencyP95Ms": None, "maxMemoryMiB": None, "minThroughputRps": None}
    )
    assert [r.name for r in evaluate_gates(gates, verification(), "v1")] == ["holdoutAccuracy", "beatsActive"]


def test_failure_message_names_value_and_threshold() -> None:
    results = evaluate_gates(GATES, verification(holdoutAccuracy=0.85, baselineHoldoutAccuracy=0.5), "v1")
    assert "holdoutAccuracy 0.85 < 0.88" in failing_summary(results)
    assert failing_summary(evaluate_gates(GATES, verification(), "v1")) == "all gates passed"


NAMED = {"perClassRecall": {"ok": 0.95, "defect": 0.8}, "perClassPrecision": {"ok": 0.9, "defect": 0.7}}
PER_CLASS_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, tuple[bool, float | None]]]] = [
    (
        "recall exactly at the floor passes",
        [{"class": "defect", "minRecall": 0.8}],
        NAMED,
        {"recall[defect]": (True, 0.8)},
    ),
    ("recall below the floor fails", [{"class": "defect", "minRecall": 0.81}], NAMED, {"recall[defect]": (False, 0.8)}),
    (
        "both floors on one class, each its own gate",
        [{"class": "defect", "minRecall": 0.5, "minPrecision": 0.75}],
        NAMED,
        {"recall[defect]": (True, 0.8), "precision[defect]": (False, 0.7)},
    ),
    (
        "two classes",
        [{"class": "ok", "minPrecision": 0.9}, {"class": "defect", "minRecall": 0.9}],
        NAMED,
        {"precision[ok]": (True, 0.9), "recall[defect]": (False, 0.8)},
    ),
    (
        "a class the model lacks fails, naming its classes",
        [{"class": "stain", "minRecall": 0.1}],
        NAMED,
        {"recall[stain]": (False, None)},
    ),
    (
        "not measured (older verifier) fails",
        [{"class": "defect", "minRecall": 0.1}],
        {},
        {"recall[defect]": (False, None)},
    ),
]


@pytest.mark.parametrize(
    ("gates", "measured", "expected"), [c[1:] for c in PER_CLASS_CASES], ids=[c[0] for c in PER_CLASS_CASES]
)
def test_per_class_gates_by_class_name(
    gates: list[dict[str, Any]], measured: dict[str, Any], expected: dict[str, tuple[bool, float | None]]
) -> None:
    spec = GateSpec.model_validate({"perClass": gates})
    results = {r.name: r for r in evaluate_gates(spec, verification(**measured), "v1")}
    got = {name: (r.passed, r.value) for name, r in results.items() if "[" in name}
    assert got == expected
    for name, r in results.items():
        if "[" in name:
            assert name in r.message or name.split("[")[0] in r.message
    if "stain" in str(gates):
        assert "its classes: defect, ok" in results["recall[stain]"].message


def test_per_class_gate_needs_a_floor_and_a_known_shape() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="minRecall"):
        GateSpec.model_validate({"perClass": [{"class": "defect", "minRecall": 1.5}]})
    with pytest.raises(ValidationError, match="class"):
        GateSpec.model_validate({"perClass": [{"class": "has space", "minRecall": 0.5}]})
