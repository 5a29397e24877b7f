"""``modelloop-trainer train``: fine-tune, checkpoint, resume, publish one model version.

Run by the operator's training Job, possibly on a spot GPU that disappears mid-run and possibly
under torchrun. Whatever happens, a retried pod continues from the newest complete checkpoint
without redoing finished epochs, and the version appears in the bucket once, complete, with its
manifest written last.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from modelloop.api.artifacts import (
    CURVE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    Manifest,
    Progress,
    version_key,
)
from modelloop.clients.artifactstore import fetch_version, publish_version
from modelloop.clients.objectstore import ObjectStore

from . import runtime as rt
from .checkpoints import (
    BackgroundWriter,
    CheckpointStore,
    History,
    TrainingState,
    capture_rng,
    decode,
    restore_rng,
    snapshot,
)
from .config import JobConfig
from .earlystopping import EarlyStopping
from .feedback import Feedback, load_feedback
from .metrics import Evaluation
from .optim import build_optimizer, learning_rate_at, set_learning_rate
from .plugin import ModelPlugin, Split
from .preemption import Stopped, StopRequest, stop_on_sigterm
from .report import TrainingMetrics, plot_curves
from .streaming import EpochSampler, IndexedDataset, StoreSource, StreamingPlugin, evaluate_stream, loader, worker_count

log = logging.getLogger(__name__)

# The in-memory split (safetensors datasets) or a streamed index of objects (StreamingPlugin).
Data = Split | IndexedDataset
EVAL_BATCH = 256


def split_train_validation(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): a seeded permutation, the same on every rank and retry."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split off a validation set, have {n}")
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Augmentation randomness derived from (seed, epoch, rank) alone, so a resumed epoch replays exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)


def load_parent_weights(store: ObjectStore, cfg: JobConfig, parent: str, workdir: Path) -> dict[str, Tensor]:
    """The parent version's weights, SHA-256-checked against its manifest before safetensors reads a byte."""
    dest = workdir / f"parent-{parent}"
    manifest = fetch_version(store, cfg.model, parent, dest, only={WEIGHTS_FILE})
    where = f"s3://{store.bucket}/{cfg.model}/{parent}/{WEIGHTS_FILE}"
    if not any(f.path == WEIGHTS_FILE for f in manifest.files):
        raise ArtifactError(f"{where} is not listed in the parent's manifest; the parent version has no weights")
    try:
        return load_file(dest / WEIGHTS_FILE)
    except (SafetensorError, ValueError, OSError) as e:
        raise ArtifactError(f"{where} is not a valid safetensors file ({e}); refusing to load it") from e


def _load_weights(net: nn.Module, weights: dict[str, Tensor], where: str) -> None:
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:3]
        raise ArtifactError(f"{where}: the weights do not fit this plug-in's network: {' '.join(first)}") from e


def _snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class Trainer:
    def __init__(
        self,
        cfg: JobConfig,
        store: ObjectStore,
        plugin: ModelPlugin,
        runtime: rt.Runtime,
        stop: StopRequest | None = None,
    ) -> None:
        self.cfg = cfg
        self.stop = stop or StopRequest()
        self.hp = cfg.hyperparameters
        self.store = store
        self.plugin = plugin
        self.rt = runtime
        self.checkpoints = CheckpointStore(store, cfg.model, cfg.version)
        self.started = time.monotonic()
        # Streaming datasets only: built on first use, kept for the run (persistent workers).
        self._train_sampler = EpochSampler(1)
        self._train_loader: DataLoader[Any] | None = None
        self._val_loader: DataLoader[Any] | None = None

    def run(self) -> None:
        cfg, hp, runtime = self.cfg, self.hp, self.rt
        published = runtime.broadcast_int(
            int(runtime.is_main and self.store.exists(version_key(cfg.model, cfg.version, MANIFEST_FILE)))
        )
        if published:
            log.info("%s/%s is already published (a retried pod after success); nothing to do", cfg.model, cfg.version)
            return
        with tempfile.TemporaryDirectory(prefix="modelloop-train-") as tmp:
            workdir = Path(tmp)
            # The parent first: a damaged parent fails the Job in seconds, before any data is read.
            parent = load_parent_weights(self.store, cfg, cfg.parent_version, workdir) if cfg.parent_version else None
            rt.seed_everything(hp.seed, runtime)
            feedback = load_feedback(self.store, self.plugin, cfg.model, cfg.feedback_through)
            data: Data
            if isinstance(self.plugin, StreamingPlugin):
                samples = self.plugin.load_samples(self.store, cfg.dataset, "train")
                source = StoreSource(self.store.config, cfg.dataset)
                # Reviewed images are references into the same bucket: streamed like the base set's.
                data = IndexedDataset(
                    self.plugin, [*samples, *feedback.refs], source, hp.augment, hp.seed, inline=feedback.inline
                )
                log.info("streaming %d indexed samples from s3://%s/%s/", len(samples), self.store.bucket, cfg.dataset)
            else:
                base = self.plugin.load_split(self.store, cfg.dataset, "train")
                data = base.concat(feedback.inline) if feedback.inline is not None else base
            train_idx, val_idx = split_train_validation(len(data), hp.validation_fraction, hp.seed)
            train, val = data.subset(train_idx), data.subset(val_idx)
            if isinstance(val, IndexedDataset):
                val.augment = False

            net = self.plugin.build()
            if parent is not None:
                where = f"s3://{self.store.bucket}/{cfg.model}/{cfg.parent_version}/{WEIGHTS_FILE}"
                _load_weights(net, parent, where)
                log.info("fine-tuning from parent version %s", cfg.parent_version)
            elif isinstance(self.plugin, StreamingPlugin):
                self.plugin.initialise(net, self.store)
                log.info("training from the plug-in's starting weights (no parent version)")
            else:
                log.info("training from scratch (no parent version)")
            net.to(runtime.device)
            optimizer = build_optimizer(net.parameters(), hp)
            state = self.resume_into(net, optimizer)
            resumed_from = state.epoch if state.epoch else None

            model: nn.Module = net
            if runtime.distributed:
                device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
                model = DistributedDataParallel(net, device_ids=device_ids)
            if runtime.compile:
                model = torch.compile(model)  # type: ignore[assignment]

            writer = BackgroundWriter() if runtime.is_main else None
            try:
                self._loop(model, net, optimizer, state, train, val, writer, resumed_from)
            finally:
                if writer is not None:
                    writer.close()  # waits for the last checkpoint's upload, SIGTERM's included
            if self._stopping() and state.epoch < hp.epochs and not state.early_stopping.should_stop:
                raise Stopped(state.epoch)
            if runtime.is_main:
                self._publish(net, state, train, val, feedback, resumed_from, workdir)
        runtime.barrier()

    def resume_into(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
        """Load the newest complete checkpoint every rank agrees on; a corrupt one falls back to the previous."""
        fresh = TrainingState(0, {}, {}, {}, EarlyStopping(self.hp.early_stopping_patience), History())
        # A checkpoint can fail half-way through loading (weights in, optimizer rejected): every
        # attempt starts again from exactly what a run without checkpoints would have.
        initial_weights, initial_optimizer = _snapshot(net), copy.deepcopy(optimizer.state_dict())
        initial_rng = capture_rng()
        candidates = self.checkpoints.listing().complete if self.rt.is_main else []
        while True:
            epoch = self.rt.broadcast_int(candidates[-1] if candidates else 0)
            if epoch == 0:
                log.info("no usable checkpoint of %s/%s: starting at epoch 1", self.cfg.model, self.cfg.version)
                return fresh
            try:
                data, meta = self.checkpoints.read(epoch)
                state, rng, rng_meta = decode(data, meta, self.checkpoints.where(epoch))
                _load_weights(net, state.model, self.checkpoints.where(epoch))
                optimizer.load_state_dict(state.optimizer)
                restore_rng(rng, rng_meta)
                ok = 1
            except (ArtifactError, KeyError, ValueError, TypeError, RuntimeError) as e:
                log.warning("checkpoint %s unusable, trying the one before: %s", self.checkpoints.where(epoch), e)
                ok = 0
            if self.rt.all_reduce_sum([float(ok)])[0] == self.rt.world_size:
                log.info("resuming from checkpoint %s: epochs 1..%d are done", self.checkpoints.where(epoch), epoch)
                return state
            candidates = [c for c in candidates if c < epoch]
            net.load_state_dict(initial_weights)
            optimizer.load_state_dict(initial_optimizer)
            restore_rng(*initial_rng)

    def _loop(
        self,
        model: nn.Module,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainingState,
        train: Data,
        val: Data,
        writer: BackgroundWriter | None,
        resumed_from: int | None,
    ) -> None:
        hp, runtime = self.hp, self.rt
        sampler: DistributedSampler[Any] = DistributedSampler(
            TensorDataset(torch.empty(len(train))),
            num_replicas=runtime.world_size,
            rank=runtime.rank,
            shuffle=True,
            seed=hp.seed,
        )
        # batchSize is the global batch: the same hyperparameters mean the same thing on 1 or N workers.
        per_rank_batch = max(1, math.ceil(hp.batch_size / runtime.world_size))
        if not state.best_model:
            state.best_model = _snapshot(net)
        mark = time.perf_counter()
        while state.epoch < hp.epochs and not state.early_stopping.should_stop:
            if self._stopping():
                return
            epoch = state.epoch + 1
            sampler.set_epoch(epoch)
            set_learning_rate(optimizer, learning_rate_at(hp, epoch))
            index = torch.tensor(list(sampler), dtype=torch.int64)
            model.train()
            # Summed on the device: a float() per batch would stall a GPU on every step.
            loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
            for xb, yb in self._batches(train, index, epoch, per_rank_batch):
                xb = xb.to(runtime.device, non_blocking=True)
                yb = yb.to(runtime.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with runtime.autocast():
                    loss = F.cross_entropy(model(xb).float(), yb)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_sum += loss.detach().double() * len(yb)
            total, count = runtime.all_reduce_sum([float(loss_sum), float(len(index))])
            train_loss = total / count

            with runtime.autocast():
                ev = self._evaluate(net, val)
            improved = state.early_stopping.update(epoch, ev.loss)
            if improved:
                state.best_model = _snapshot(net)
            state.epoch = epoch
            es = state.early_stopping
            if writer is not None:
                self._write_progress(writer, epoch, train_loss, ev.loss, ev.accuracy, resumed_from)
            # SIGTERM (a preemption) checkpoints the epoch it let finish, whatever the interval says.
            checkpoint = epoch % hp.checkpoint_interval == 0 or epoch == hp.epochs or es.should_stop or self._stopping()
            # Mark to mark: an epoch's time includes the previous epoch's checkpoint hand-off (serialising,
            # and waiting when uploads fall behind), so checkpoint overhead shows up in epochSeconds.
            now = time.perf_counter()
            seconds, mark = now - mark, now
            state.history.append(train_loss, ev.loss, ev.accuracy, round(seconds, 6))
            if writer is not None and checkpoint:
                state.model = net.state_dict()
                state.optimizer = optimizer.state_dict()
                tensors, meta = snapshot(state)
                writer.submit(functools.partial(self.checkpoints.write_snapshot, epoch, tensors, meta))
            log.info(
                "epoch %d/%d: train loss %.4f, validation loss %.4f, validation accuracy %.4f "
                "(best %.4f at epoch %d%s) in %.2f s",
                epoch,
                hp.epochs,
                train_loss,
                ev.loss,
                ev.accuracy,
                es.best_loss,
                es.best_epoch,
                f", {es.bad_epochs}/{es.patience} epochs without improvement" if es.bad_epochs else "",
                seconds,
            )
        if state.early_stopping.should_stop:
            log.info(
                "early stopping after epoch %d: validation loss has not improved for %d epochs; keeping epoch %d's weights",
                state.epoch,
                state.early_stopping.patience,
                state.early_stopping.best_epoch,
            )

    def _stopping(self) -> bool:
        """Whether any rank got SIGTERM; every rank must agree, or one would wait forever in a collective."""
        if not self.rt.distributed:
            return self.stop.requested
        return self.rt.all_reduce_sum([float(self.stop.requested)])[0] > 0

    def _batches(self, train: Data, index: Tensor, epoch: int, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(train, IndexedDataset):
            if self._train_loader is None:
                self._train_sampler = EpochSampler(batch)
                pin = self.rt.device.type == "cuda"
                self._train_loader = loader(train, self._train_sampler, worker_count(), pin_memory=pin)
            self._train_sampler.set(index.tolist(), epoch)
            yield from self._train_loader
            return
        x, y = train.x[index], train.y[index]
        if self.hp.augment:
            x = self.plugin.augment(x, epoch_generator(self.hp.seed, epoch, self.rt.rank))
        for i in range(0, len(index), batch):
            yield x[i : i + batch], y[i : i + batch]

    def _evaluate(self, net: nn.Module, val: Data) -> Evaluation:
        if isinstance(val, IndexedDataset):
            if self._val_loader is None:
                sampler = EpochSampler(EVAL_BATCH)
                sampler.set(range(len(val)), 0)
                self._val_loader = loader(val, sampler, worker_count())
            return evaluate_stream(self.plugin, net, self._val_loader, self.rt.device)
        return self.plugin.evaluate(net, val)

    def _write_progress(
        self, writer: BackgroundWriter, epoch: int, loss: float, val_loss: float, val_acc: float, resumed: int | None
    ) -> None:
        progress = Progress(
            epoch=epoch,
            epochs=self.hp.epochs,
            loss=loss,
            validation_loss=val_loss,
            validation_accuracy=val_acc,
            resumed_from_epoch=resumed,
            updated_at=datetime.now(UTC),
        )
        key = version_key(self.cfg.model, self.cfg.version, PROGRESS_FILE)
        data = progress.model_dump_json(by_alias=True).encode()

        def upload() -> None:
            self.store.put_bytes(key, data, "application/json")

        writer.submit(upload)

    def _publish(
        self,
        net: nn.Module,
        state: TrainingState,
        train: Data,
        val: Data,
        feedback: Feedback,
        resumed_from: int | None,
        workdir: Path,
    ) -> None:
        cfg = self.cfg
        _load_weights(net, state.best_model, "best weights")
        with rt.inference(self.rt):
            ev = self._evaluate(net, val)
        out = workdir / "version"
        out.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS_FILE)
        metrics = TrainingMetrics(
            epochs_run=state.epoch,
            best_epoch=state.early_stopping.best_epoch,
            stopped_early=state.early_stopping.should_stop,
            resumed_from_epoch=resumed_from,
            train_loss=state.history.train_loss,
            validation_loss_curve=state.history.validation_loss,
            validation_accuracy_curve=state.history.validation_accuracy,
            epoch_seconds=state.history.epoch_seconds,
            validation_loss=ev.loss,
            validation_accuracy=ev.accuracy,
            per_class_accuracy=dict(zip(self.plugin.class_names, ev.per_class_accuracy, strict=True)),
            per_class_precision=dict(zip(self.plugin.class_names, ev.per_class_precision, strict=True)),
            per_class_recall=dict(zip(self.plugin.class_names, ev.per_class_recall, strict=True)),
            macro_f1=ev.macro_f1,
            confusion_matrix=ev.confusion,
            train_samples=len(train),
            feedback_samples=feedback.samples,
            feedback_corrections=feedback.snapshot.corrections,
            feedback_by_reference=len(feedback.refs),
            feedback_stored_inline=feedback.stored_inline,
            feedback_skipped=feedback.skipped,
            validation_samples=len(val),
            device=str(self.rt.device),
            world_size=self.rt.world_size,
            duration_seconds=round(time.monotonic() - self.started, 3),
        )
        (out / METRICS_FILE).write_bytes(metrics.to_bytes())
        plot_curves(state.history, state.early_stopping.best_epoch, out / CURVE_FILE, f"{cfg.model} {cfg.version}")
        manifest = Manifest(
            model=cfg.model,
            version=cfg.version,
            parent_version=cfg.parent_version,
            created_at=datetime.now(UTC),
            files=[],
            training_parameters=self.hp.model_dump(by_alias=True),
            feedback_snapshot=feedback.snapshot,
            plugin=cfg.plugin,
            framework={"torch": torch.__version__, "safetensors": safetensors.__version__},
            preprocessing=self.plugin.preprocessing(),
        )
        digest = publish_version(self.store, manifest, out)
        log.info(
            "published %s/%s (%s): validation accuracy %.4f, macro F1 %.4f, %d epochs%s",
            cfg.model,
            cfg.version,
            digest,
            ev.accuracy,
            ev.macro_f1,
            state.epoch,
            ", stopped early" if state.early_stopping.should_stop else "",
        )


def train(cfg: JobConfig, store: ObjectStore, plugin: ModelPlugin, env: Mapping[str, str] | None = None) -> None:
    runtime = rt.start(env)
    try:
        with stop_on_sigterm() as stop:
            Trainer(cfg, store, plugin, runtime, stop).run()
    finally:
        rt.stop(runtime)
