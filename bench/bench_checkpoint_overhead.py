"""Training overhead of checkpointing every epoch, against the same training checkpointing only at the end.

The real trainer (``modelloop_trainer.train.Trainer``, digits example, CPU) runs against a local
MinIO. Per-epoch wall times come from metrics.json (``epochSeconds``, measured mark to mark, so an
epoch pays for the previous epoch's checkpoint hand-off and any wait on the uploader). Two
comparisons, medians over epochs, target at most 5 % overhead each:

- separate runs, alternating without/with a checkpoint every epoch (the literal question, but on
  a shared machine the run-to-run noise is larger than the effect);
- within one run checkpointing every other epoch: epochs that follow a checkpoint against their
  neighbours that do not (same load, so the noise mostly cancels).

The digits epochs are ~0.1 s, far shorter than a real GPU epoch, so the ratio here is a worst case
for the fixed per-checkpoint cost. Training runs on one intra-op thread: on a shared 2-core machine
two spinning OpenMP threads make epoch times swing by 10x with other processes' load, which buries
a few-percent effect; one thread also leaves the uploader a core, as a GPU run does.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from bench import report
from bench.servers import local_minio
from modelloop.api import constants as c
from modelloop.api.artifacts import METRICS_FILE, version_key
from modelloop.api.retrainpolicy import GateSpec, Hyperparameters
from modelloop.clients.objectstore import ObjectStore
from modelloop_trainer import runtime as rt
from modelloop_trainer.config import JobConfig
from modelloop_trainer.dataset import seed_dataset
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.train import Trainer

TARGET_RATIO = 1.05
DATASET = "datasets/digits"
MODEL = "bench-checkpoint"


def epoch_seconds(store: ObjectStore, version: str, epochs: int, checkpoint_interval: int) -> list[float]:
    """Wall time of every epoch (index 0 is epoch 1) of one real training run."""
    hp = Hyperparameters(epochs=epochs, checkpoint_interval=checkpoint_interval, early_stopping_patience=0, seed=0)
    cfg = JobConfig(
        model=MODEL,
        version=version,
        parent_version=None,
        active_version=None,
        dataset=DATASET,
        plugin=c.DEFAULT_PLUGIN,
        hyperparameters=hp,
        feedback_through=None,
        gates=GateSpec(),
    )
    Trainer(cfg, store, DigitsPlugin(), rt.start({"OMP_NUM_THREADS": "1"})).run()
    seconds: list[float] = store.get_json(version_key(MODEL, version, METRICS_FILE))["epochSeconds"]
    if len(seconds) != epochs:
        raise AssertionError(f"{version}: {len(seconds)} epoch times for {epochs} epochs; the run stopped early")
    return seconds


def _measurement(
    name: str, without: list[float], with_: list[float], labels: tuple[str, str], **details: object
) -> report.Measurement:
    for label, samples in (("without", without), ("with", with_)):
        summary = ", ".join(f"{k} {v:.4f}" for k, v in report.summary(samples).items() if k != "n")
        print(f"  {name}: epoch seconds {label} checkpoint ({len(samples)} epochs): {summary}")
    baseline, figure = statistics.median(without), statistics.median(with_)
    return report.Measurement(
        name=name,
        unit="s/epoch",
        baseline=baseline,
        figure=figure,
        baseline_label=labels[0],
        figure_label=labels[1],
        target=f"ratio <= {TARGET_RATIO}",
        passed=figure / baseline <= TARGET_RATIO,
        details={**details, "without": report.summary(without), "with": report.summary(with_)},
    )


def run(rounds: int, epochs: int) -> list[report.Measurement]:
    without: list[float] = []
    with_: list[float] = []
    clean: list[float] = []
    after_checkpoint: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp,
        local_minio(Path(tmp) / "minio", "bench") as store,
    ):
        seed_dataset(store, DigitsPlugin(), DATASET)
        for i in range(rounds):
            # The first epoch (warm-up) and the last (always checkpointed) are left out everywhere.
            # 1000 = the largest interval: no checkpoint before the final epoch.
            without += epoch_seconds(store, f"v{3 * i + 1}", epochs, checkpoint_interval=1000)[1:-1]
            with_ += epoch_seconds(store, f"v{3 * i + 2}", epochs, checkpoint_interval=1)[1:-1]
            # Interval 2 in one run: epoch 2k+1 pays for the checkpoint taken after epoch 2k (hand-off,
            # upload running beside it); epoch 2k pays for none. Neighbouring epochs see the same
            # machine load, so this pairing holds up where separate runs drown in noise.
            seconds = epoch_seconds(store, f"v{3 * i + 3}", epochs, checkpoint_interval=2)
            for epoch in range(2, epochs - 1):
                (after_checkpoint if epoch % 2 == 1 else clean).append(seconds[epoch - 1])
        checkpoints = [k for k in store.list_keys(f"{MODEL}/v2/checkpoints/") if k.endswith("state.safetensors")]
        size = store.client.stat_object("bench", checkpoints[-1]).size if checkpoints else 0
    common = {"rounds": rounds, "epochs": epochs, "checkpoint_bytes": size}
    return [
        _measurement(
            "checkpoint overhead, separate runs (digits, CPU)",
            without,
            with_,
            ("runs without checkpoints", "runs with a checkpoint every epoch"),
            **common,
        ),
        _measurement(
            "checkpoint overhead, interleaved epochs (digits, CPU)",
            clean,
            after_checkpoint,
            ("epochs after an epoch without checkpoint", "epochs after a checkpointed epoch"),
            **common,
        ),
    ]


def main() -> None:
    torch.set_num_threads(1)
    p = report.parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=None, help="alternating without/with runs (default 8; 4 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; 15 with --quick)")
    args = p.parse_args()
    # Many short alternating runs rather than a few long ones: on a shared machine, load comes in
    # bursts of seconds, and short runs spread each burst over both arms.
    rounds = args.rounds or (4 if args.quick else 8)
    epochs = args.epochs or (15 if args.quick else 30)
    if rounds < 1 or epochs < 3:
        p.error("--rounds must be >= 1 and --epochs >= 3 (the first and last epoch are not counted)")
    for m in run(rounds, epochs):
        report.emit(m)


if __name__ == "__main__":
    main()
