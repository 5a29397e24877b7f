"""The KServe side of bench_vs_kserve: the laundry ResNet-18 behind ``kserve.Model``, OIP (v2) REST.

Runs only in the bench's own KServe virtualenv (see ``bench_serving_throughput.kserve_python``:
``kserve`` pinned there, torch, Pillow, safetensors and modelloop reached through a ``.pth`` into
modelloop's venv, so both servers run the very same torch and Pillow builds). It answers
``POST /v2/models/laundry/infer`` with one BYTES input (encoded images as base64 strings in JSON: KServe
0.21's REST server cannot take raw image bytes in the binary tensor extension, it converts BYTES
elements to UTF-8 text and answers 500) and the same three outputs modelloop-server returns (``probabilities``, ``predicted``,
``label``) as JSON.

Set up as a strong baseline, the same way as bench/kserve_digits.py: the same plug-in network
(torchvision ResNet-18 with the normalisation built in), the same weights file, the same decoder
(``LaundryPlugin.decode_bytes``: Pillow decode, RGB, bilinear resize to 224, scale to [0, 1]), the
forward pass off the event loop in a pool of one single-threaded torch worker per core (what
modelloop-server does), and no per-request log lines. Differences from modelloop-server: no
batching across requests (KServe's Python server has none; its optional batcher is a separate
agent/sidecar), and the decode runs in the worker pool with the forward pass, whereas
modelloop-server decodes on its event loop.

Usage: ``<kserve venv>/bin/python -m bench.kserve_laundry --port P --weights model.safetensors``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from modelloop_trainer.examples.laundry import LaundryPlugin


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def _images(data: Any) -> list[bytes]:
    """The encoded images of a BYTES input: base64 strings in JSON, as KServe's own image examples send
    them (its REST server turns binary-extension BYTES into UTF-8 strings and answers 500 on a JPEG)."""
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).tolist()
    return [base64.b64decode(d) for d in data]


def build_model(kserve: Any, name: str, weights: Path, threads: int, optimised: bool = False) -> Any:
    """A ``kserve.Model`` subclass instance, loaded and ready (kserve is imported late, see main)."""
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    plugin = LaundryPlugin()

    class Laundry(kserve.Model):  # type: ignore[misc]
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
            # --optimised: the very rewrites modelloop-server serves (conv+bn folded, channels-last).
            self.net = plugin.for_inference(net).network if optimised else net
            self.ready = True
            return True

        def infer(self, images: list[bytes]) -> tuple[list[list[float]], list[int]]:
            x = torch.stack([plugin.decode_bytes(raw) for raw in images])
            with torch.inference_mode():
                probs = torch.softmax(self.net(x).float(), dim=1)
            return probs.tolist(), probs.argmax(dim=1).tolist()

        async def predict(
            self,
            payload: InferRequest,
            headers: dict[str, str] | None = None,
            response_headers: dict[str, str] | None = None,
        ) -> InferResponse:
            images = _images(payload.inputs[0].data)
            loop = asyncio.get_running_loop()
            probs, idx = await loop.run_in_executor(self.pool, self.infer, images)
            n, k = len(idx), plugin.num_classes
            outputs = [
                InferOutput("probabilities", [n, k], "FP32", [v for row in probs for v in row]),
                InferOutput("predicted", [n], "INT64", idx),
                InferOutput("label", [n], "BYTES", [plugin.class_names[i] for i in idx]),
            ]
            return InferResponse(payload.id or uuid.uuid4().hex, self.name, outputs)

    return Laundry()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--model-name", default="laundry")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference workers (default: cores)")
    p.add_argument(
        "--optimised",
        action="store_true",
        help="serve the network as modelloop-server does (ModelPlugin.for_inference)",
    )
    args = p.parse_args()
    # kserve parses sys.argv when imported; it must not see (or choke on) this script's arguments.
    sys.argv = sys.argv[:1]
    import kserve

    torch.set_num_threads(1)
    model = build_model(kserve, args.model_name, args.weights, args.threads, args.optimised)
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    for quiet in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    print(
        f"kserve {version('kserve')}, torch {torch.__version__}, threads={args.threads}, "
        f"network {'optimised as modelloop-server serves it' if args.optimised else 'as built (eager)'}",
        flush=True,
    )
    server.start([model])


if __name__ == "__main__":
    main()
