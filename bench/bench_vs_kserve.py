"""Image serving vs KServe: the laundry ResNet-18 at 224x224 on CPU, one encoded image per request.

modelloop-server serves the laundry plug-in (trainer-image/modelloop_trainer/examples/laundry.py,
torchvision ResNet-18, freshly initialised seeded weights written as the trainer writes a version);
KServe's Python model server (``kserve`` pinned, in a venv of its own) serves a ``kserve.Model``
that loads the same weights file into the same network and decodes with the same code
(bench/kserve_laundry.py). Both are called on the Open Inference Protocol (v2) REST path
``/v2/models/laundry/infer`` with the same images: one JPEG (256x256 fabric swatch, ~25 kB, resized
to 224 by the server) as a BYTES tensor, answered with the same three JSON outputs. The one
difference in the wire format: modelloop-server gets the JPEG raw in the binary tensor extension,
KServe gets it base64-encoded in JSON (KServe's documented form for images: its REST server turns
binary-extension BYTES elements into UTF-8 text and answers 500 on a JPEG); base64 and JSON of
~33 kB cost well under a millisecond, against a forward pass of ~100 ms CPU. Fairness: one server process each, the same inference pool (one worker thread per core,
``torch.set_num_threads(1)`` in each), the same torch and Pillow builds (the KServe venv imports
them from modelloop's). KServe runs twice too: with the network as a KServe user writes it (``load_state_dict`` then
``eval()``, the headline comparison) and with the network rewritten exactly as modelloop-server
serves it (``ModelPlugin.for_inference``: batch norms folded, channels-last), so the share of
the gain that is arithmetic and the share that is the server's own code are both shown.
modelloop-server runs twice: as shipped (opportunistic batching: requests
that queue while a forward pass runs share the next one; KServe's Python server has no batching of
its own) and with batching off (``MODELLOOP_INFERENCE_BATCH_ROWS=1``), so the gain from batching
is shown apart.

The load is bench_serving_throughput's: 32 keep-alive connections in a closed loop, each server
driven alone for the same window, rotating which goes first each round so drift in a shared
machine's load falls on all four. Reported: req/s over all rounds, the median and range of the
per-round ratio, p50/p99 latency and server CPU seconds per request (``/proc/<pid>/stat``).

The KServe venv is built on first use (see ``bench_serving_throughput.kserve_python``); if that
fails the bench exits with status 2: there is no baseline to compare against.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench import report
from bench.bench_serving_throughput import (
    CONCURRENCY,
    KSERVE_PIN,
    KServeUnavailable,
    Server,
    _start,
    _total,
    compare,
    drive_rounds,
    kserve_python,
    kserve_server,
    modelloop_server,
    serving_digest,
)
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import swatch

MODEL = "laundry"
PLUGIN = "modelloop_trainer.examples.laundry:LaundryPlugin"
TARGET_RATIO = 1.5  # issue 15
BATCH_ROWS = 256  # the server's default MODELLOOP_INFERENCE_BATCH_ROWS
IMAGES = 32
IMAGE_SIDE = 256  # photos arrive larger than the model's 224: the resize is part of the work
OURS, UNBATCHED, KSERVE, KSERVE_OPT = "modelloop", "unbatched", "kserve", "kserve-opt"
INFER = f"/v2/models/{MODEL}/infer"


def jpegs(n: int = IMAGES, seed: int = 15) -> list[bytes]:
    """Seeded fabric swatches (half stained) as JPEGs, the kind of photo the laundry service judges."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(swatch(rng, IMAGE_SIDE, defect=i % 2 == 1).pixels, "RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def infer_body(image: bytes) -> tuple[bytes, int]:
    """An OIP infer body with one BYTES element in the binary tensor extension; (body, JSON header length)."""
    element = struct.pack("<I", len(image)) + image
    tensor = {"name": "input", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(element)}}
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + element, len(head)


def infer_json(image: bytes) -> bytes:
    """The same request as JSON with the image base64-encoded, the form KServe's REST server can take."""
    tensor = {"name": "input", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor]}).encode()


def http_requests(port: int, images: list[bytes], binary: bool) -> list[bytes]:
    """Pre-encoded HTTP/1.1 requests for the probe: the same images for every server, raw in the binary
    extension (modelloop-server) or base64 in JSON (KServe)."""
    out = []
    for image in images:
        if binary:
            body, head_len = infer_body(image)
            extra, kind = f"Inference-Header-Content-Length: {head_len}\r\n", "application/octet-stream"
        else:
            body, extra, kind = infer_json(image), "", "application/json"
        head = (f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        out.append(head.encode() + body)
    return out


def start_servers(tmp: Path, kpy: Path, images: list[bytes]) -> list[Server]:
    model_dir = tmp / "models"
    digest = write_local_version(LaundryPlugin(env={}), PLUGIN, model_dir, MODEL, "v1", 1)
    weights = model_dir / "v1" / "model.safetensors"
    ours = partial(modelloop_server, tmp, model_dir, plugin=PLUGIN, model=MODEL)
    theirs = kserve_server(tmp, kpy, "bench.kserve_laundry", weights, model=MODEL)
    theirs_opt = kserve_server(tmp, kpy, "bench.kserve_laundry", weights, MODEL, ["--optimised"], "kserve-opt")
    ours_ready = serving_digest(digest)

    def theirs_ready(port: int) -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready").status_code == 200

    mine, port = _start(ours(BATCH_ROWS), ours_ready, "modelloop-server ready")
    alone, aport = _start(ours(1), ours_ready, "modelloop-server (no batching) ready")
    base, kport = _start(theirs, theirs_ready, "KServe ready")
    base_opt, oport = _start(theirs_opt, theirs_ready, "KServe (optimised network) ready")
    return [
        Server(OURS, mine, port, INFER, "oip-bytes", http_requests(port, images, binary=True)),
        Server(UNBATCHED, alone, aport, INFER, "oip-bytes", http_requests(aport, images, binary=True)),
        Server(KSERVE, base, kport, INFER, "oip-bytes-base64", http_requests(kport, images, binary=False)),
        Server(KSERVE_OPT, base_opt, oport, INFER, "oip-bytes-base64", http_requests(oport, images, binary=False)),
    ]


def run(rounds: int, seconds: float, warmup: float, build: bool = True) -> list[report.Measurement]:
    kpy = kserve_python(build=build)
    images = jpegs()
    with tempfile.TemporaryDirectory(prefix="bench-vs-kserve-") as tmp_s:
        tmp = Path(tmp_s)
        servers = start_servers(tmp, kpy, images)
        try:
            windows = drive_rounds(servers, rounds, seconds, warmup)
        finally:
            for s in servers:
                s.process.stop()
        kserve_log = (tmp / "kserve.log").read_text(errors="replace").splitlines()
    versions = next((line for line in kserve_log if line.startswith("kserve ")), "kserve ?")
    base = _total(windows[KSERVE], seconds)
    details: dict[str, Any] = {
        KSERVE: base,
        "rounds": rounds,
        "secondsPerWindow": seconds,
        "versions": versions,
        "jpegBytesMedian": sorted(len(i) for i in images)[len(images) // 2],
        "loadAverage": os.getloadavg(),
    }
    cpu = "server_cpu_ms_per_request"
    measurements = []
    for name, label in ((OURS, f"opportunistic batching up to {BATCH_ROWS} rows"), (UNBATCHED, "batching off")):
        mine, ratios, mid = compare(windows, name, KSERVE, seconds, base, f"({versions})")
        measurements.append(
            report.Measurement(
                name=f"image serving vs KServe (laundry ResNet-18, 224x224, CPU, {label})",
                unit="req/s",
                baseline=base["rps"],
                baseline_label=f"KServe {KSERVE_PIN} Python model server, OIP REST, {CONCURRENCY} clients, "
                f"p50 {base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms, {base[cpu]:.1f} ms CPU per request, "
                f"{base['failed']:.0f} failed",
                figure=mine["rps"],
                figure_label=f"modelloop-server, {label}, {CONCURRENCY} clients, p50 {mine['p50_ms']:.0f} ms, "
                f"p99 {mine['p99_ms']:.0f} ms, {mine[cpu]:.1f} ms CPU per request, {mine['failed']:.0f} failed; "
                f"per-round ratio median {mid:.2f}, range {min(ratios):.2f}-{max(ratios):.2f}",
                target=f"ratio >= {TARGET_RATIO}" if name == OURS else "ratio >= 1.0",
                passed=mine["rps"] >= (TARGET_RATIO if name == OURS else 1.0) * base["rps"] and mine["failed"] == 0,
                details=details | {name: mine, "roundRatios": ratios, "medianRoundRatio": mid},
            )
        )
        measurements.append(
            report.Measurement(
                name=f"image serving: server CPU per request vs KServe (laundry ResNet-18, {label})",
                unit="ms CPU",
                baseline=base[cpu],
                baseline_label=f"KServe {KSERVE_PIN}: median over rounds of CPU seconds / requests",
                figure=mine[cpu],
                figure_label=f"modelloop-server, {label}",
                target="ratio <= 1.0",
                passed=mine[cpu] <= base[cpu],
                details=details | {name: mine},
            )
        )
    # The same comparison with KServe serving the network rewritten as modelloop-server serves it: what
    # is left is the servers' own code (batching, decode, protocol), not the arithmetic.
    opt = _total(windows[KSERVE_OPT], seconds)
    mine, ratios, mid = compare(windows, OURS, KSERVE_OPT, seconds, opt, f"({versions}, optimised network)")
    measurements.append(
        report.Measurement(
            name="image serving vs KServe, both serving the optimised network (laundry ResNet-18, 224x224, CPU)",
            unit="req/s",
            baseline=opt["rps"],
            baseline_label=f"KServe {KSERVE_PIN}, the network folded + channels-last (ModelPlugin.for_inference), "
            f"{CONCURRENCY} clients, p50 {opt['p50_ms']:.0f} ms, p99 {opt['p99_ms']:.0f} ms, "
            f"{opt[cpu]:.1f} ms CPU per request, {opt['failed']:.0f} failed",
            figure=mine["rps"],
            figure_label=f"modelloop-server as shipped, {CONCURRENCY} clients, {mine['failed']:.0f} failed; "
            f"per-round ratio median {mid:.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f}",
            target="ratio >= 1.0 (the servers' own code; the issue's 1.5 target is against KServe as written above)",
            passed=mine["rps"] >= opt["rps"] and mine["failed"] == 0,
            details=details | {OURS: mine, KSERVE_OPT: opt, "roundRatios": ratios, "medianRoundRatio": mid},
        )
    )
    return measurements


def main() -> None:
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 2 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="window per server per round (default 10; 5 quick)")
    p.add_argument(
        "--no-build", action="store_true", help="exit with status 3 instead of building a missing KServe venv (tests)"
    )
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    started = time.monotonic()
    try:
        measurements = run(rounds, seconds, warmup=3.0, build=not args.no_build)
    except KServeUnavailable as e:
        print(f"bench_vs_kserve: no KServe baseline, nothing to compare against: {e}", file=sys.stderr)
        sys.exit(3 if args.no_build else 2)
    for m in measurements:
        report.emit(m)
    print(f"  ({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
