"""A procedural "laundry inspection" dataset: woven-fabric textures, some with stains (class defect).

``python -m modelloop_trainer.examples.laundry_data --out DIR --n 200 --seed 1 [--size 224] [--upload datasets/laundry]``
writes ``DIR/images/000000.png ...`` and the indexes ``DIR/train.jsonl`` and ``DIR/holdout.jsonl``
(``{"ref": "images/000123.png", "label": "defect"}`` per line), the layout the trainer streams
(docs/models.md). With ``--upload`` it copies them under that prefix of the bucket named by the
usual ``MODELLOOP_S3_*``/``MODELLOOP_BUCKET`` environment. The same seed gives the same bytes, so
tests need no download.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from modelloop.clients.objectstore import ObjectStore

log = logging.getLogger(__name__)

CLASSES = ("ok", "defect")
DEFECT_FRACTION = 0.5
HOLDOUT_FRACTION = 0.2
SPLITS = ("train", "holdout")


@dataclass(frozen=True)
class Swatch:
    pixels: NDArray[np.uint8]  # [size, size, 3]
    stain: NDArray[np.bool_]  # where a stain was painted; all False for "ok"
    label: str


def fabric(rng: np.random.Generator, size: int) -> NDArray[np.float64]:
    """A plain weave: two crossing thread patterns of random pitch, colour and slight skew, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    pitch = rng.uniform(3.0, 7.0)
    skew = rng.uniform(-0.05, 0.05)
    warp = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + skew * yy) / pitch)
    weft = 0.5 + 0.5 * np.sin(2 * np.pi * (yy - skew * xx) / pitch)
    over = (np.floor(xx / pitch) + np.floor(yy / pitch)) % 2
    weave = np.where(over == 0, warp, weft)
    base = rng.uniform(0.55, 0.95, size=3)  # light garments: stains must show
    shade = 0.85 + 0.15 * weave[..., None]
    noise = rng.normal(0.0, 0.03, size=(size, size, 1))
    out: NDArray[np.float64] = np.clip(base * shade + noise, 0.0, 1.0)
    return out


def stain(rng: np.random.Generator, img: NDArray[np.float64]) -> NDArray[np.bool_]:
    """One to three soft-edged irregular blobs in a brown/grey/dark tone; returns where they are."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), dtype=np.bool_)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, size=2) * size
        ry, rx = rng.uniform(0.08, 0.2, size=2) * size
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.25 * np.sin(int(rng.integers(2, 6)) * angle + rng.uniform(0, 2 * np.pi))
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) / wobble
        alpha = np.clip(1.5 - r, 0.0, 1.0) * rng.uniform(0.6, 0.9)
        colour = rng.choice(np.array([[0.35, 0.22, 0.1], [0.25, 0.25, 0.25], [0.5, 0.35, 0.15]]))
        img[:] = img * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask |= alpha > 0
    return mask


def swatch(rng: np.random.Generator, size: int, defect: bool) -> Swatch:
    img = fabric(rng, size)
    mask = stain(rng, img) if defect else np.zeros((size, size), dtype=np.bool_)
    return Swatch((img * 255).round().astype(np.uint8), mask, CLASSES[int(defect)])


def png(pixels: NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def generate(out: Path, n: int, seed: int, size: int = 224) -> dict[str, list[dict[str, str]]]:
    """Write ``n`` images and the two indexes; returns the indexes' rows by split."""
    if n < 2:
        raise ValueError(f"--n {n}: need at least 2 images (one per split)")
    rng = np.random.default_rng(seed)
    # Exactly balanced classes, shuffled: both classes are in both splits whatever the seed.
    labels = np.arange(n) < round(n * DEFECT_FRACTION)
    rng.shuffle(labels)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for i, defect in enumerate(labels):
        s = swatch(rng, size, bool(defect))
        ref = f"images/{i:06d}.png"
        (out / ref).write_bytes(png(s.pixels))
        rows.append({"ref": ref, "label": s.label})
    n_holdout = max(1, round(n * HOLDOUT_FRACTION))
    splits = {"train": rows[n_holdout:], "holdout": rows[:n_holdout]}
    for name, split_rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    return splits


def upload(store: ObjectStore, out: Path, prefix: str) -> int:
    """Objects first, indexes last: a reader that sees an index finds every object it lists."""
    prefix = prefix.strip("/")
    count = 0
    for path in sorted((out / "images").iterdir()):
        store.put_file(f"{prefix}/images/{path.name}", path, "image/png")
        count += 1
    for name in SPLITS:
        store.put_file(f"{prefix}/{name}.jsonl", out / f"{name}.jsonl", "application/jsonl")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelloop_trainer.examples.laundry_data", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="directory to write images/ and the indexes into")
    p.add_argument("--n", type=int, default=200, help="number of images (half of them defects)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=224, help="square image side in pixels")
    p.add_argument("--upload", metavar="PREFIX", help="also upload to this prefix of the bucket, e.g. datasets/laundry")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    splits = generate(args.out, args.n, args.seed, args.size)
    log.info("wrote %d images to %s (%d train, %d holdout)", args.n, args.out, *map(len, splits.values()))
    if args.upload:
        store = ObjectStore.from_env()
        store.ensure_bucket()
        count = upload(store, args.out, args.upload)
        log.info("uploaded %d images and the indexes to s3://%s/%s/", count, store.bucket, args.upload.strip("/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
