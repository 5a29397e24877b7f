"""Hot swap under load: throughput and p99 while versions are swapped, against a steady phase and
against the naive way (restart the server with the new model), all in one run.

One ``modelloop-server`` process serves the digits network; 32 concurrent clients (a separate
``modelloop_server.loadprobe`` process) send predictions back to back. Phase 1 is steady;
phase 2 swaps every ``--interval`` seconds, cycling through three versions so that every swap
is a real load + warm-up from disk (not the instant rollback); phase 3 is the baseline: the
same clients while the server process is restarted with the next version, as a deployment
without hot swap would. Reported: requests/s and p99 during swaps over steady (ratio), failed
requests during swaps (must be 0) and failed requests of the restart baseline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import report
from modelloop.api import constants as c
from modelloop_dev.processes import ManagedProcess, free_port, wait_for
from modelloop_server.control import DEFAULT_SOCKET_NAME, ControlClient
from modelloop_server.modeldir import write_current
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

CONCURRENCY = 32
VERSIONS = ("v1", "v2", "v3")


class Server:
    def __init__(self, workdir: Path) -> None:
        self.model_dir = workdir / "models"
        self.model_dir.mkdir(parents=True)
        for i, v in enumerate(VERSIONS, 1):
            write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, self.model_dir, "digits", v, i)
        write_current(self.model_dir, "v1")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
        env |= {
            c.ENV_MODEL: "digits",
            "MODELLOOP_MODEL_DIR": str(self.model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
            "MODELLOOP_PORT": str(self.port),
        }
        self.proc = ManagedProcess(
            "server", [Path(sys.executable).parent / "modelloop-server"], workdir / "server.log", env=env
        )

    def start(self) -> None:
        self.proc.start()
        wait_for(lambda: httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200, 120, "server ready", self.proc)

    def reload(self, version: str) -> None:
        """As the sidecar does it: over the control socket, the public port has no reload route."""
        body = json.dumps({"version": version, "path": str(self.model_dir / version)}).encode()
        status, answer = ControlClient(self.model_dir / DEFAULT_SOCKET_NAME).request("POST", "/v1/reload", body, 60)
        if status != 200:
            raise RuntimeError(f"reload {version} answered {status}: {answer[:300]!r}")


class Probe:
    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelloop_server.loadprobe",
                url,
                "--concurrency",
                str(CONCURRENCY),
                "--log",
                str(log),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=120)
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def stats(responses: list[dict[str, Any]], since: float, until: float) -> dict[str, float]:
    """Requests that started in [since, until): rate, p99 latency of the successful ones, failures."""
    window = [r for r in responses if since <= r["t0"] < until]
    ok = [r["t1"] - r["t0"] for r in window if r["status"] == 200]
    return {
        "rps": len(window) / (until - since),
        "p99_ms": report.percentile(ok, 99) * 1000 if ok else 0.0,
        "requests": len(window),
        "failed": len(window) - len(ok),
    }


def main() -> None:
    args = report.parser(__doc__.splitlines()[0] if __doc__ else "").parse_args()
    phase = 4.0 if args.quick else 8.0
    interval = 0.25
    with tempfile.TemporaryDirectory(prefix="bench-hot-swap-") as tmp_s:
        tmp = Path(tmp_s)
        server = Server(tmp)
        server.start()
        try:
            probe = Probe(server.url, tmp / "swap.jsonl")
            time.sleep(1.0)  # let the clients reach a steady rate before the clock starts
            t_steady = time.monotonic()
            time.sleep(phase)
            t_swap = time.monotonic()
            swaps = 0
            while time.monotonic() - t_swap < phase:
                server.reload(VERSIONS[(swaps + 1) % len(VERSIONS)])
                swaps += 1
                time.sleep(interval)
            t_end = time.monotonic()
            responses = probe.stop()
            steady, swapping = stats(responses, t_steady, t_swap), stats(responses, t_swap, t_end)

            # baseline: restart the process with the next version (what a rolling restart does to one replica)
            restarts = 2
            probe = Probe(server.url, tmp / "restart.jsonl")
            time.sleep(1.0)
            t_base = time.monotonic()
            for i in range(restarts):
                server.proc.stop()
                write_current(server.model_dir, VERSIONS[(i + 1) % len(VERSIONS)])
                server.start()
                time.sleep(1.0)
            t_base_end = time.monotonic()
            restart = stats(probe.stop(), t_base, t_base_end)
        finally:
            server.proc.stop()

    details = {"steady": steady, "swapping": swapping, "swaps": swaps, "restart_baseline": restart, "restarts": restarts,
               "concurrency": CONCURRENCY, "load_average": os.getloadavg()[0]}  # fmt: skip
    report.emit(report.Measurement(
        name="hot swap: throughput during swaps", unit="req/s",
        baseline=steady["rps"], baseline_label=f"steady, no swaps ({CONCURRENCY} clients)",
        figure=swapping["rps"], figure_label=f"{swaps} swaps in {phase:.0f}s (load + warm-up each)",
        target="ratio >= 0.8", passed=swapping["rps"] >= 0.8 * steady["rps"], details=details,
    ))  # fmt: skip
    report.emit(report.Measurement(
        name="hot swap: p99 latency during swaps", unit="ms",
        baseline=steady["p99_ms"], baseline_label="steady, no swaps",
        figure=swapping["p99_ms"], figure_label=f"{swaps} swaps",
        target="ratio <= 2", passed=swapping["p99_ms"] <= 2 * steady["p99_ms"], details=details,
    ))  # fmt: skip
    report.emit(report.Measurement(
        name="hot swap: failed requests", unit="requests",
        baseline=restart["failed"], baseline_label=f"naive: restart the server with the new model ({restarts}x)",
        figure=swapping["failed"], figure_label=f"hot swap ({swaps} swaps)",
        target="0 failed during swaps", passed=swapping["failed"] == 0, details=details,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
