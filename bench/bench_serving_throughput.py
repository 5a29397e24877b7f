"""Serving throughput: modelloop-server against the KServe Python model server, same model, same load.

Both serve the digits network with the same weights on this machine, one process each, and the
same load probe (32 concurrent clients in a separate process) drives each for the same time;
KServe is called with its v1 protocol (``POST /v1/models/digits:predict``, ``{"instances": [...]}``).
``kserve`` is not a dependency of modelloop: without it the bench says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import report
from modelloop.api import constants as c
from modelloop.devenv.processes import ManagedProcess, free_port, wait_for
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

CONCURRENCY = 32
MODEL = "digits"


def serve_kserve(port: int, weights: Path) -> None:
    """Runs in the KServe process: the same plug-in network and weights behind kserve.Model."""
    import kserve
    import torch
    from safetensors.torch import load_file

    plugin = DigitsPlugin()

    class Digits(kserve.Model):  # type: ignore[misc]
        def load(self) -> bool:
            torch.set_num_threads(1)
            self.net = plugin.build()
            self.net.load_state_dict(load_file(weights))
            self.net.eval()
            self.ready = True
            return True

        def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            x = plugin.preprocess(payload["instances"])
            with torch.inference_mode():
                probs = torch.softmax(self.net(x), dim=1)
            return {"predictions": probs.argmax(dim=1).tolist()}

    model = Digits(MODEL)
    model.load()
    kserve.ModelServer(http_port=port, grpc_port=free_port(), workers=1).start([model])


def drive(url: str, path: str, protocol: str, seconds: float, log: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "modelloop_server.loadprobe", url, "--concurrency", str(CONCURRENCY),
         "--duration", str(seconds), "--log", str(log), "--path", path, "--protocol", protocol],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


def main() -> None:
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--serve-kserve", nargs=2, metavar=("PORT", "WEIGHTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_kserve:
        serve_kserve(int(args.serve_kserve[0]), Path(args.serve_kserve[1]))
        return
    try:
        import kserve  # noqa: F401
    except ImportError:
        print("SKIP bench_serving_throughput: the KServe Python server is not installed (pip install kserve); "
              "it is the baseline this bench compares against, so there is nothing to measure.")  # fmt: skip
        return
    seconds = 5.0 if args.quick else 10.0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "models"
        write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v1", 1)
        port = free_port()
        ours = ManagedProcess("modelloop-server", [Path(sys.executable).parent / "modelloop-server"], tmp / "ours.log", env=env | {
            c.ENV_MODEL: MODEL, "MODELLOOP_MODEL_DIR": str(model_dir), "MODELLOOP_BIND_HOST": "127.0.0.1", "MODELLOOP_PORT": str(port),
        }).start()  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, "modelloop-server ready", ours)
            mine = drive(url, "/v1/predict", "modelloop", seconds, tmp / "ours.jsonl")
        finally:
            ours.stop()
        kport = free_port()
        theirs = ManagedProcess("kserve", [sys.executable, "-m", "bench.bench_serving_throughput", "--serve-kserve",
                                           str(kport), str(model_dir / "v1" / "model.safetensors")], tmp / "kserve.log", env=env)  # fmt: skip
        theirs.start()
        try:
            kurl = f"http://127.0.0.1:{kport}"
            wait_for(lambda: httpx.get(f"{kurl}/v1/models/{MODEL}").status_code == 200, 120, "KServe ready", theirs)
            base = drive(kurl, f"/v1/models/{MODEL}:predict", "kserve-v1", seconds, tmp / "kserve.jsonl")
        finally:
            theirs.stop()
    report.emit(report.Measurement(
        name="serving throughput", unit="req/s",
        baseline=base["rps"], baseline_label=f"KServe Python model server ({CONCURRENCY} clients, {base['failed']} failed)",
        figure=mine["rps"], figure_label=f"modelloop-server ({CONCURRENCY} clients, {mine['failed']} failed)",
        target="ratio >= 1", passed=mine["rps"] >= base["rps"] and mine["failed"] == 0,
        details={"modelloop": mine, "kserve": base, "load_average": os.getloadavg()[0]},
    ))  # fmt: skip


if __name__ == "__main__":
    main()
