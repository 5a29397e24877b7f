"""Artifact path: what SHA-256 checking and atomic placement cost on a large model.

Uploads through ``publish_version`` (hash + streamed multipart put + manifest) against a plain
minio ``fput_object`` of the same file, and downloads through ``fetch_version`` (streamed get,
hash, manifest check, rename into place) against a plain ``fget_object``, all against one local
MinIO in one run. Runs alternate ours/plain so drift in machine load hits both equally; the
median of the runs is reported. Target: our throughput >= 0.8 x the plain client's.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench import report
from bench.servers import local_minio
from modelloop.api.artifacts import Manifest
from modelloop.clients.artifactstore import fetch_version, publish_version

TARGET_RATIO = 0.8
MODEL = "bench-artifact"


def _write_random_file(path: Path, size_mb: int) -> None:
    """Random bytes: compressible data would flatter any layer that compresses."""
    block = 4 << 20
    remaining = size_mb << 20
    with path.open("wb") as f:
        while remaining:
            n = min(block, remaining)
            f.write(os.urandom(n))
            remaining -= n


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(size_mb: int, rounds: int) -> list[report.Measurement]:
    with tempfile.TemporaryDirectory(prefix="bench-artifact-") as tmp_s:
        tmp = Path(tmp_s)
        src_dir = tmp / "src"
        src_dir.mkdir()
        weights = src_dir / "model.safetensors"
        _write_random_file(weights, size_mb)
        with local_minio(tmp / "minio", "bench") as store:
            plain = store.client
            up_plain: list[float] = []
            up_ours: list[float] = []
            down_plain: list[float] = []
            down_ours: list[float] = []
            for i in range(rounds):
                version = f"v{i + 1}"
                manifest = Manifest(model=MODEL, version=version, created_at=datetime.now(UTC), files=[])
                plain_key = f"plain/{version}/model.safetensors"
                dest_plain = tmp / "down-plain" / "model.safetensors"
                dest_ours = tmp / "down-ours" / version
                steps: list[tuple[list[float], Callable[[], object]]] = [
                    (up_plain, partial(plain.fput_object, "bench", plain_key, str(weights), part_size=64 << 20)),
                    (up_ours, partial(publish_version, store, manifest, src_dir)),
                    (down_plain, partial(plain.fget_object, "bench", plain_key, str(dest_plain))),
                    (down_ours, partial(fetch_version, store, MODEL, version, dest_ours)),
                ]
                # Whoever goes second pays for the first one's dirty pages being written back:
                # alternate the order so that cost falls on both sides equally.
                if i % 2:
                    steps = [steps[1], steps[0], steps[3], steps[2]]
                for samples, step in steps:
                    samples.append(_timed(step))
                print(
                    f"round {i + 1}/{rounds}: upload {up_ours[-1]:.2f} s ours / {up_plain[-1]:.2f} s plain, "
                    f"download {down_ours[-1]:.2f} s ours / {down_plain[-1]:.2f} s plain",
                    flush=True,
                )
                if dest_plain.stat().st_size != weights.stat().st_size:
                    raise AssertionError("plain download has the wrong size; the comparison would be meaningless")
                if (dest_ours / "model.safetensors").stat().st_size != weights.stat().st_size:
                    raise AssertionError("fetch_version placed a file of the wrong size")
                shutil.rmtree(tmp / "down-plain")
                shutil.rmtree(tmp / "down-ours")
                store.remove_prefix(f"plain/{version}/")
                store.remove_prefix(f"{MODEL}/{version}/")

    def mbps(seconds: list[float]) -> float:
        return size_mb / statistics.median(seconds)

    results = []
    for name, ours, base, ours_label, base_label in (
        (
            "artifact upload",
            up_ours,
            up_plain,
            "publish_version: SHA-256 + put + manifest",
            "minio fput_object, no hashing",
        ),
        (
            "artifact download",
            down_ours,
            down_plain,
            "fetch_version: get + SHA-256 check + rename",
            "minio fget_object, no hashing",
        ),
    ):
        figure, baseline = mbps(ours), mbps(base)
        results.append(
            report.Measurement(
                name=f"{name} ({size_mb} MB)",
                unit="MB/s",
                baseline=baseline,
                figure=figure,
                baseline_label=base_label,
                figure_label=ours_label,
                target=f"ratio >= {TARGET_RATIO}",
                passed=figure / baseline >= TARGET_RATIO,
                details={"rounds": rounds, "seconds_ours": ours, "seconds_plain": base},
            )
        )
    return results


def main() -> None:
    p = report.parser(__doc__ or "")
    p.add_argument("--size-mb", type=int, default=None, help="artifact size in MB (default 1024; 64 with --quick)")
    p.add_argument("--rounds", type=int, default=4, help="rounds, alternating who goes first; the median is reported")
    args = p.parse_args()
    size_mb = args.size_mb or (64 if args.quick else 1024)
    if size_mb < 1 or args.rounds < 1:
        p.error("--size-mb and --rounds must be at least 1")
    for m in run(size_mb, args.rounds):
        report.emit(m)


if __name__ == "__main__":
    main()
