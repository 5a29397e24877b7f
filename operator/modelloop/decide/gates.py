"""The verification gates: what a candidate must measure before it may serve.

Every configured gate is evaluated and reported (never short-circuited), so a Rejected
version tells the on-call person everything that was wrong in one look. A gate set to null in
the policy is disabled and not reported.
"""

from __future__ import annotations

from modelloop.api.artifacts import Verification
from modelloop.api.modelversion import GateResult
from modelloop.api.retrainpolicy import ClassGate, GateSpec


def _at_least(name: str, value: float | None, threshold: float) -> GateResult:
    if value is None:
        return GateResult(name=name, passed=False, threshold=threshold, message=f"{name} was not measured")
    ok = value >= threshold
    return GateResult(
        name=name, passed=ok, value=value, threshold=threshold,
        message=f"{name} {value:.4g} {'>=' if ok else '<'} {threshold:.4g}",
    )  # fmt: skip


def _at_most(name: str, value: float, threshold: float) -> GateResult:
    ok = value <= threshold
    return GateResult(
        name=name, passed=ok, value=value, threshold=threshold,
        message=f"{name} {value:.4g} {'<=' if ok else '>'} {threshold:.4g}",
    )  # fmt: skip


def evaluate_gates(gates: GateSpec, v: Verification, active_version: str | None) -> list[GateResult]:
    results: list[GateResult] = []
    if gates.min_validation_accuracy is not None:
        results.append(_at_least("validationAccuracy", v.validation_accuracy, gates.min_validation_accuracy))
    if gates.min_holdout_accuracy is not None:
        results.append(_at_least("holdoutAccuracy", v.holdout_accuracy, gates.min_holdout_accuracy))
    if gates.must_beat_active:
        results.append(_beats_active(gates, v, active_version))
    if gates.min_class_accuracy is not None:
        results.append(_class_floor(gates.min_class_accuracy, v))
    for gate in gates.per_class:
        results.extend(_per_class(gate, v))
    if gates.max_latency_p95_ms is not None:
        results.append(_at_most("latencyP95Ms", v.latency_p95_ms, gates.max_latency_p95_ms))
    if gates.max_memory_mi_b is not None:
        results.append(_at_most("peakMemoryMiB", v.peak_memory_mib, gates.max_memory_mi_b))
    if gates.min_throughput_rps is not None:
        results.append(_at_least("throughputRps", v.throughput_rps, gates.min_throughput_rps))
    return results


def _beats_active(gates: GateSpec, v: Verification, active_version: str | None) -> GateResult:
    name = "beatsActive"
    if active_version is None:
        return GateResult(name=name, passed=True, message="no active version to beat (first version)")
    if v.baseline_version != active_version or v.baseline_holdout_accuracy is None:
        return GateResult(
            name=name,
            passed=False,
            message=f"verification did not measure the active version {active_version} "
            f"(baseline was {v.baseline_version or 'none'}); cannot tell whether the candidate is better",
        )
    threshold = v.baseline_holdout_accuracy + gates.beat_margin
    ok = v.holdout_accuracy >= threshold
    return GateResult(
        name=name,
        passed=ok,
        value=v.holdout_accuracy,
        threshold=threshold,
        message=f"beatsActive: holdoutAccuracy {v.holdout_accuracy:.4g} {'>=' if ok else '<'} active {active_version}'s "
        f"{v.baseline_holdout_accuracy:.4g} + beatMargin {gates.beat_margin:.4g}",
    )


def _class_floor(floor: float, v: Verification) -> GateResult:
    name = "minClassAccuracy"
    if not v.per_class_accuracy:
        return GateResult(name=name, passed=False, threshold=floor, message="per-class accuracy was not measured")
    worst_class, worst = min(v.per_class_accuracy.items(), key=lambda kv: kv[1])
    below = sorted(k for k, a in v.per_class_accuracy.items() if a < floor)
    if below:
        msg = f"classes {', '.join(below)} below {floor:.4g} (worst: class {worst_class} {worst:.4g})"
    else:
        msg = f"every class >= {floor:.4g} (worst: class {worst_class} {worst:.4g})"
    return GateResult(name=name, passed=not below, value=worst, threshold=floor, message=msg)


def _per_class(gate: ClassGate, v: Verification) -> list[GateResult]:
    """One result per floor set: ``recall[defect]``, ``precision[defect]``, named by the class."""
    out = []
    for what, floor, measured in (
        ("recall", gate.min_recall, v.per_class_recall),
        ("precision", gate.min_precision, v.per_class_precision),
    ):
        if floor is None:
            continue
        name = f"{what}[{gate.class_}]"
        if not measured:
            message = f"{name}: per-class {what} was not measured (a verifier older than per-class gates)"
            out.append(GateResult(name=name, passed=False, threshold=floor, message=message))
        elif gate.class_ not in measured:
            message = (
                f"{name}: the model has no class {gate.class_!r} (its classes: {', '.join(sorted(measured))});"
                " fix spec.verification.gates.perClass"
            )
            out.append(GateResult(name=name, passed=False, threshold=floor, message=message))
        else:
            out.append(_at_least(name, measured[gate.class_], floor))
    return out


def failing_summary(results: list[GateResult]) -> str:
    failed = [r.message for r in results if not r.passed]
    return "; ".join(failed) if failed else "all gates passed"
