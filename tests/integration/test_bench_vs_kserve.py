"""The KServe comparison bench runs end to end at smoke size, when its KServe venv is already built.

The bench (bench/bench_vs_kserve.py) starts four real servers (modelloop-server batched and
unbatched, KServe's Python server with the network as written and with modelloop's rewrite) and drives them with encoded JPEGs over the OIP binary
extension. Building KServe's venv takes minutes and ~450 MB, so the test never builds it
(``--no-build``): where ``make bench`` has not built it yet, the test is skipped and says how to
build it. Run as ``python -m bench`` runs a bench (a subprocess from the repository root, results
as JSON lines), so what is checked is what ``make bench`` reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NO_VENV = 3  # bench_vs_kserve --no-build: the KServe venv is not there


def test_bench_vs_kserve_quick_reports_every_figure_with_no_failed_request(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    env = dict(os.environ, MODELLOOP_BENCH_RESULTS=str(results), MODELLOOP_BENCH_QUICK="1")
    argv = [sys.executable, "-m", "bench.bench_vs_kserve", "--quick", "--no-build", "--rounds", "1", "--seconds", "5"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=420, check=False)
    if proc.returncode == NO_VENV:
        pytest.skip(f"KServe venv not built (build it with `make bench` once): {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    measurements = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert len(measurements) == 5, measurements
    throughput = [m for m in measurements if m["unit"] == "req/s"]
    assert len(throughput) == 3, "batching on and off vs KServe as written, and vs KServe serving the same rewrite"
    for m in throughput:
        assert m["baseline"] > 0 and m["figure"] > 0, m
        assert ", 0 failed" in m["baseline_label"] and ", 0 failed" in m["figure_label"], m
    for m in measurements:
        if m["unit"] == "ms CPU":
            assert m["baseline"] > 0 and m["figure"] > 0, m
