"""Training input pipeline: images/s streamed from MinIO vs the same files read from local disk.

The generated laundry dataset (PNG, 224x224 by default) is uploaded to a local MinIO; then the
trainer's own DataLoader (``IndexedDataset`` + ``EpochSampler``, the same worker count and
prefetch) reads every image once, decoded and augmented, from the bucket and from disk. Rounds
alternate which source goes first so drifting machine load hits both; the median is reported.
Target: streamed from MinIO >= 0.9 x local disk.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench import report
from bench.servers import local_minio
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import generate, upload
from modelloop_trainer.streaming import (
    EpochSampler,
    IndexedDataset,
    LocalSource,
    Source,
    StoreSource,
    loader,
    parse_index,
)

TARGET_RATIO = 0.9
PREFIX = "datasets/laundry"
BATCH = 32


def _images_per_second(data: IndexedDataset, workers: int) -> float:
    sampler = EpochSampler(BATCH)
    sampler.set(range(len(data)), 1)
    dl = loader(data, sampler, workers)
    start = time.perf_counter()
    seen = sum(len(yb) for _, yb in dl)
    elapsed = time.perf_counter() - start
    if seen != len(data):
        raise AssertionError(f"the loader yielded {seen} images, expected {len(data)}")
    return seen / elapsed


def run(n: int, size: int, workers: int, rounds: int) -> report.Measurement:
    plugin = LaundryPlugin(image_size=size)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp_s:
        tmp = Path(tmp_s)
        generate(tmp / "data", n, seed=1, size=size)
        samples = parse_index((tmp / "data" / "train.jsonl").read_bytes(), plugin.class_names, "train.jsonl")
        with local_minio(tmp / "minio", "bench") as store:
            upload(store, tmp / "data", PREFIX)
            sources: dict[str, Source] = {
                "local": LocalSource(tmp / "data"),
                "minio": StoreSource(store.config, PREFIX),
            }
            rates: dict[str, list[float]] = {"local": [], "minio": []}
            for i in range(rounds):
                order = ["local", "minio"] if i % 2 == 0 else ["minio", "local"]
                for name in order:
                    data = IndexedDataset(plugin, samples, sources[name], augment=True, seed=1)
                    rates[name].append(_images_per_second(data, workers))
                print(
                    f"round {i + 1}/{rounds}: minio {rates['minio'][-1]:.0f} img/s, local {rates['local'][-1]:.0f} img/s",
                    flush=True,
                )
    local, minio = statistics.median(rates["local"]), statistics.median(rates["minio"])
    return report.Measurement(
        name=f"training input pipeline ({len(samples)} PNG {size}x{size}, {workers} workers)",
        unit="images/s",
        baseline=local,
        figure=minio,
        baseline_label="same DataLoader over local disk",
        figure_label="streamed from MinIO (StoreSource)",
        target=f"ratio >= {TARGET_RATIO}",
        passed=minio / local >= TARGET_RATIO,
        details={"rounds": rounds, "local": rates["local"], "minio": rates["minio"]},
    )


def main() -> None:
    p = report.parser(__doc__ or "")
    p.add_argument("--n", type=int, default=None, help="images generated (default 1000; 200 with --quick)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--rounds", type=int, default=4, help="rounds, alternating who goes first")
    args = p.parse_args()
    n = args.n or (200 if args.quick else 1000)
    report.emit(run(n, args.size, args.workers, args.rounds))


if __name__ == "__main__":
    main()
