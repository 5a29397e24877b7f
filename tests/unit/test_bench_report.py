"""The arithmetic every benchmark figure in the README goes through."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "report.py"
# Loaded by path: putting the repository root on sys.path would let the ``operator/`` folder shadow the stdlib.
_SPEC = importlib.util.spec_from_file_location("bench_report_under_test", _PATH)
assert _SPEC and _SPEC.loader
report = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = report
_SPEC.loader.exec_module(report)


def measurement(baseline: float, figure: float, passed: bool = True) -> report.Measurement:
    return report.Measurement(
        name="promotion p95",
        unit="s",
        baseline=baseline,
        figure=figure,
        baseline_label="published design",
        figure_label="ours",
        target="p95 < 2 s",
        passed=passed,
    )


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([3.0], 95, 3.0),
        ([float(i) for i in range(1, 21)], 95, 19.0),
        ([float(i) for i in range(1, 21)], 100, 20.0),
        ([float(i) for i in range(1, 21)], 50, 10.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 95, 5.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 20, 1.0),
    ],
)
def test_percentile_is_nearest_rank_over_sorted_samples(samples: list[float], q: float, expected: float) -> None:
    assert report.percentile(samples, q) == expected


@pytest.mark.parametrize(("samples", "q"), [([], 95), ([1.0], 0), ([1.0], 101)])
def test_percentile_rejects_what_has_no_answer(samples: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        report.percentile(samples, q)


def test_summary_reports_the_median_and_an_observed_p95() -> None:
    s = report.summary([0.1, 0.4, 0.2, 0.3])
    assert s == {"n": 4.0, "min": 0.1, "p50": pytest.approx(0.25), "p95": 0.4, "max": 0.4}


def test_ratio_is_figure_over_baseline_and_survives_a_json_round_trip() -> None:
    m = measurement(baseline=60.0, figure=0.3)
    assert m.ratio == pytest.approx(0.005)
    again = report.Measurement.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m


def test_a_zero_baseline_gives_an_infinite_ratio_written_as_null() -> None:
    m = measurement(baseline=0.0, figure=1.0)
    assert math.isinf(m.ratio)
    assert m.to_json()["ratio"] is None
    assert report.fmt(m.ratio) == "inf"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_measurement_refuses_a_figure_that_is_not_a_finite_non_negative_number(bad: float) -> None:
    with pytest.raises(ValueError, match="figure"):
        measurement(baseline=1.0, figure=bad)


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.0, "s", "0 s"),
        (0.2164, "s", "0.216 s"),
        (1.19, "s", "1.19 s"),
        (659.4, "req/s", "659 req/s"),
        (12345.0, "", "12,345"),
    ],
)
def test_fmt_keeps_three_significant_figures_for_small_values(value: float, unit: str, text: str) -> None:
    assert report.fmt(value, unit) == text


def test_markdown_table_marks_failures_in_bold() -> None:
    table = report.markdown_table([measurement(60.0, 0.3), measurement(2.0, 3.5, passed=False)])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2].endswith("| yes |") and "x0.005" in lines[2]
    assert lines[3].endswith("| **no** |") and "x1.75" in lines[3]


def test_emit_appends_one_json_line_for_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results.jsonl"
    monkeypatch.setenv(report.RESULTS_ENV, str(out))
    report.emit(measurement(60.0, 0.3))
    report.emit(measurement(2.0, 3.5, passed=False))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False]
    assert rows[1]["ratio"] == pytest.approx(1.75)
