"""The procedural laundry dataset: deterministic, balanced, and stains exactly where the label says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from modelloop_trainer.examples.laundry_data import generate, swatch


def _index(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 12, seed=3, size=48)
    generate(b, 12, seed=3, size=48)
    generate(c, 12, seed=4, size=48)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 12 + 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "images/000000.png").read_bytes() != (c / "images/000000.png").read_bytes()


def test_index_lists_every_image_once_with_both_classes_in_both_splits(tmp_path: Path) -> None:
    splits = generate(tmp_path, 20, seed=1, size=40)
    train, holdout = _index(tmp_path / "train.jsonl"), _index(tmp_path / "holdout.jsonl")
    assert (train, holdout) == (splits["train"], splits["holdout"])
    assert (len(train), len(holdout)) == (16, 4)
    refs = [r["ref"] for r in train + holdout]
    assert sorted(refs) == sorted(f"images/{p.name}" for p in (tmp_path / "images").iterdir())
    assert [r["label"] for r in train + holdout].count("defect") == 10
    for rows in (train, holdout):
        assert {r["label"] for r in rows} == {"ok", "defect"}
    with Image.open(tmp_path / refs[0]) as img:
        assert (img.mode, img.size) == ("RGB", (40, 40))


def test_stains_only_on_defects_and_they_darken_the_fabric() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        ok = swatch(rng, 64, defect=False)
        assert ok.label == "ok" and not ok.stain.any()
        bad = swatch(rng, 64, defect=True)
        assert bad.label == "defect" and bad.stain.mean() > 0.02
        stained = bad.pixels[bad.stain].astype(float).mean()
        clean = bad.pixels[~bad.stain].astype(float).mean()
        assert stained < clean - 10, (stained, clean)
