"""Reviews/s with write-through durability (the default) vs the fsynced spool, same MinIO, same run.

Two modelloop-server processes serve digits v1 against one MinIO of the bench's own: one answers a
review once its batch is in the bucket (``MODELLOOP_FEEDBACK_DURABILITY=write-through``: concurrent
reviews share one PUT, group commit), the other once it is fsynced to its spool
(``MODELLOOP_FEEDBACK_DURABILITY=spool``, batches uploaded in the background). Each round posts the
same number of reviews to each, ``CONCURRENCY`` at a time over keep-alive connections, rotating which
goes first; every review names a prediction the server answered just before (untimed), so the timed
part is the review path alone: receipt join, then the durable write. Reported: reviews/s of each, and
how many reviews one write-through PUT carried on average.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import report
from bench.bench_serving_throughput import _start
from modelloop.api import constants as c
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, locate_tools
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

MODEL = "digits"
BUCKET = "bench-feedback"
REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 32
WRITE_THROUGH, SPOOL = "write-through", "spool"
TARGET_RATIO = 0.5  # write-through may cost throughput (a PUT per group, not per 100 reviews); at most half


@dataclass
class Server:
    mode: str
    process: ManagedProcess
    url: str

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start(tmp: Path, minio: MinioServer, mode: str) -> Server:
    model_dir = tmp / mode / "models"
    digest = write_local_version(DigitsPlugin(), c.DEFAULT_PLUGIN, model_dir, MODEL, "v1", 1)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}

    def make(port: int) -> ManagedProcess:
        env = {
            **base,
            **minio.env(BUCKET),
            c.ENV_MODEL: MODEL,
            "MODELLOOP_MODEL_DIR": str(model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
            "MODELLOOP_PORT": str(port),
            "MODELLOOP_REVIEW_AUTH": "off",  # the token check is the same in both modes; measured elsewhere
            "MODELLOOP_REVIEW_RATE_PER_MINUTE": "100000000",
            "MODELLOOP_REVIEW_BURST": "1000000",
            "MODELLOOP_FEEDBACK_DURABILITY": mode,
        }
        argv = [Path(sys.executable).parent / "modelloop-server"]
        return ManagedProcess(f"server-{mode}", argv, tmp / f"server-{mode}.log", env=env)

    def ready(port: int) -> bool:
        return bool(httpx.get(f"http://127.0.0.1:{port}/readyz").json().get("digest") == digest)

    process, port = _start(make, ready, f"modelloop-server ({mode}) ready")
    return Server(mode, process, f"http://127.0.0.1:{port}")


async def _predictions(client: httpx.AsyncClient, n: int, offset: int) -> list[dict[str, object]]:
    """``n`` reviews, each of a prediction just answered: confirmations and corrections alternating."""
    reviews: list[dict[str, object]] = []
    step = 64
    for start in range(0, n, step):
        inputs = [[float(((offset + start + i) * 7 + k) % 17) for k in range(64)] for i in range(min(step, n - start))]
        answer = (await client.post("/v1/predict", json={"inputs": inputs})).json()
        for i, p in enumerate(answer["predictions"]):
            reviews.append({"id": p["id"], "label": p["predicted"] if i % 2 else (p["predicted"] + 1) % 10})
    return reviews


async def _post(server: Server, n: int, offset: int) -> float:
    """Reviews/s over ``n`` reviews posted ``CONCURRENCY`` at a time; every one must be acknowledged."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        reviews = await _predictions(client, n, offset)
        queue = list(reversed(reviews))
        refused: list[str] = []

        async def worker() -> None:
            while queue:
                r = await client.post("/v1/feedback", json=queue.pop())
                if r.status_code != 202:
                    refused.append(f"{r.status_code} {r.text[:200]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    if refused:
        raise AssertionError(f"{server.mode}: {len(refused)} reviews not acknowledged, e.g. {refused[0]}")
    return n / elapsed


def run(rounds: int, reviews: int) -> list[report.Measurement]:
    rates: dict[str, list[float]] = {WRITE_THROUGH: [], SPOOL: []}
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as d:
        tmp = Path(d)
        with MinioServer(locate_tools(REPO), tmp / "minio") as minio:
            minio.store(BUCKET)
            servers = [start(tmp, minio, WRITE_THROUGH), start(tmp, minio, SPOOL)]
            try:
                for s in servers:
                    asyncio.run(_post(s, CONCURRENCY * 4, 0))  # warm-up: connections, receipts, the first PUTs
                for r in range(rounds):
                    for s in servers[r % 2 :] + servers[: r % 2]:
                        rate = asyncio.run(_post(s, reviews, (r + 1) * reviews))
                        rates[s.mode].append(rate)
                        print(f"  round {r + 1}/{rounds} {s.mode:>13}: {rate:7.1f} reviews/s", flush=True)
                wt = servers[0]
                puts = wt.metric("modelloop_server_feedback_commit_records_count")
                per_put = wt.metric("modelloop_server_feedback_commit_records_sum") / puts if puts else 0.0
            finally:
                for s in servers:
                    s.process.stop(timeout=30)
    through, spooled = statistics.median(rates[WRITE_THROUGH]), statistics.median(rates[SPOOL])
    print(f"  write-through: {per_put:.1f} reviews per PUT on average ({puts:.0f} PUTs)")
    return [
        report.Measurement(
            name=f"reviews/s, write-through vs spool ({CONCURRENCY} concurrent reviewers, digits, CPU)",
            unit="reviews/s",
            baseline=spooled,
            baseline_label="spool: answered once fsynced to the Pod's volume (lost with the Pod during an outage)",
            figure=through,
            figure_label=f"write-through: answered once in the bucket, group commit ({per_put:.1f} reviews per PUT)",
            target=f"ratio >= {TARGET_RATIO}",
            passed=through >= TARGET_RATIO * spooled,
            details={"rounds": rates, "reviews_per_round": reviews, "reviews_per_put": per_put, "puts": puts},
        )
    ]


def main() -> None:
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 4; 2 with --quick)")
    p.add_argument("--reviews", type=int, default=None, help="reviews per mode per round (default 2000; 500 quick)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    reviews = args.reviews or (500 if args.quick else 2000)
    started = time.monotonic()
    for m in run(rounds, reviews):
        report.emit(m)
    print(f"  ({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
