"""The KServe side of bench_serving_throughput: the digits network behind ``kserve.Model``.

Runs only in the bench's own KServe virtualenv (``kserve`` pinned there; torch, safetensors and
modelloop reached through a ``.pth`` into modelloop's venv, so both servers run the very same
torch build), never in modelloop's environment. It serves the V1 protocol,
``POST /v1/models/<name>:predict`` with ``{"instances": [[64 numbers], ...]}``.

The baseline is set up to be strong rather than naive, so a ratio above 1 means something: the
same plug-in network, weights and input checks as modelloop-server, inference off the event loop
in a pool of one single-threaded torch worker per core (what modelloop-server does), the same
answer content (class, name, confidence, probabilities), and no per-request log lines (by default
KServe logs an access line and two timing lines per request; modelloop-server logs none).
``--predict inline`` runs the forward pass on the event loop instead, as KServe's own custom-model
examples do (measured: no faster here).

Usage: ``<kserve venv>/bin/python -m bench.kserve_digits --port P --weights model.safetensors``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from modelloop_trainer.examples.digits import DigitsPlugin


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def build_model(kserve: Any, name: str, weights: Path, threads: int, inline: bool) -> Any:
    """A ``kserve.Model`` subclass instance, loaded and ready (kserve is imported late, see main)."""
    plugin = DigitsPlugin()

    class Digits(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name)
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="infer", initializer=_one_torch_thread)
            self.load()

        def load(self) -> bool:
            net = plugin.build()
            net.load_state_dict(load_file(weights), strict=True)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            self.net = net
            self.ready = True
            return True

        def infer(self, instances: list[Any]) -> list[dict[str, Any]]:
            x = plugin.preprocess(instances)
            with torch.inference_mode():
                probs = torch.softmax(self.net(x).float(), dim=1)
            conf, idx = probs.max(dim=1)
            return [
                {"predicted": k, "className": plugin.class_names[k], "confidence": c, "probabilities": row}
                for row, c, k in zip(probs.tolist(), conf.tolist(), idx.tolist(), strict=True)
            ]

        async def predict(
            self,
            payload: dict[str, Any],
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> dict[str, Any]:
            instances = payload["instances"]
            if inline:
                return {"predictions": self.infer(instances)}
            loop = asyncio.get_running_loop()
            return {"predictions": await loop.run_in_executor(self.pool, self.infer, instances)}

    return Digits()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--model-name", default="digits")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference workers (default: cores)")
    p.add_argument("--predict", choices=("pool", "inline"), default="pool")
    args = p.parse_args()
    # kserve parses sys.argv when imported; it must not see (or choke on) this script's arguments.
    sys.argv = sys.argv[:1]
    import kserve

    torch.set_num_threads(1)
    model = build_model(kserve, args.model_name, args.weights, args.threads, args.predict == "inline")
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    for quiet in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    print(f"kserve {version('kserve')}, torch {torch.__version__}, predict={args.predict}", flush=True)
    server.start([model])


if __name__ == "__main__":
    main()
