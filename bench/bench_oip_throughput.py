"""Open Inference Protocol vs /v1/predict: the same server, model and load, two wire formats.

One modelloop-server process serves the digits network; the same closed-loop load as
bench_serving_throughput (32 keep-alive connections, one example per request, the same 64 seeded
inputs, a bare asyncio HTTP/1.1 probe) drives ``/v1/predict``, ``/v2/models/digits/infer`` with JSON
tensors, and the same OIP path with the binary tensor extension (FP32 input and every output as
raw bytes), one after the other for the same window, rotating which goes first in each round. Both
protocols share the plug-in's checks and the batching queue, so what the ratio measures is the cost
of the OIP request and response format. Reported: req/s over all rounds, the median and range of
the per-round ratio against ``/v1/predict``, p99 latency and server CPU per request.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.bench_serving_throughput import CONCURRENCY, Server, _start, _total, compare, drive_rounds
from modelloop.api import constants as c
from modelloop_dev.processes import ManagedProcess
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

MODEL = "digits"
TARGET_RATIO = 0.9  # the OIP body is larger (names, datatype, shape); it may cost a little, not a lot
V1, OIP_JSON, OIP_BINARY = "v1-predict", "oip-json", "oip-binary"


def start(tmp: Path) -> list[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
    model_dir = tmp / "models"
    digest = write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v1", 1)

    def make(port: int) -> ManagedProcess:
        settings = {
            c.ENV_MODEL: MODEL,
            "MODELLOOP_MODEL_DIR": str(model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
            "MODELLOOP_PORT": str(port),
        }
        argv = [Path(sys.executable).parent / "modelloop-server"]
        return ManagedProcess("modelloop-server", argv, tmp / "server.log", env=env | settings)

    def ready(port: int) -> bool:
        return bool(httpx.get(f"http://127.0.0.1:{port}/readyz").json().get("digest") == digest)

    process, port = _start(make, ready, "modelloop-server ready")
    infer = f"/v2/models/{MODEL}/infer"
    return [
        Server(V1, process, port, "/v1/predict", "modelloop"),
        Server(OIP_JSON, process, port, infer, OIP_JSON),
        Server(OIP_BINARY, process, port, infer, OIP_BINARY),
    ]


def run(rounds: int, seconds: float, warmup: float) -> list[report.Measurement]:
    with tempfile.TemporaryDirectory(prefix="bench-oip-") as tmp_s:
        servers = start(Path(tmp_s))
        try:
            windows = drive_rounds(servers, rounds, seconds, warmup)
        finally:
            servers[0].process.stop()
    base = _total(windows[V1], seconds)
    details: dict[str, Any] = {
        V1: base,
        "rounds": rounds,
        "secondsPerWindow": seconds,
        "loadAverage": os.getloadavg()[0],
    }
    measurements = []
    for name, label in ((OIP_JSON, "JSON tensors"), (OIP_BINARY, "binary tensor extension")):
        mine, ratios, mid = compare(windows, name, V1, seconds, base)
        measurements.append(
            report.Measurement(
                name=f"OIP infer vs /v1/predict (digits, CPU, {label})",
                unit="req/s",
                baseline=base["rps"],
                baseline_label=f"/v1/predict on the same server, {CONCURRENCY} clients, p99 {base['p99_ms']:.0f} ms, "
                f"{base['failed']:.0f} failed",
                figure=mine["rps"],
                figure_label=f"/v2/models/{MODEL}/infer, {label}, {CONCURRENCY} clients, p99 {mine['p99_ms']:.0f} ms, "
                f"{mine['failed']:.0f} failed; per-round ratio median {mid:.2f}, range {min(ratios):.2f}-{max(ratios):.2f}",
                target=f"ratio >= {TARGET_RATIO}",
                passed=mine["rps"] >= TARGET_RATIO * base["rps"] and mine["failed"] == 0,
                details=details | {name: mine, "roundRatios": ratios, "medianRoundRatio": mid},
            )
        )
    return measurements


def main() -> None:
    report.windows_main(__doc__.splitlines()[0] if __doc__ else "", run, "protocol")


if __name__ == "__main__":
    main()
