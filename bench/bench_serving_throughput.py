"""Serving throughput: modelloop-server against the KServe Python model server, same model, same load.

Both serve the digits network with the same weights and the same torch build on this machine, one
process each, up at the same time. modelloop-server runs twice: as shipped (opportunistic batching:
requests that queue while a forward pass runs share the next one) and with batching off
(``MODELLOOP_INFERENCE_BATCH_ROWS=1``), so the gain from batching is shown apart from the rest. The
same closed-loop load (32 keep-alive connections, one example per request, the same 64 seeded
inputs) drives one server at a time for the same window, rotating which goes first in each round so
drift in the machine's load falls on all three; a short warm-up window per server comes first and
is not counted. KServe is called with its V1 protocol
(``POST /v1/models/digits:predict``, ``{"instances": [...]}``) and is set up as a strong baseline
(see bench/kserve_digits.py). Reported: req/s over all rounds, the median and range of the
per-round ratio, p99 latency, and CPU per request of each server and of the load probe (which must
stay far below the servers', or the probe's speed is what gets measured).

KServe is not a dependency of modelloop: the bench builds a virtualenv of its own with a pinned
``kserve`` under ``~/.cache/modelloop/bench-venvs/`` (once, ~450 MB, a minute or two; torch is not
installed twice: a ``.pth`` file lets that venv import torch and modelloop from this one). If that
install fails the bench prints pip's error and exits with status 2: there is no baseline to compare
against.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench import report
from modelloop.api import constants as c
from modelloop_dev.processes import ManagedProcess, ProcessFailed, free_port, wait_for
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

KSERVE_PIN = "0.21.0"  # newest on PyPI on 2026-11-23; supports Python 3.10-3.13
CONCURRENCY = 32
MODEL = "digits"
REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.0
AIM_RATIO = 1.5
BATCH_ROWS = 256  # the server's default MODELLOOP_INFERENCE_BATCH_ROWS
OURS, UNBATCHED, KSERVE = "modelloop", "unbatched", "kserve"


class KServeUnavailable(RuntimeError):
    """The KServe venv could not be built; the message carries pip's own error."""


def kserve_python(cache: Path | None = None, build: bool = True) -> Path:
    """The interpreter of a venv holding ``kserve==KSERVE_PIN``, built on first use and then reused.

    Same base interpreter as this venv, so the ``.pth`` into this venv's site-packages gives it
    the same torch and modelloop. The venv's own packages come first on sys.path, so KServe runs on
    the FastAPI/starlette/uvicorn/pydantic versions pip resolved for it, not on modelloop's pins;
    only numpy is held to this venv's version, as torch here was loaded against it. With
    ``build=False`` a missing venv is :class:`KServeUnavailable` instead (tests must not spend
    minutes installing it).
    """
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    root = (cache or Path.home() / ".cache" / "modelloop" / "bench-venvs") / f"kserve-{KSERVE_PIN}-{py}"
    python = root / "bin" / "python"
    done = root / ".installed"
    if not done.exists() and not build:
        raise KServeUnavailable(
            f"no KServe venv at {root}: it is built on demand by `make bench` or "
            "`python -m bench --only bench_serving_throughput` (a minute or two, ~450 MB)"
        )
    if not done.exists():
        print(f"building the KServe venv {root} (kserve=={KSERVE_PIN}; first run only, a minute or two)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, capture_output=True)
        constraints = root / "constraints.txt"
        constraints.write_text(f"numpy=={version('numpy')}\n", encoding="utf-8")
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
             f"kserve=={KSERVE_PIN}", "-c", str(constraints)],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        if pip.returncode != 0:
            tail = "\n".join((pip.stdout + pip.stderr).strip().splitlines()[-25:])
            raise KServeUnavailable(f"pip install kserve=={KSERVE_PIN} into {root} failed ({pip.returncode}):\n{tail}")
        done.write_text(f"kserve=={KSERVE_PIN}\n", encoding="utf-8")
    own = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (own / "zz-modelloop.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return python


@dataclass
class Server:
    name: str
    process: ManagedProcess
    port: int
    path: str
    protocol: str
    payloads: list[bytes] | None = None  # pre-encoded HTTP requests, for benches whose inputs are not digits

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (one process: both run a single worker)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    rps: float
    requests: int
    failed: int
    latencies: list[float]
    cpu_per_request: float
    probe_cpu_per_request: float
    errors: list[str]


def request_body(protocol: str, x: list[float]) -> tuple[bytes, str]:
    """(body, extra header lines) of one single-example request in ``protocol``."""
    if protocol == "kserve-v1":
        return json.dumps({"instances": [x]}).encode(), ""
    if protocol == "oip-json":
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, len(x)], "data": x}
        return json.dumps({"inputs": [tensor]}).encode(), ""
    if protocol == "oip-binary":
        raw = struct.pack(f"<{len(x)}f", *x)
        tensor = {
            "name": "input",
            "datatype": "FP32",
            "shape": [1, len(x)],
            "parameters": {"binary_data_size": len(raw)},
        }
        head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        return head + raw, f"Inference-Header-Content-Length: {len(head)}\r\n"
    return json.dumps({"input": x}).encode(), ""


def requests_for(server: Server) -> list[bytes]:
    """Pre-encoded HTTP/1.1 requests, one per example: the same 64 seeded digit images for both servers."""
    if server.payloads is not None:
        return server.payloads
    rnd = random.Random(1)
    out = []
    for _ in range(64):
        x = [float(rnd.randint(0, 16)) for _ in range(64)]
        body, extra = request_body(server.protocol, x)
        head = (f"POST {server.path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        out.append(head.encode() + body)
    return out


async def _client(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], reqs: list[bytes], seed: int, deadline: float
) -> list[tuple[float, float, int, str | None]]:
    """One keep-alive connection sending requests back to back; (t0, t1, status, error) per response."""
    rnd = random.Random(seed)
    reader, writer = conn
    out: list[tuple[float, float, int, str | None]] = []
    try:
        while (t0 := time.monotonic()) < deadline:
            writer.write(reqs[rnd.randrange(len(reqs))])
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [
                line.split(b":", 1)[1] for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"
            ]
            if not lengths:
                raise AssertionError(f"response without Content-Length: {head[:300]!r}")
            body = await reader.readexactly(int(lengths[0]))
            status = int(head[9:12])
            ok = status == 200 and b'"predicted"' in body
            out.append(
                (t0, time.monotonic(), status, None if ok else f"{status} {body[:300].decode(errors='replace')}")
            )
    finally:
        writer.close()
    return out


async def _probe(server: Server, seconds: float) -> tuple[list[tuple[float, float, int, str | None]], float]:
    """Closed loop over CONCURRENCY connections, all opened before the window starts; every response
    (the requests in flight at the deadline are awaited) and the deadline."""
    reqs = requests_for(server)
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", server.port) for _ in range(CONCURRENCY)))
    deadline = time.monotonic() + seconds
    results = await asyncio.gather(*(_client(conn, reqs, i, deadline) for i, conn in enumerate(conns)))
    return [r for rs in results for r in rs], deadline


def drive(server: Server, seconds: float) -> Window:
    """Load ``server`` for ``seconds``. The probe is a bare asyncio HTTP/1.1 client (pre-encoded requests,
    no HTTP library): it must cost far less CPU per request than either server, or on a small machine it
    is the probe's speed that gets measured."""
    cpu0, probe0 = server.cpu_seconds(), time.process_time()
    answered, deadline = asyncio.run(_probe(server, seconds))
    cpu, probe_cpu = server.cpu_seconds() - cpu0, time.process_time() - probe0
    records = [r for r in answered if r[1] <= deadline]
    latencies = [t1 - t0 for t0, t1, _, error in records if error is None]
    errors = [e for *_, e in records if e is not None]
    if not latencies:
        raise AssertionError(f"{server.name}: not one request answered 200 in {seconds} s; errors: {set(errors)}")
    n = len(records)
    # CPU covers the requests still in flight at the deadline too (they are awaited): divide by all of
    # them, or a slow model's tail (up to CONCURRENCY requests) is charged to the window's few.
    return Window(n / seconds, n, len(errors), latencies, cpu / len(answered), probe_cpu / len(answered), errors[:3])


def _start(
    make: Callable[[int], ManagedProcess], ready: Callable[[int], bool], what: str
) -> tuple[ManagedProcess, int]:
    """Start a server on a free port; again on another port if someone else took that one meanwhile
    (other test runs share this machine: a ready answer could come from their server)."""
    for attempt in range(3):
        port = free_port()
        process = make(port).start()
        try:
            wait_for(lambda: ready(port), 180, what, process)  # noqa: B023 - called before the next iteration
        except ProcessFailed:
            if attempt == 2 or "address already in use" not in process.log_tail():
                raise
            continue
        if process.alive():
            return process, port
        process.stop()
    raise AssertionError(f"{what}: no free port to start on after 3 attempts")


def clean_env() -> dict[str, str]:
    """This process's environment without modelloop or AWS settings, for the servers the benches start."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}


def modelloop_server(
    tmp: Path, model_dir: Path, batch_rows: int, plugin: str = c.DEFAULT_PLUGIN, model: str = MODEL
) -> Callable[[int], ManagedProcess]:
    """A factory (port -> process) for ``modelloop-server`` serving ``model_dir`` with ``batch_rows``."""

    def make(port: int) -> ManagedProcess:
        settings = {
            c.ENV_MODEL: model,
            c.ENV_PLUGIN: plugin,
            "MODELLOOP_MODEL_DIR": str(model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
            "MODELLOOP_PORT": str(port),
            "MODELLOOP_INFERENCE_BATCH_ROWS": str(batch_rows),
        }
        argv = [Path(sys.executable).parent / "modelloop-server"]
        return ManagedProcess("modelloop-server", argv, tmp / f"ours-{batch_rows}.log", env=clean_env() | settings)

    return make


def kserve_server(
    tmp: Path, kpy: Path, module: str, weights: Path, model: str = MODEL, extra: Sequence[str] = (), log: str = "kserve"
) -> Callable[[int], ManagedProcess]:
    """A factory (port -> process) for the KServe model server in ``module`` (run by the KServe venv)."""

    def make(port: int) -> ManagedProcess:
        argv: list[str | Path] = [kpy, "-m", module, "--port", str(port), "--model-name", model, "--weights", weights]
        return ManagedProcess(log, [*argv, *extra], tmp / f"{log}.log", env=clean_env(), cwd=REPO)

    return make


def serving_digest(digest: str) -> Callable[[int], bool]:
    """Whether the modelloop-server on a port is ready with the version of ``digest``."""
    return lambda port: bool(httpx.get(f"http://127.0.0.1:{port}/readyz").json().get("digest") == digest)


def start_servers(tmp: Path, kpy: Path) -> list[Server]:
    model_dir = tmp / "models"
    digest = write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v1", 1)
    weights = model_dir / "v1" / "model.safetensors"
    ours = partial(modelloop_server, tmp, model_dir)
    theirs = kserve_server(tmp, kpy, "bench.kserve_digits", weights)
    ours_ready = serving_digest(digest)

    def theirs_ready(port: int) -> bool:
        return bool(httpx.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True})

    mine, port = _start(ours(BATCH_ROWS), ours_ready, "modelloop-server ready")
    alone, aport = _start(ours(1), ours_ready, "modelloop-server (no batching) ready")
    base, kport = _start(theirs, theirs_ready, "KServe ready")
    return [
        Server(OURS, mine, port, "/v1/predict", "modelloop"),
        Server(UNBATCHED, alone, aport, "/v1/predict", "modelloop"),
        Server(KSERVE, base, kport, f"/v1/models/{MODEL}:predict", "kserve-v1"),
    ]


def _total(ws: list[Window], seconds: float) -> dict[str, float]:
    latencies = [x for w in ws for x in w.latencies]
    return {
        "rps": sum(w.requests for w in ws) / (seconds * len(ws)),
        "requests": sum(w.requests for w in ws),
        "failed": sum(w.failed for w in ws),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": report.percentile(latencies, 99) * 1e3,
        "server_cpu_ms_per_request": statistics.median(w.cpu_per_request for w in ws) * 1e3,
        "probe_cpu_ms_per_request": statistics.median(w.probe_cpu_per_request for w in ws) * 1e3,
    }


def drive_rounds(servers: list[Server], rounds: int, seconds: float, warmup: float) -> dict[str, list[Window]]:
    """Warm every server up, then drive each for ``seconds`` per round, rotating which goes first."""
    windows: dict[str, list[Window]] = {s.name: [] for s in servers}
    for s in servers:
        drive(s, warmup)
    for r in range(rounds):
        for s in servers[r % len(servers) :] + servers[: r % len(servers)]:
            w = drive(s, seconds)
            windows[s.name].append(w)
            print(
                f"  round {r + 1}/{rounds} {s.name:>10}: {w.rps:7.1f} req/s, "
                f"p99 {report.percentile(w.latencies, 99) * 1e3:6.1f} ms, CPU per request: server "
                f"{w.cpu_per_request * 1e3:.2f} ms, probe {w.probe_cpu_per_request * 1e3:.2f} ms; "
                f"{w.failed} failed {w.errors}",
                flush=True,
            )
    return windows


def compare(
    windows: dict[str, list[Window]], name: str, base_name: str, seconds: float, base: dict[str, float], note: str = ""
) -> tuple[dict[str, float], list[float], float]:
    """``name``'s totals against ``base_name``'s, the per-round throughput ratios and their median, printed."""
    mine = _total(windows[name], seconds)
    ratios = [m.rps / k.rps for m, k in zip(windows[name], windows[base_name], strict=True)]
    mid = statistics.median(ratios)
    print(
        f"  {name} / {base_name} req/s per round: median {mid:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
        f"p99 {mine['p99_ms']:.1f} vs {base['p99_ms']:.1f} ms; server CPU per request "
        f"{mine['server_cpu_ms_per_request']:.2f} vs {base['server_cpu_ms_per_request']:.2f} ms {note}".rstrip(),
        flush=True,
    )
    return mine, ratios, mid


def run(rounds: int, seconds: float, warmup: float) -> list[report.Measurement]:
    kpy = kserve_python()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_s:
        tmp = Path(tmp_s)
        servers = start_servers(tmp, kpy)
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
        "loadAverage": os.getloadavg()[0],
    }
    measurements = []
    for name, label in ((OURS, f"opportunistic batching up to {BATCH_ROWS} rows"), (UNBATCHED, "batching off")):
        mine, ratios, mid = compare(windows, name, KSERVE, seconds, base, f"({versions})")
        measurements.append(
            report.Measurement(
                name=f"serving throughput vs KServe (digits, CPU, {label})",
                unit="req/s",
                baseline=base["rps"],
                baseline_label=f"KServe {KSERVE_PIN} Python model server, {CONCURRENCY} clients, "
                f"p99 {base['p99_ms']:.0f} ms, {base['failed']:.0f} failed",
                figure=mine["rps"],
                figure_label=f"modelloop-server, {label}, {CONCURRENCY} clients, p99 {mine['p99_ms']:.0f} ms, "
                f"{mine['failed']:.0f} failed; per-round ratio median {mid:.2f}, range {min(ratios):.2f}-{max(ratios):.2f}",
                target=f"ratio >= {TARGET_RATIO}" + (f" (aim {AIM_RATIO})" if name == OURS else ""),
                passed=mine["rps"] >= TARGET_RATIO * base["rps"] and mine["failed"] == 0,
                details=details | {"modelloop": mine, "roundRatios": ratios, "medianRoundRatio": mid},
            )
        )
    return measurements


def main() -> None:
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4; 2 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="window per server per round (default 10; 5 quick)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    started = time.monotonic()
    try:
        measurements = run(rounds, seconds, warmup=3.0)
    except KServeUnavailable as e:
        print(f"bench_serving_throughput: no KServe baseline, nothing to compare against: {e}", file=sys.stderr)
        sys.exit(2)
    for m in measurements:
        report.emit(m)
    print(f"  ({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
