"""Resumable training checkpoints in the bucket: ``<model>/<version>/checkpoints/epoch-NNNNNN/``.

Each checkpoint is ``state.safetensors`` (weights, best weights, optimizer tensors, RNG states as
uint8 tensors) plus ``meta.json`` (epoch, early-stopping state, loss history, optimizer
hyperparameters, the state file's SHA-256). ``meta.json`` is written last, so a checkpoint whose
writer was killed half-way has no meta and is ignored. Nothing here unpickles.

Uploads run on one background thread so a spot GPU is not idle while MinIO answers; the training
loop only pays for serialising the state to bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import queue
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from modelloop.api.artifacts import ArtifactError, checkpoints_prefix
from modelloop.clients.objectstore import NotFound, ObjectStore

from .earlystopping import EarlyStopping

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION: Final = 1
STATE_FILE: Final = "state.safetensors"
META_FILE: Final = "meta.json"
KEEP_CHECKPOINTS: Final = 2
_DIR = re.compile(r"^epoch-(\d{6})$")


def checkpoint_dir(epoch: int) -> str:
    """Zero-padded so that lexical order (what S3 lists in) is epoch order."""
    if not 0 <= epoch <= 999_999:
        raise ValueError(f"epoch {epoch} out of range for a checkpoint name (0..999999)")
    return f"epoch-{epoch:06d}"


def parse_checkpoint_dir(name: str) -> int | None:
    m = _DIR.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CheckpointListing:
    complete: list[int]  # epochs with meta.json, ascending
    all: list[int]  # epochs with any object, ascending


def scan_keys(prefix: str, keys: Iterable[str]) -> CheckpointListing:
    """Which checkpoints exist and which are complete, from an object listing under ``prefix``."""
    complete: set[int] = set()
    seen: set[int] = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        if len(parts) != 2:
            continue
        epoch = parse_checkpoint_dir(parts[0])
        if epoch is None:
            continue
        seen.add(epoch)
        if parts[1] == META_FILE:
            complete.add(epoch)
    return CheckpointListing(sorted(complete), sorted(seen))


def to_prune(listing: CheckpointListing, keep: int = KEEP_CHECKPOINTS) -> list[int]:
    """Every checkpoint but the newest ``keep`` complete ones (half-written leftovers included)."""
    kept = set(listing.complete[-keep:]) if keep > 0 else set()
    return [e for e in listing.all if e not in kept]


# --- RNG states as byte tensors -------------------------------------------------------------


def _u32_bytes(values: Iterable[int]) -> Tensor:
    return torch.from_numpy(np.asarray(list(values), dtype=np.uint32).view(np.uint8).copy())


def _bytes_u32(t: Tensor) -> list[int]:
    return [int(v) for v in t.numpy().view(np.uint32)]


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.cpu()
    py_version, py_state, py_gauss = random.getstate()
    tensors["rng.python"] = _u32_bytes(py_state)
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    tensors["rng.numpy"] = _u32_bytes(int(k) for k in np_keys)
    meta = {
        "python": {"version": py_version, "gauss": py_gauss},
        "numpy": {"kind": np_kind, "pos": int(np_pos), "hasGauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    random.setstate((meta["python"]["version"], tuple(_bytes_u32(tensors["rng.python"])), meta["python"]["gauss"]))
    n = meta["numpy"]
    keys = np.asarray(_bytes_u32(tensors["rng.numpy"]), dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["hasGauss"], n["gauss"]))


# --- the state a checkpoint carries ---------------------------------------------------------


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    validation_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def append(self, train_loss: float, validation_loss: float, validation_accuracy: float, seconds: float) -> None:
        self.train_loss.append(train_loss)
        self.validation_loss.append(validation_loss)
        self.validation_accuracy.append(validation_accuracy)
        self.epoch_seconds.append(seconds)

    def to_json(self) -> dict[str, list[float]]:
        return {
            "trainLoss": self.train_loss,
            "validationLoss": self.validation_loss,
            "validationAccuracy": self.validation_accuracy,
            "epochSeconds": self.epoch_seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, list[float]]) -> History:
        return cls(
            list(d["trainLoss"]), list(d["validationLoss"]), list(d["validationAccuracy"]), list(d["epochSeconds"])
        )


@dataclass
class TrainingState:
    """Everything needed to continue training exactly where a checkpoint left off."""

    epoch: int
    model: dict[str, Tensor]
    best_model: dict[str, Tensor]
    optimizer: dict[str, Any]
    early_stopping: EarlyStopping
    history: History


def _cpu(t: Tensor) -> Tensor:
    """A private copy: safetensors refuses tensors sharing memory (e.g. best weights == current)."""
    return t.detach().to("cpu", copy=True).contiguous()


def encode(state: TrainingState) -> tuple[bytes, dict[str, Any]]:
    """(state.safetensors bytes, meta without the state digest). Captures the global RNGs now."""
    tensors, meta = snapshot(state)
    return save_safetensors(tensors), meta


def snapshot(state: TrainingState) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Private copies of everything a checkpoint holds, taken now: the training loop goes on
    mutating weights, optimizer state and history while the background writer serialises these."""
    tensors: dict[str, Tensor] = {}
    for name, t in state.model.items():
        tensors[f"model.{name}"] = _cpu(t)
    for name, t in state.best_model.items():
        tensors[f"best.{name}"] = _cpu(t)
    scalars: dict[str, Any] = {}
    for pid, pstate in state.optimizer["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{pid}.{key}"] = _cpu(value)
            else:
                scalars[f"{pid}.{key}"] = value
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    meta = {
        "formatVersion": CHECKPOINT_FORMAT_VERSION,
        "epoch": state.epoch,
        "earlyStopping": state.early_stopping.to_json(),
        "history": state.history.to_json(),
        "optimizer": {"paramGroups": state.optimizer["param_groups"], "scalars": scalars},
        "rng": rng_meta,
    }
    frozen: dict[str, Any] = json.loads(json.dumps(meta))
    return tensors, frozen


def decode(data: bytes, meta: dict[str, Any], where: str) -> tuple[TrainingState, dict[str, Tensor], dict[str, Any]]:
    """The training state and the RNG tensors + meta (restored by the caller, after model setup)."""
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise ArtifactError(f"{where}/{STATE_FILE} is not a valid safetensors file: {e}") from e
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, pid, key = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[key] = v
    for k, v in meta["optimizer"]["scalars"].items():
        pid, key = k.split(".", 1)
        opt_state.setdefault(int(pid), {})[key] = v
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    state = TrainingState(
        epoch=int(meta["epoch"]),
        model=model,
        best_model=best,
        optimizer={"state": opt_state, "param_groups": meta["optimizer"]["paramGroups"]},
        early_stopping=EarlyStopping.from_json(meta["earlyStopping"]),
        history=History.from_json(meta["history"]),
    )
    return state, rng, meta["rng"]


class CheckpointStore:
    """Reads and writes one version's checkpoints."""

    def __init__(self, store: ObjectStore, model: str, version: str, keep: int = KEEP_CHECKPOINTS) -> None:
        self.store = store
        self.prefix = checkpoints_prefix(model, version)
        self.keep = keep
        # Listed once, then kept up to date by write(): one writer per version (rank 0 of one Job),
        # so a listing per epoch would only add requests to every checkpoint.
        self._known: CheckpointListing | None = None

    def where(self, epoch: int) -> str:
        return f"s3://{self.store.bucket}/{self.prefix}{checkpoint_dir(epoch)}"

    def listing(self) -> CheckpointListing:
        return scan_keys(self.prefix, self.store.list_keys(self.prefix))

    def write_snapshot(self, epoch: int, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Serialise (on the writer's thread, off the training loop) and write."""
        self.write(epoch, save_safetensors(tensors), meta)

    def write(self, epoch: int, data: bytes, meta: dict[str, Any]) -> None:
        base = self.prefix + checkpoint_dir(epoch) + "/"
        sha = self.store.put_bytes(base + STATE_FILE, data)
        meta = {**meta, "state": {"sha256": sha, "size": len(data)}}
        known = self._known if self._known is not None else self.listing()
        self.store.put_bytes(base + META_FILE, json.dumps(meta, indent=1).encode(), "application/json")
        known = CheckpointListing(sorted({*known.complete, epoch}), sorted({*known.all, epoch}))
        for old in to_prune(known, self.keep):
            self._remove(old)
        kept = set(known.complete) - set(to_prune(known, self.keep))
        self._known = CheckpointListing(sorted(kept), sorted(kept))

    def _remove(self, epoch: int) -> None:
        base = self.prefix + checkpoint_dir(epoch) + "/"
        # meta first: from that moment the checkpoint is incomplete and no reader will pick it.
        for name in (META_FILE, STATE_FILE):
            key = base + name
            self.store.retry(key, functools.partial(self.store.client.remove_object, self.store.bucket, key))

    def read(self, epoch: int) -> tuple[bytes, dict[str, Any]]:
        """The state bytes (checked against meta.json's SHA-256) and the meta."""
        base = self.prefix + checkpoint_dir(epoch) + "/"
        where = self.where(epoch)
        try:
            meta = json.loads(self.store.get_bytes(base + META_FILE))
            data = self.store.get_bytes(base + STATE_FILE)
        except NotFound as e:
            raise ArtifactError(f"{where}: {e}; the checkpoint was deleted while reading it") from e
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{where}/{META_FILE} is not valid JSON: {e}") from e
        if meta.get("formatVersion") != CHECKPOINT_FORMAT_VERSION:
            raise ArtifactError(f"{where}/{META_FILE}: unknown checkpoint format {meta.get('formatVersion')!r}")
        expected = meta.get("state", {})
        actual = hashlib.sha256(data).hexdigest()
        if len(data) != expected.get("size") or actual != expected.get("sha256"):
            raise ArtifactError(
                f"{where}/{STATE_FILE}: size/SHA-256 ({len(data)}, {actual[:12]}…) do not match {META_FILE}; "
                "the checkpoint is corrupt"
            )
        return data, meta


class BackgroundWriter:
    """Runs uploads in order on one thread; ``submit`` blocks only when two uploads are queued.

    The first upload error is re-raised in the training thread on the next ``submit`` or on
    ``close``, so a lost checkpoint fails the run loudly instead of silently.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - handed to the training thread
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._queue.put(job)

    def close(self) -> None:
        """Wait for every queued upload; raise the first failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
