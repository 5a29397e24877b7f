"""A closed-loop load generator for one serving endpoint, run as its own process.

Used by the hot-swap tests and benchmarks: ``concurrency`` asyncio clients send
``POST /v1/predict`` back to back until SIGTERM/SIGINT (or ``--duration``), then every response is
written as one JSON line: start and end on ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every
process on the machine, so the caller can line responses up with its own swap timestamps),
status, answering version (header and body, which must agree) and the error for failures.
Running in its own process keeps the clients from competing with the caller for the GIL.
Needs ``httpx`` (the ``dev`` extra); the serving image does not ship it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _body(x: list[float], protocol: str) -> bytes:
    """modelloop's body, or KServe's v1 protocol for the comparison benchmark."""
    return json.dumps({"instances": [x]} if protocol == "kserve-v1" else {"input": x}).encode()


@functools.cache
def _tls() -> Any:
    """One TLS context shared by every client: each httpx client otherwise loads the CA bundle itself
    (~0.2 s of CPU on a busy machine), and 32 of them ate the first seconds of a measured window."""
    import httpx

    return httpx.create_ssl_context()


async def _client(
    base: str,
    path: str,
    protocol: str,
    inputs: list[list[float]],
    stop: asyncio.Event,
    out: list[dict[str, Any]],
    seed: int,
    timeout: float,
) -> None:
    import httpx

    rnd = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, verify=_tls()) as http:
        while not stop.is_set():
            body = _body(inputs[rnd.randrange(len(inputs))], protocol)
            t0 = time.monotonic()
            rec: dict[str, Any] = {"t0": t0}
            try:
                r = await http.post(path, content=body, headers={"Content-Type": "application/json"})
                rec["status"] = r.status_code
                rec["version"] = r.headers.get("x-model-version")
                if r.status_code == 200 and protocol == "modelloop":
                    rec["bodyVersion"] = r.json().get("version")
                else:
                    rec["error"] = r.text[:300]
            except httpx.HTTPError as e:
                rec["status"] = 0
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["t1"] = time.monotonic()
            out.append(rec)


async def run(
    base: str,
    concurrency: int,
    duration: float | None,
    log_path: Path,
    timeout: float,
    path: str = "/v1/predict",
    protocol: str = "modelloop",
) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rnd = random.Random(1)
    inputs = [[float(rnd.randint(0, 16)) for _ in range(64)] for _ in range(64)]
    out: list[dict[str, Any]] = []
    started = time.monotonic()
    tasks = [
        asyncio.create_task(_client(base, path, protocol, inputs, stop, out, i, timeout)) for i in range(concurrency)
    ]
    print(json.dumps({"started": started, "concurrency": concurrency}), flush=True)
    if duration is not None:
        try:
            await asyncio.wait_for(stop.wait(), duration)
        except TimeoutError:
            stop.set()
    else:
        await stop.wait()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    with log_path.open("w") as f:
        for rec in out:
            f.write(json.dumps(rec) + "\n")
    ok = sum(1 for r in out if r["status"] == 200)
    return {"requests": len(out), "ok": ok, "failed": len(out) - ok, "seconds": elapsed, "rps": len(out) / elapsed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=None, help="seconds; default: until SIGTERM")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--log", type=Path, required=True, help="where to write one JSON line per response")
    p.add_argument("--path", default="/v1/predict", help="request path (KServe: /v1/models/<name>:predict)")
    p.add_argument("--protocol", choices=("modelloop", "kserve-v1"), default="modelloop")
    args = p.parse_args(argv)
    summary = asyncio.run(
        run(args.url.rstrip("/"), args.concurrency, args.duration, args.log, args.timeout, args.path, args.protocol)
    )
    print(json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
