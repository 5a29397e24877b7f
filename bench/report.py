"""The one way a benchmark reports: a baseline and our figure measured in the same run, and their ratio.

Machines running these benches are shared and noisy, so a figure means nothing next to a
constant measured elsewhere; every :class:`Measurement` carries the baseline it was measured
against in the same process run. Benches call :func:`emit` for each measurement: it prints a
human-readable block and, when ``python -m bench`` runs the bench (it sets
``MODELLOOP_BENCH_RESULTS``), appends one JSON line to that file so the driver can build the
results file and the Markdown table without parsing stdout.

API for bench authors::

    from bench import report
    args = report.parser("what this bench measures").parse_args()   # gives --quick
    report.emit(report.Measurement(
        name="artifact download", unit="MB/s",
        baseline=plain, baseline_label="minio fget_object, no hashing",
        figure=ours, figure_label="fetch_version with SHA-256 checks",
        target="ratio >= 0.8", passed=ours / plain >= 0.8,
    ))
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RESULTS_ENV = "MODELLOOP_BENCH_RESULTS"
QUICK_ENV = "MODELLOOP_BENCH_QUICK"


@dataclass(frozen=True)
class Measurement:
    """One figure against one baseline. ``ratio`` is always figure / baseline, in the same unit."""

    name: str
    unit: str
    baseline: float
    figure: float
    baseline_label: str
    figure_label: str
    target: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, value in (("baseline", self.baseline), ("figure", self.figure)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.name}: {what} must be a finite, non-negative number, got {value!r}")

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline if self.baseline else math.inf

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = None if math.isinf(self.ratio) else self.ratio
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        return cls(**{k: v for k, v in d.items() if k != "ratio"})


def quick_default() -> bool:
    return os.environ.get(QUICK_ENV, "") == "1"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--quick`` (smaller sizes for CI), defaulting from the driver's env."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", default=quick_default(), help="smaller sizes, for CI")
    return p


def rounds_main(
    description: str, run: Callable[[int, float], Iterable[Measurement]], rounds_help: str, timeout_help: str
) -> None:
    """The command line of the latency benches: ``--rounds`` (20, or 6 with ``--quick``) and a per-round timeout."""
    p = parser(description)
    p.add_argument("--rounds", type=int, default=None, help=f"{rounds_help} (default 20; 6 with --quick)")
    p.add_argument("--timeout", type=float, default=180, help=timeout_help)
    args = p.parse_args()
    rounds = args.rounds or (6 if args.quick else 20)
    if rounds < 1:
        p.error("--rounds must be at least 1")
    for m in run(rounds, args.timeout):
        emit(m)


def windows_main(description: str, run: Callable[[int, float, float], Iterable[Measurement]], per: str) -> None:
    """The command line of the throughput benches: alternating ``--rounds`` of ``--seconds`` windows per ``per``."""
    p = parser(description)
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4; 2 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help=f"window per {per} per round (default 10; 5 quick)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    started = time.monotonic()
    for m in run(rounds, seconds, 3.0):
        emit(m)
    print(f"  ({time.monotonic() - started:.0f} s in all)")


def fmt(value: float, unit: str = "") -> str:
    if math.isinf(value):
        return "inf"
    if value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def emit(m: Measurement) -> None:
    """Print the measurement and hand it to the driver, if one is listening."""
    verdict = "PASS" if m.passed else "FAIL"
    print(
        f"\n== {m.name} ==\n"
        f"  baseline: {fmt(m.baseline, m.unit):>14}   ({m.baseline_label})\n"
        f"  figure:   {fmt(m.figure, m.unit):>14}   ({m.figure_label})\n"
        f"  ratio:    {fmt(m.ratio):>14}   (figure / baseline)\n"
        f"  target:   {m.target}: {verdict}",
        flush=True,
    )
    out = os.environ.get(RESULTS_ENV)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(m.to_json(), sort_keys=True) + "\n")


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with 20 samples the p95 is the 19th, an observed value, not an interpolation."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    ordered = sorted(samples)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(samples)),
        "min": min(samples),
        "p50": statistics.median(samples),
        "p95": percentile(samples, 95),
        "max": max(samples),
    }


def markdown_table(measurements: Iterable[Measurement]) -> str:
    rows = [
        "| benchmark | baseline | figure | ratio | target | pass |",
        "|---|---|---|---|---|---|",
    ]
    for m in measurements:
        rows.append(
            f"| {m.name} | {fmt(m.baseline, m.unit)} ({m.baseline_label}) | {fmt(m.figure, m.unit)} "
            f"| x{fmt(m.ratio)} | {m.target} | {'yes' if m.passed else '**no**'} |"
        )
    return "\n".join(rows)
