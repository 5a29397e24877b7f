"""Streaming datasets: an index read lazily by DataLoader workers, every sample once per epoch."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from modelloop.clients.objectstore import StoreConfig
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import generate
from modelloop_trainer.plugin import DatasetError, Split
from modelloop_trainer.streaming import (
    EpochSampler,
    IndexedDataset,
    LocalSource,
    Sample,
    StoreSource,
    loader,
    parse_index,
)

SIZE = 32
CLASSES = ("ok", "defect")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("laundry")
    generate(root, 24, seed=5, size=SIZE)
    return root


def _dataset(root: Path, augment: bool = False) -> IndexedDataset:
    samples = parse_index((root / "train.jsonl").read_bytes(), CLASSES, "train.jsonl")
    return IndexedDataset(LaundryPlugin(image_size=SIZE), samples, LocalSource(root), augment=augment, seed=1)


def test_two_workers_yield_every_sample_once_per_epoch(local: Path) -> None:
    data = _dataset(local, augment=True)
    sampler = EpochSampler(batch_size=5)
    dl = loader(data, sampler, workers=2)
    first: list[torch.Tensor] = []
    for epoch in (1, 2):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
        sampler.set(order, epoch)
        seen_labels, images = [], []
        for xb, yb in dl:
            assert xb.shape[1:] == (3, SIZE, SIZE) and xb.dtype == torch.float32
            assert float(xb.min()) >= 0 and float(xb.max()) <= 1
            seen_labels.append(yb)
            images.append(xb)
        x = torch.cat(images)
        assert len(x) == len(data) == 19
        assert torch.equal(torch.cat(seen_labels), data.labels()[order])
        # Augmentation is a function of (seed, epoch, index): the same sample differs between epochs.
        by_index = x[torch.argsort(torch.tensor(order))]
        first.append(by_index)
    assert not torch.equal(first[0], first[1])
    again = torch.stack([data[(i, 1)][0] for i in range(len(data))])
    assert torch.equal(again, first[0]), "a worker's augmentation must match the main process's"


def test_the_dataset_workers_receive_holds_references_not_images(local: Path) -> None:
    data = _dataset(local)
    image_bytes = sum(p.stat().st_size for p in (local / "images").iterdir())
    pickled = len(pickle.dumps(data))
    assert pickled < 4096 < image_bytes, (pickled, image_bytes)
    store = StoreSource(StoreConfig("127.0.0.1:1", "k", "s", "bucket"), "datasets/laundry")
    assert pickle.loads(pickle.dumps(store)).key("images/1.png") == "datasets/laundry/images/1.png"


def test_inline_feedback_follows_the_indexed_samples(local: Path) -> None:
    data = _dataset(local)
    inline = Split(torch.full((2, 3, SIZE, SIZE), 0.5), torch.tensor([1, 0]))
    both = IndexedDataset(data.plugin, data.samples, data.source, inline=inline)
    assert len(both) == len(data) + 2
    x, y = both[len(data)]
    assert y == 1 and torch.equal(x, inline.x[0])
    sub = both.subset(torch.tensor([len(data) + 1, 0]))
    assert len(sub) == 2 and sub.labels().tolist() == [data.samples[0].label, 0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"ref": "a.png", "label": "maybe"}', "line 1: label 'maybe' is not one of the classes"),
        (b'{"label": "ok"}', "line 1: expected an object with a non-empty string 'ref'"),
        (b"not json", "line 1: not JSON"),
        (b"", "has no samples"),
    ],
)
def test_bad_index_lines_are_named(line: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_index(line, CLASSES, "idx.jsonl")


def test_labels_by_name_or_index() -> None:
    rows = b'{"ref": "a.png", "label": "defect"}\n\n{"ref": "b.png", "label": 0}\n'
    assert parse_index(rows, CLASSES, "x") == [Sample("a.png", 1), Sample("b.png", 0)]


def test_references_stay_inside_the_dataset_and_bucket(local: Path) -> None:
    source = StoreSource(StoreConfig("127.0.0.1:1", "k", "s", "models"), "datasets/laundry/")
    assert source.key("s3://models/other/x.png") == "other/x.png"
    for bad in ("s3://elsewhere/x.png", "../secrets.png", "/etc/passwd"):
        with pytest.raises(DatasetError):
            source.key(bad)
    with pytest.raises(DatasetError, match="outside the dataset directory"):
        LocalSource(local / "images").fetch("../train.jsonl")
    with pytest.raises(DatasetError, match="listed in the index but missing"):
        LocalSource(local).fetch("images/nope.png")
