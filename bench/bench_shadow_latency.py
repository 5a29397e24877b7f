"""Shadow scoring on vs off: p99 latency and throughput of the same server at the same load.

One modelloop-server process serves digits v1; v2 is on disk. The same closed-loop load as
bench_serving_throughput (32 keep-alive connections, one example per request, the same 64 seeded
inputs, a bare asyncio HTTP/1.1 probe) drives ``/v1/predict`` in alternating windows: with v2
loaded as the shadow (``POST /v1/shadow`` on the control socket, so every answered request is also
queued for the candidate) and with it unloaded (``DELETE /v1/shadow``), rotating which goes first
in each round. Same process, same model, same load: what the ratios measure is what shadow
scoring costs the answers. The target is the issue's: p99 with the shadow at most 1.1x without it.
Throughput is reported beside it (at saturation the shadow thread competes for the same cores;
under the queue bound it drops shadow work rather than slow the answers), with the share of
requests the shadow scored and dropped.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.bench_serving_throughput import CONCURRENCY, Server, Window, _start, _total, drive
from modelloop.api import constants as c
from modelloop_dev.processes import ManagedProcess, wait_for
from modelloop_server.control import DEFAULT_SOCKET_NAME, ControlClient
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

MODEL = "digits"
TARGET_P99_RATIO = 1.1
OFF, ON = "shadow-off", "shadow-on"


def start(tmp: Path) -> tuple[Server, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
    model_dir = tmp / "models"
    digest = write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v1", 1)
    write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v2", 2)
    (model_dir / ".current").write_text("v1\n")

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
    return Server(OFF, process, port, "/v1/predict", "modelloop"), model_dir


def shadow(model_dir: Path, on: bool) -> dict[str, Any]:
    client = ControlClient(model_dir / DEFAULT_SOCKET_NAME)
    if on:
        body = json.dumps({"version": "v2", "path": str(model_dir / "v2")}).encode()
        status, raw = client.request("POST", "/v1/shadow", body)
    else:
        status, raw = client.request("DELETE", "/v1/shadow")
    if status != 200:
        raise AssertionError(f"shadow {'load' if on else 'unload'} answered {status}: {raw[:300]!r}")
    answer: dict[str, Any] = json.loads(raw)
    return answer


def shadow_queued(model_dir: Path) -> int:
    status, raw = ControlClient(model_dir / DEFAULT_SOCKET_NAME).request("GET", "/v1/shadow")
    return int(json.loads(raw)["queued"]) if status == 200 else -1


def shadow_counts(server: Server) -> tuple[float, float]:
    """(scored, dropped) requests so far for candidate v2, from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    out = {"scored": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f'modelloop_server_shadow_{key}_requests_total{{candidate="v2"}}'):
                out[key] = float(line.rsplit(" ", 1)[1])
    return out["scored"], out["dropped"]


def run(rounds: int, seconds: float, warmup: float) -> list[report.Measurement]:
    windows: dict[str, list[Window]] = {OFF: [], ON: []}
    scored = dropped = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp_s:
        server, model_dir = start(Path(tmp_s))
        try:
            for on in (True, False):
                shadow(model_dir, on)
                drive(server, warmup)
            order = [OFF, ON]
            for r in range(rounds):
                for mode in order[r % 2 :] + order[: r % 2]:
                    if mode == ON:
                        shadow(model_dir, True)  # counters start from zero for each load
                    w = drive(server, seconds)
                    if mode == ON:
                        wait_for(lambda: shadow_queued(model_dir) == 0, 30, "the shadow queue to drain")
                        s, d = shadow_counts(server)
                        scored, dropped = scored + s, dropped + d
                        shadow(model_dir, False)
                    windows[mode].append(w)
                    print(
                        f"  round {r + 1}/{rounds} {mode:>10}: {w.rps:7.1f} req/s, "
                        f"p99 {report.percentile(w.latencies, 99) * 1e3:6.1f} ms, "
                        f"server CPU per request {w.cpu_per_request * 1e3:.2f} ms; {w.failed} failed {w.errors}",
                        flush=True,
                    )
        finally:
            server.process.stop()
    off, on = _total(windows[OFF], seconds), _total(windows[ON], seconds)
    rps_ratio = on["rps"] / off["rps"]
    p99_ratio = on["p99_ms"] / off["p99_ms"]
    share = scored / (scored + dropped) if scored + dropped else 0.0
    print(
        f"  shadow on / off: p99 {on['p99_ms']:.1f} / {off['p99_ms']:.1f} ms = {p99_ratio:.3f}x; "
        f"throughput {on['rps']:.0f} / {off['rps']:.0f} req/s = {rps_ratio:.3f}x; "
        f"shadow scored {scored:.0f}, dropped {dropped:.0f} ({share:.0%} scored)",
        flush=True,
    )
    details: dict[str, Any] = {
        OFF: off,
        ON: on,
        "rounds": rounds,
        "secondsPerWindow": seconds,
        "clients": CONCURRENCY,
        "shadowScored": scored,
        "shadowDropped": dropped,
        "throughputRatio": rps_ratio,
        "loadAverage": os.getloadavg()[0],
    }
    failed = off["failed"] + on["failed"]
    return [
        report.Measurement(
            name="p99 latency, shadow scoring on vs off (digits, CPU)",
            unit="ms",
            baseline=off["p99_ms"],
            baseline_label=f"no shadow, {CONCURRENCY} clients, {off['rps']:.0f} req/s, {off['failed']:.0f} failed",
            figure=on["p99_ms"],
            figure_label=f"v2 in the shadow, same server and load, {on['rps']:.0f} req/s "
            f"(throughput {rps_ratio:.2f}x), {share:.0%} of requests shadow-scored, {on['failed']:.0f} failed",
            target=f"ratio <= {TARGET_P99_RATIO}",
            passed=p99_ratio <= TARGET_P99_RATIO and failed == 0,
            details=details,
        ),
        report.Measurement(
            name="throughput, shadow scoring on vs off (digits, CPU)",
            unit="req/s",
            baseline=off["rps"],
            baseline_label=f"no shadow, {CONCURRENCY} clients",
            figure=on["rps"],
            figure_label=f"v2 in the shadow, same load; {scored:.0f} scored, {dropped:.0f} dropped",
            target="reported (what shadow scoring costs at saturation); no failed requests",
            passed=failed == 0,
            details=details,
        ),
    ]


def main() -> None:
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4; 2 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="window per mode per round (default 10; 5 quick)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    started = time.monotonic()
    for m in run(rounds, seconds, warmup=3.0):
        report.emit(m)
    print(f"  ({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
