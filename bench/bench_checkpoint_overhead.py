"""Training overhead of checkpointing every epoch, against the same training without checkpoints.

The real trainer (``modelloop_trainer.train.Trainer``, CPU, one intra-op thread) runs against a
local MinIO. The workload is sized so that an epoch takes seconds and a checkpoint is tens of MB,
not the 0.1 s digits epoch where timer and scheduler noise swamp a few percent: the digits images
with the training split repeated ``--repeat`` times, and a 64-W-W-10 MLP (``--width``; 1024 gives
1.1 M parameters and an 18 MB checkpoint: weights, best weights and two Adam moments). That is
still a heavier checkpoint stream per second of training than a real GPU job's, so the ratio is a
pessimistic one. Per-epoch wall times come from metrics.json (``epochSeconds``, mark to mark, so an
epoch pays for the previous epoch's checkpoint hand-off and for the background upload running
beside it).

Two comparisons, each as paired ratios whose median and spread are reported (target: median at
most 1.05):

- runs: pairs of runs without / with a checkpoint every epoch, alternating which goes first
  (ABBA...), each pair's ratio of median epoch times;
- epochs: one run checkpointing every other epoch, each epoch that follows a checkpoint against the
  epoch before it, which followed none (same process, seconds apart: the fairest pairing on a
  shared machine).

Epoch 1 (warm-up) is never counted.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

from bench import report
from bench.servers import REPO
from modelloop.api import constants as c
from modelloop.api.artifacts import METRICS_FILE, version_key
from modelloop.api.retrainpolicy import GateSpec, Hyperparameters
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import locate_tools
from modelloop_trainer import runtime as rt
from modelloop_trainer import train as train_module
from modelloop_trainer.checkpoints import CheckpointStore, TrainingState, snapshot
from modelloop_trainer.config import JobConfig
from modelloop_trainer.dataset import seed_dataset
from modelloop_trainer.examples.digits import MAX_PIXEL, DigitsPlugin
from modelloop_trainer.plugin import Split
from modelloop_trainer.train import Trainer

TARGET_RATIO = 1.05
MODEL = "bench-checkpoint"
NEVER = 1000  # the largest checkpointInterval: no checkpoint before the final epoch


class WideNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x.reshape(-1, 64) / MAX_PIXEL)
        return out


class WideDigits(DigitsPlugin):
    """The digits plug-in with a wider network and a repeated training split (augmentation varies the copies)."""

    def __init__(self, width: int, repeat: int) -> None:
        self.width, self.repeat = width, repeat

    def build(self) -> nn.Module:
        return WideNet(self.width)

    def base_dataset(self) -> tuple[Split, Split]:
        train, holdout = super().base_dataset()
        return Split(train.x.repeat(self.repeat, 1), train.y.repeat(self.repeat)), holdout


class CheckpointCpu(contextlib.ExitStack):
    """CPU time the trainer spends on checkpoints, by thread: the snapshot on the training thread and
    the serialise + upload + prune job on the writer thread (``time.thread_time``, so other processes'
    load hardly moves it, unlike wall time). Wraps the two functions while the context is open."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: list[float] = []
        self.writer: list[float] = []

    def __enter__(self) -> CheckpointCpu:
        super().__enter__()
        take, write = snapshot, CheckpointStore.write_snapshot

        def timed_snapshot(state: TrainingState) -> tuple[dict[str, Tensor], dict[str, Any]]:
            t = time.thread_time()
            try:
                return take(state)
            finally:
                self.snapshot.append(time.thread_time() - t)

        def timed_write(store: CheckpointStore, epoch: int, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
            t = time.thread_time()
            try:
                write(store, epoch, tensors, meta)
            finally:
                self.writer.append(time.thread_time() - t)

        self.enter_context(mock.patch.object(train_module, "snapshot", timed_snapshot))
        self.enter_context(mock.patch.object(CheckpointStore, "write_snapshot", timed_write))
        return self


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Runs:
    """Numbered training runs of one plug-in against one bucket."""

    def __init__(self, minio: MinioServer, plugin: WideDigits, epochs: int) -> None:
        self.store, self.plugin, self.epochs = minio.store("bench"), plugin, epochs
        self.minio_pid = minio.process.pid or 0
        # MinIO's CPU per run, by checkpoint interval: what storing the checkpoints costs the server.
        self.minio_cpu: dict[int, list[float]] = {NEVER: [], 1: [], 2: []}
        self.dataset = f"datasets/wide-digits-x{plugin.repeat}"
        self.n = 0
        seed_dataset(self.store, plugin, self.dataset)

    def epoch_seconds(self, checkpoint_interval: int, epochs: int | None = None) -> list[float]:
        """Wall time of every epoch (index 0 is epoch 1) of one real training run."""
        epochs = epochs or self.epochs
        self.n += 1
        version = f"v{self.n}"
        hp = Hyperparameters(epochs=epochs, checkpoint_interval=checkpoint_interval, early_stopping_patience=0, seed=0)
        cfg = JobConfig(
            model=MODEL,
            version=version,
            parent_version=None,
            active_version=None,
            dataset=self.dataset,
            plugin=c.DEFAULT_PLUGIN,
            hyperparameters=hp,
            feedback_through=None,
            gates=GateSpec(),
        )
        minio = process_cpu(self.minio_pid)
        Trainer(cfg, self.store, self.plugin, rt.start({"OMP_NUM_THREADS": "1"})).run()
        self.minio_cpu[checkpoint_interval].append(process_cpu(self.minio_pid) - minio)
        seconds: list[float] = self.store.get_json(version_key(MODEL, version, METRICS_FILE))["epochSeconds"]
        if len(seconds) != epochs:
            raise AssertionError(f"{version}: {len(seconds)} epoch times for {epochs} epochs; it stopped early")
        return seconds

    def checkpoint_bytes(self, version: str) -> int:
        keys = [k for k in self.store.list_keys(f"{MODEL}/{version}/checkpoints/") if k.endswith("state.safetensors")]
        return (self.store.client.stat_object(self.store.bucket, keys[-1]).size or 0) if keys else 0


def _measurement(
    name: str, pairs: list[tuple[float, float]], labels: tuple[str, str], **details: object
) -> report.Measurement:
    """``pairs``: (without, with) epoch seconds measured side by side; judged on the median pair ratio.

    The figure is the baseline times that ratio, so the table's ratio is the paired one: medians of the
    two arms pooled separately let one burst of load on one arm swing the ratio by 30 %."""
    ratios = [w / wo for wo, w in pairs]
    without, with_ = [p[0] for p in pairs], [p[1] for p in pairs]
    mid = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [mid, mid, mid]
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}, IQR {q[0]:.3f}-{q[2]:.3f}"
    print(f"  {name}: {len(ratios)} pair ratios, median {mid:.3f} (range {spread})")
    return report.Measurement(
        name=name,
        unit="s/epoch",
        baseline=statistics.median(without),
        figure=statistics.median(without) * mid,
        baseline_label=labels[0],
        figure_label=f"{labels[1]}: baseline x median pair ratio; pair ratios range {spread}",
        target=f"median pair ratio <= {TARGET_RATIO}",
        passed=mid <= TARGET_RATIO,
        details={**details, "pairRatios": ratios, "medianPairRatio": mid, "without": without, "with": with_},
    )


def run(rounds: int, epochs: int, width: int, repeat: int) -> list[report.Measurement]:
    run_pairs: list[tuple[float, float]] = []
    epoch_pairs: list[tuple[float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp,
        MinioServer(locate_tools(REPO), Path(tmp) / "minio") as minio,
        CheckpointCpu() as cpu,
    ):
        runs = Runs(minio, WideDigits(width, repeat), epochs)
        for i in range(rounds):
            started = time.monotonic()
            times: dict[int, list[float]] = {}
            for interval in (NEVER, 1) if i % 2 == 0 else (1, NEVER):
                times[interval] = runs.epoch_seconds(interval)[1:]
            run_pairs.append((statistics.median(times[NEVER]), statistics.median(times[1])))
            # Interval 2: epoch 2k+1 follows the checkpoint taken after epoch 2k; epoch 2k followed none.
            alternate = runs.epoch_seconds(2, 2 * epochs + 1)
            epoch_pairs += [(alternate[e - 2], alternate[e - 1]) for e in range(3, 2 * epochs + 2, 2)]
            print(f"  round {i + 1}/{rounds} ({time.monotonic() - started:.0f} s): median epoch without "
                  f"{run_pairs[-1][0]:.3f} s, with {run_pairs[-1][1]:.3f} s; interval 2: "
                  f"{' '.join(f'{s:.2f}' for s in alternate)}", flush=True)  # fmt: skip
        size = runs.checkpoint_bytes("v2")
    # Each run with interval 1 writes epochs - 1 more checkpoints than its partner without.
    minio_ms = statistics.median(runs.minio_cpu[1]) - statistics.median(runs.minio_cpu[NEVER])
    minio_ms = max(0.0, minio_ms) / (epochs - 1) * 1e3
    snap_ms, writer_ms = statistics.median(cpu.snapshot) * 1e3, statistics.median(cpu.writer) * 1e3
    epoch_s = statistics.median(p[0] for p in run_pairs)
    print(
        f"  CPU per checkpoint: training thread (snapshot) {snap_ms:.1f} ms, writer thread (serialise, upload, "
        f"prune) {writer_ms:.1f} ms, local MinIO server ~{minio_ms:.0f} ms; median epoch {epoch_s:.2f} s"
    )
    common = {
        "rounds": rounds,
        "epochs": epochs,
        "width": width,
        "repeat": repeat,
        "checkpointBytes": size,
        "cpuMsPerCheckpoint": {"snapshot": snap_ms, "writer": writer_ms, "minio": minio_ms},
    }
    with_cpu = epoch_s + (snap_ms + writer_ms) / 1e3
    mb = f"{size / 1e6:.0f} MB checkpoint"
    return [
        _measurement(
            f"checkpoint overhead, alternating runs ({mb}, CPU)",
            run_pairs,
            ("median epoch, runs without checkpoints", "runs with a checkpoint every epoch"),
            **common,
        ),
        _measurement(
            f"checkpoint overhead, alternating epochs ({mb}, CPU)",
            epoch_pairs,
            ("epochs after an epoch without checkpoint", "epochs after a checkpointed one"),
            **common,
        ),
        report.Measurement(
            name=f"checkpoint CPU in the trainer, per epoch ({mb})",
            unit="s/epoch",
            baseline=epoch_s,
            figure=with_cpu,
            baseline_label="median epoch, runs without checkpoints",
            figure_label=f"plus the trainer's CPU per checkpoint (snapshot {snap_ms:.1f} ms + writer "
            f"{writer_ms:.0f} ms), as if no core were spare; storage server CPU (~{minio_ms:.0f} ms here) excluded",
            target=f"ratio <= {TARGET_RATIO}",
            passed=with_cpu / epoch_s <= TARGET_RATIO,
            details=common,
        ),
    ]


def main() -> None:
    torch.set_num_threads(1)
    p = report.parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=None, help="rounds of 3 runs each (default 4; 2 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per A/B run (default 6; 4 with --quick); "
                   "the alternating run has 2 * epochs + 1")  # fmt: skip
    p.add_argument("--width", type=int, default=1024, help="hidden width of the MLP (default 1024)")
    p.add_argument("--repeat", type=int, default=6, help="copies of the digits training split (default 6)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    epochs = args.epochs or (4 if args.quick else 6)
    if rounds < 1 or epochs < 3:
        p.error("--rounds must be >= 1 and --epochs >= 3 (epoch 1 is not counted)")
    for m in run(rounds, epochs, args.width, args.repeat):
        report.emit(m)


if __name__ == "__main__":
    main()
