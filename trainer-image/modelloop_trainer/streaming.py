"""Datasets that scale: an index of (reference, label) samples plus the objects it points to.

A streaming dataset lives at ``<dataset>/train.jsonl`` and ``<dataset>/holdout.jsonl``, one
``{"ref": "images/000123.png", "label": "defect"}`` per line; a relative ``ref`` is resolved
against ``<dataset>/``, an ``s3://<bucket>/<key>`` one must name the model's own bucket. Only the
index (tens of bytes per sample) is held in memory; every object is fetched, decoded and augmented
on demand inside DataLoader worker processes, so a training run's memory does not grow with the
images' total size.
"""

from __future__ import annotations

import json
import math
import os
import threading
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from modelloop.clients.objectstore import NotFound, ObjectStore, StoreConfig

from .metrics import Evaluation, evaluate_logits
from .plugin import DatasetError, InputError, ModelPlugin, Split

INDEX_SUFFIX = ".jsonl"
ENV_WORKERS = "MODELLOOP_DATALOADER_WORKERS"
PREFETCH_FACTOR = 4
_CLIENT_LOCK = threading.Lock()
SAMPLE_THREADS = 8  # samples in flight per worker: one's store read overlaps others' decoding


@dataclass(frozen=True)
class Sample:
    """One object reference (relative to the dataset, or ``s3://bucket/key``) and its class index."""

    ref: str
    label: int


def index_key(dataset: str, split: str) -> str:
    return f"{dataset.strip('/')}/{split}{INDEX_SUFFIX}"


def parse_index(raw: bytes, class_names: Sequence[str], where: str) -> list[Sample]:
    """The index's samples; a label may be a class name or its index. Every error names the line."""
    samples = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where} line {n}: not JSON ({e})") from e
        if not isinstance(row, dict) or not isinstance(row.get("ref"), str) or not row["ref"]:
            raise DatasetError(f"{where} line {n}: expected an object with a non-empty string 'ref'")
        label = row.get("label")
        if isinstance(label, str) and label in class_names:
            index = class_names.index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
            index = label
        else:
            raise DatasetError(f"{where} line {n}: label {label!r} is not one of the classes {list(class_names)}")
        samples.append(Sample(row["ref"], index))
    if not samples:
        raise DatasetError(f"{where} has no samples")
    return samples


class Source:
    """Where a dataset's objects are read from; picklable, so each DataLoader worker gets its own copy."""

    @abstractmethod
    def fetch(self, ref: str) -> bytes: ...

    @abstractmethod
    def describe(self, ref: str) -> str: ...


class LocalSource(Source):
    """A directory holding the index's objects (what ``laundry_data --out DIR`` writes)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fetch(self, ref: str) -> bytes:
        path = (self.root / ref).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DatasetError(f"{ref!r} points outside the dataset directory {self.root}")
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise DatasetError(f"{path} is listed in the index but missing") from e

    def describe(self, ref: str) -> str:
        return str(self.root / ref)


class StoreSource(Source):
    """The model's bucket; the client is created lazily in each process (a MinIO client does not pickle)."""

    def __init__(self, config: StoreConfig, prefix: str) -> None:
        self.config = config
        self.prefix = prefix.strip("/") + "/"
        self._store: ObjectStore | None = None
        self._store_pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "prefix": self.prefix, "_store": None, "_store_pid": 0}

    def key(self, ref: str) -> str:
        if ref.startswith("s3://"):
            bucket, _, key = ref[len("s3://") :].partition("/")
            if bucket != self.config.bucket or not key:
                raise DatasetError(f"{ref!r} is not in the model's bucket s3://{self.config.bucket}/")
            return key
        if ref.startswith("/") or ".." in ref.split("/"):
            raise DatasetError(f"{ref!r} must be relative to the dataset and stay inside it")
        return self.prefix + ref

    def fetch(self, ref: str) -> bytes:
        store = self._store
        if store is None or self._store_pid != os.getpid():
            with _CLIENT_LOCK:  # a worker's sample threads share one client and its connection pool
                if self._store is None or self._store_pid != os.getpid():  # never a forked parent's sockets
                    self._store = ObjectStore(self.config)
                    self._store_pid = os.getpid()
                store = self._store
        try:
            return store.get_bytes(self.key(ref))
        except NotFound as e:
            raise DatasetError(f"{self.describe(ref)} is listed in the index but missing") from e

    def describe(self, ref: str) -> str:
        return f"s3://{self.config.bucket}/{self.key(ref)}"


class StreamingPlugin(ModelPlugin):
    """A plug-in whose datasets are indexes of encoded objects, decoded with :meth:`decode_bytes`."""

    @abstractmethod
    def decode_bytes(self, raw: bytes) -> Tensor: ...

    def load_samples(self, store: ObjectStore, dataset: str, split: str) -> list[Sample]:
        key = index_key(dataset, split)
        where = f"s3://{store.bucket}/{key}"
        try:
            raw = store.get_bytes(key)
        except NotFound as e:
            raise DatasetError(f"{where} is missing: upload the dataset's index and objects first") from e
        return parse_index(raw, self.class_names, where)

    def initialise(self, net: nn.Module, store: ObjectStore) -> None:
        """Starting weights when there is no parent version (transfer learning); default: as built."""


class IndexedDataset(Dataset[tuple[Tensor, int]]):
    """Map-style: item ``(i, epoch)`` fetches, decodes and (when ``augment``) augments sample ``i``.

    The augmentation's randomness comes from (seed, epoch, i) alone, so any worker count, order or
    resumed run produces the same images. ``inline`` samples (feedback that still carries its
    input) follow the indexed ones.
    """

    def __init__(
        self,
        plugin: StreamingPlugin,
        samples: Sequence[Sample],
        source: Source,
        augment: bool = False,
        seed: int = 0,
        inline: Split | None = None,
    ) -> None:
        self.plugin = plugin
        self.samples = list(samples)
        self.source = source
        self.augment = augment
        self.seed = seed
        self.inline = inline
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def __len__(self) -> int:
        return len(self.samples) + (len(self.inline) if self.inline is not None else 0)

    def labels(self) -> Tensor:
        y = torch.tensor([s.label for s in self.samples], dtype=torch.int64)
        return torch.cat([y, self.inline.y]) if self.inline is not None else y

    def subset(self, index: Tensor) -> IndexedDataset:
        n = len(self.samples)
        picked = [int(i) for i in index]
        refs = [self.samples[i] for i in picked if i < n]
        extra = torch.tensor([i - n for i in picked if i >= n], dtype=torch.int64)
        inline = self.inline.subset(extra) if self.inline is not None and len(extra) else None
        return IndexedDataset(self.plugin, refs, self.source, self.augment, self.seed, inline)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[Tensor, int]:
        return self._item(item)

    def __getitems__(self, items: Sequence[tuple[int, int] | int]) -> list[tuple[Tensor, int]]:
        """A whole batch (what a DataLoader worker asks for), its samples read, decoded and augmented
        concurrently: waiting for one object overlaps decoding others (Pillow and torch release the
        GIL), where reading the whole batch first left the core idle for the slowest read."""
        if self._pool is None or self._pool_pid != os.getpid():
            # A forked DataLoader worker inherits the parent's pool object but none of its threads.
            self._pool = ThreadPoolExecutor(SAMPLE_THREADS, thread_name_prefix="sample", initializer=_one_torch_thread)
            self._pool_pid = os.getpid()
        return list(self._pool.map(self.__getitem__, items))

    def _item(self, item: tuple[int, int] | int) -> tuple[Tensor, int]:
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        if i < len(self.samples):
            sample = self.samples[i]
            try:
                x = self.plugin.decode_bytes(self.source.fetch(sample.ref))
            except InputError as e:
                raise DatasetError(f"{self.source.describe(sample.ref)}: {e}") from e
            label = sample.label
        else:
            assert self.inline is not None
            x, label = self.inline.x[i - len(self.samples)], int(self.inline.y[i - len(self.samples)])
        if self.augment:
            gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + i) % 2**63)
            x = self.plugin.augment(x.unsqueeze(0), gen)[0]
        return x, label


def _one_torch_thread() -> None:
    """OpenMP's thread count is per calling thread: a sample thread left at the default would start a
    team per core for every augmentation op, oversubscribing the worker's share of the CPUs."""
    torch.set_num_threads(1)


class EpochSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) for the order set before each epoch; lives in the main process,
    so persistent workers see each new epoch's order without being restarted."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order: list[int] = []
        self.epoch = 0

    def set(self, order: Sequence[int], epoch: int) -> None:
        self.order, self.epoch = [int(i) for i in order], epoch

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.order), self.batch_size):
            yield [(i, self.epoch) for i in self.order[start : start + self.batch_size]]


def worker_count(env: dict[str, str] | None = None) -> int:
    """``MODELLOOP_DATALOADER_WORKERS``, default: the CPUs this process may use, at most 8."""
    raw = (os.environ if env is None else env).get(ENV_WORKERS, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError as e:
            raise DatasetError(f"{ENV_WORKERS}={raw!r} is not a whole number") from e
        if value < 0:
            raise DatasetError(f"{ENV_WORKERS}={raw!r} must be 0 (load in the main process) or more")
        return value
    return min(8, len(os.sched_getaffinity(0)))


def loader(dataset: IndexedDataset, sampler: EpochSampler, workers: int, pin_memory: bool = False) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def evaluate_stream(plugin: ModelPlugin, model: nn.Module, data: DataLoader[Any], device: torch.device) -> Evaluation:
    """:meth:`ModelPlugin.evaluate` over a streamed split: only the logits are kept, not the inputs."""
    model.eval()
    logits, targets = [], []
    with torch.inference_mode():
        for xb, yb in data:
            logits.append(model(xb.to(device)).float().cpu())
            targets.append(yb)
    return evaluate_logits(torch.cat(logits), torch.cat(targets), plugin.num_classes)
