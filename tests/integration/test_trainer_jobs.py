"""The trainer image's verbs run for real: subprocesses against a real MinIO, as the Jobs run them.

One module-scoped bucket holds the seeded digits dataset and a reference version trained once;
the other tests fine-tune from it, kill and resume a run, run under torchrun, verify, and plant
corrupt, missing and pickled weights.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelloop.api import constants as c
from modelloop.api.artifacts import (
    MANIFEST_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    VERIFICATION_FILE,
    WEIGHTS_FILE,
    Manifest,
    Progress,
    Verification,
    checkpoints_prefix,
    version_key,
)
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.clients.artifactstore import fetch_version, publish_version, read_manifest
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_trainer import cli
from modelloop_trainer import runtime as rt
from modelloop_trainer.checkpoints import CheckpointStore, History, TrainingState, encode, scan_keys
from modelloop_trainer.config import from_env
from modelloop_trainer.dataset import seed_dataset
from modelloop_trainer.earlystopping import EarlyStopping
from modelloop_trainer.examples.digits import DigitsNet, DigitsPlugin
from modelloop_trainer.train import Trainer

pytestmark = pytest.mark.integration

DATASET = "datasets/digits"
# Fast on a loaded 2-core CI machine, and still > 0.9 validation accuracy.
HP = {"epochs": 12, "batchSize": 64, "learningRate": 0.003, "checkpointInterval": 1, "seed": 7}
RUN_TIMEOUT = 240


@dataclass
class Bucket:
    name: str
    store: ObjectStore
    env: dict[str, str]


def _clean_env() -> dict[str, str]:
    """The test's environment without anything that could leak a setting into the trainer."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_", "RANK", "WORLD_SIZE"))}


def job_env(bucket: Bucket, model: str, version: str, **extra: str) -> dict[str, str]:
    return {
        **_clean_env(),
        **bucket.env,
        c.ENV_MODEL: model,
        c.ENV_VERSION: version,
        c.ENV_DATASET: DATASET,
        c.ENV_HYPERPARAMETERS: json.dumps(HP),
        # CI's 2 cores are shared with MinIO and other tests: two spinning OpenMP threads per trainer
        # made a 12-epoch run 3x slower under load than one thread.
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def trainer(verb: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelloop_trainer", verb], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return result


def trained_epochs(stderr: str) -> list[int]:
    return [int(m) for m in re.findall(r"\] modelloop_trainer\.train: epoch (\d+)/", stderr)]


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def metrics_of(store: ObjectStore, model: str, version: str) -> dict[str, Any]:
    data: dict[str, Any] = store.get_json(version_key(model, version, METRICS_FILE))
    return data


@pytest.fixture(scope="module")
def digits(minio: MinioServer) -> Iterator[Bucket]:
    if not minio.alive():  # a fault test may have left it stopped
        minio.start()
    name = f"trainer-{uuid.uuid4().hex[:10]}"
    store = minio.store(name)
    assert seed_dataset(store, DigitsPlugin(), DATASET)
    assert not seed_dataset(store, DigitsPlugin(), DATASET), "seeding twice must not replace the holdout"
    yield Bucket(name, store, minio.env(name))
    store.remove_prefix("")


@pytest.fixture(scope="module")
def reference(digits: Bucket) -> tuple[subprocess.CompletedProcess[str], float]:
    """digits/v1, trained from scratch once for the module; returns the run and its CPU seconds.

    CPU time, not wall time: CI machines are shared, and at a load of 20 on 2 cores the same run
    takes ten times longer by the clock while doing exactly the same work.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = ok(trainer("train", job_env(digits, "digits", "v1")))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_train_publishes_a_complete_version_above_90_percent_within_a_minute(
    digits: Bucket, reference: tuple[subprocess.CompletedProcess[str], float], tmp_path: Path
) -> None:
    result, cpu_seconds = reference
    assert cpu_seconds < 60, f"training the example took {cpu_seconds:.0f} s of CPU"
    manifest = fetch_version(digits.store, "digits", "v1", tmp_path / "v1")  # checks every SHA-256
    assert {f.path for f in manifest.files} == {WEIGHTS_FILE, METRICS_FILE, "training-curve.png"}
    assert manifest.parent_version is None and manifest.plugin == c.DEFAULT_PLUGIN
    assert manifest.training_parameters["epochs"] == 12 and manifest.training_parameters["learningRate"] == 0.003
    assert manifest.framework["torch"] and manifest.feedback_snapshot.objects == 0
    assert (tmp_path / "v1" / "training-curve.png").read_bytes().startswith(b"\x89PNG")

    metrics = json.loads((tmp_path / "v1" / METRICS_FILE).read_text())
    assert metrics["validationAccuracy"] > 0.9, metrics
    assert metrics["epochsRun"] == 12 and len(metrics["trainLoss"]) == 12 and metrics["device"] == "cpu"
    assert len(metrics["perClassAccuracy"]) == 10 and 0.85 < metrics["macroF1"] <= 1
    assert sum(map(sum, metrics["confusionMatrix"])) == metrics["validationSamples"]
    assert trained_epochs(result.stderr) == list(range(1, 13))

    progress = Progress.model_validate_json(digits.store.get_bytes(version_key("digits", "v1", PROGRESS_FILE)))
    assert (progress.epoch, progress.epochs, progress.resumed_from_epoch) == (12, 12, None)
    prefix = checkpoints_prefix("digits", "v1")
    listing = scan_keys(prefix, digits.store.list_keys(prefix))
    assert listing.complete == listing.all == [11, 12], "only the last two checkpoints are kept"


def test_killed_training_resumes_without_redoing_epochs_and_matches_an_uninterrupted_run(
    digits: Bucket, reference: tuple[subprocess.CompletedProcess[str], float], tmp_path: Path
) -> None:
    env = job_env(digits, "resumed", "v1")
    prefix = checkpoints_prefix("resumed", "v1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelloop_trainer", "train"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not digits.store.exists(prefix + "epoch-000002/meta.json"):
            assert proc.poll() is None, "the trainer exited before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint for epoch 2"
            time.sleep(0.02)  # polling interval of a condition, not a synchronisation guess
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not digits.store.exists(version_key("resumed", "v1", MANIFEST_FILE)), "killed too late: it had finished"
    done = scan_keys(prefix, digits.store.list_keys(prefix)).complete[-1]
    assert 2 <= done < 12
    # A checkpoint whose writer died before meta.json must be ignored, never loaded.
    digits.store.put_bytes(prefix + "epoch-000011/state.safetensors", b"half-written")

    result = ok(trainer("train", env))
    assert f"epochs 1..{done} are done" in result.stderr
    assert trained_epochs(result.stderr) == list(range(done + 1, 13)), "finished epochs were trained again"
    progress = Progress.model_validate_json(digits.store.get_bytes(version_key("resumed", "v1", PROGRESS_FILE)))
    assert (progress.epoch, progress.resumed_from_epoch) == (12, done)

    resumed, uninterrupted = metrics_of(digits.store, "resumed", "v1"), metrics_of(digits.store, "digits", "v1")
    assert resumed["resumedFromEpoch"] == done and uninterrupted["resumedFromEpoch"] is None
    compared = (
        *("trainLoss", "validationLossCurve", "validationAccuracyCurve", "validationLoss", "validationAccuracy"),
        *("perClassAccuracy", "macroF1", "confusionMatrix", "epochsRun", "bestEpoch", "stoppedEarly"),
    )
    assert {k: rounded(resumed[k]) for k in compared} == {k: rounded(uninterrupted[k]) for k in compared}
    fetch_version(digits.store, "resumed", "v1", tmp_path / "resumed")
    a = load_file(tmp_path / "resumed" / WEIGHTS_FILE)
    fetch_version(digits.store, "digits", "v1", tmp_path / "reference", only={WEIGHTS_FILE})
    b = load_file(tmp_path / "reference" / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_sigterm_checkpoints_the_epoch_in_progress_exits_143_and_the_next_run_resumes_from_it(digits: Bucket) -> None:
    """What a Kueue preemption (or a drain) does to a training pod: SIGTERM, then SIGKILL after the grace
    period. With checkpointInterval 5 no checkpoint would exist before epoch 5; the SIGTERM one does."""
    env = job_env(digits, "preempted", "v1")
    env[c.ENV_HYPERPARAMETERS] = json.dumps({**HP, "checkpointInterval": 5})
    prefix = checkpoints_prefix("preempted", "v1")
    progress_key = version_key("preempted", "v1", PROGRESS_FILE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelloop_trainer", "train"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not digits.store.exists(progress_key):
            assert proc.poll() is None, "the trainer exited before its first epoch"
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.02)  # polling interval of a condition, not a synchronisation guess
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)  # well inside a pod's default 30 s grace period per epoch
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 143, f"exit {proc.returncode}\n{stderr[-3000:]}"
    stopped = trained_epochs(stderr)[-1]
    assert stopped < 5, f"SIGTERM came after epoch {stopped}: too late to tell a SIGTERM checkpoint from a periodic one"
    assert f"stopped on SIGTERM after checkpointing epoch {stopped}" in stderr.splitlines()[-1]
    assert scan_keys(prefix, digits.store.list_keys(prefix)).complete == [stopped]
    assert not digits.store.exists(version_key("preempted", "v1", MANIFEST_FILE))

    result = ok(trainer("train", env))
    assert f"epochs 1..{stopped} are done" in result.stderr
    assert trained_epochs(result.stderr) == list(range(stopped + 1, 13)), "the checkpointed epochs were trained again"
    assert metrics_of(digits.store, "preempted", "v1")["epochsRun"] == 12


def test_torchrun_two_workers_publish_one_valid_version(digits: Bucket, tmp_path: Path) -> None:
    env = job_env(digits, "ddp", "v1", **{c.ENV_HYPERPARAMETERS: json.dumps({**HP, "epochs": 3})})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*cmd, "-m", "modelloop_trainer", "train"], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    ok(result)
    manifest = fetch_version(digits.store, "ddp", "v1", tmp_path / "ddp")
    assert {f.path for f in manifest.files} == {WEIGHTS_FILE, METRICS_FILE, "training-curve.png"}
    keys = list(digits.store.list_keys("ddp/"))
    assert [k for k in keys if k.endswith(MANIFEST_FILE)] == ["ddp/v1/manifest.json"]
    metrics = json.loads((tmp_path / "ddp" / METRICS_FILE).read_text())
    assert metrics["worldSize"] == 2 and metrics["epochsRun"] == 3
    assert "[rank 1] modelloop_trainer.train: published" not in result.stderr
    assert result.stderr.count("modelloop_trainer.train: published") == 1


def _feedback(store: ObjectStore, model: str, n: int) -> tuple[str, str]:
    """Two feedback batches of ``n`` reviewed digits each, half of them corrections; returns their keys."""
    train, _ = DigitsPlugin().base_dataset()
    keys = []
    for batch in range(2):
        records = []
        for i in range(n):
            label = int(train.y[batch * n + i])
            records.append(
                FeedbackRecord(
                    id=f"req-{batch}-{i}",
                    version="v1",
                    input=train.x[batch * n + i].tolist(),
                    predicted=label if i % 2 else (label + 1) % 10,
                    label=label,
                    reviewed_at=datetime(2026, 1, 1, tzinfo=UTC),
                )
            )
        key = batch_key(model)
        store.put_bytes(key, encode_batch(records))
        keys.append(key)
    return keys[0], keys[1]


def test_fine_tune_with_feedback_then_verify_against_the_active_version(
    digits: Bucket,
    reference: tuple[subprocess.CompletedProcess[str], float],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, later = _feedback(digits.store, "digits", 40)
    assert first < later
    env = job_env(
        digits,
        "digits",
        "v2",
        **{
            c.ENV_PARENT_VERSION: "v1",
            c.ENV_FEEDBACK_THROUGH: first,
            c.ENV_HYPERPARAMETERS: json.dumps({**HP, "epochs": 3, "learningRate": 0.001}),
        },
    )
    result = ok(trainer("train", env))
    assert "fine-tuning from parent version v1" in result.stderr
    manifest, digest = read_manifest(digits.store, "digits", "v2")
    assert manifest.parent_version == "v1"
    snap = manifest.feedback_snapshot
    assert (snap.through_key, snap.objects, snap.samples, snap.corrections) == (first, 1, 40, 20)
    metrics = metrics_of(digits.store, "digits", "v2")
    assert metrics["trainSamples"] + metrics["validationSamples"] == 1438 + 40
    # Fine-tuning starts from v1's weights: after one epoch it is already far better than chance.
    assert metrics["validationAccuracyCurve"][0] > 0.85

    result = ok(trainer("verify", {**env, c.ENV_ACTIVE_VERSION: "v1"}))
    v = Verification.model_validate_json(digits.store.get_bytes(version_key("digits", "v2", VERIFICATION_FILE)))
    assert (v.model, v.version, v.baseline_version, v.manifest_digest) == ("digits", "v2", "v1", digest)
    assert v.holdout_samples == 359
    assert v.validation_accuracy == metrics["validationAccuracy"]
    assert v.holdout_accuracy > 0.9 and v.baseline_holdout_accuracy is not None and v.baseline_holdout_accuracy > 0.9
    assert set(v.per_class_accuracy) == {str(d) for d in range(10)} and 0 < v.macro_f1 <= 1
    assert 0 < v.latency_p50_ms <= v.latency_p95_ms < 1000
    assert v.throughput_rps > 50 and 50 < v.peak_memory_mib < 4096 and v.device == "cpu"

    # A training pod retried after it had published (e.g. killed before exiting) changes nothing.
    with caplog.at_level(logging.INFO, logger="modelloop_trainer"):
        assert in_process("train", env, capsys).returncode == 0
    assert "already published" in caplog.text
    assert read_manifest(digits.store, "digits", "v2")[1] == digest


class PlantedPickle:
    """Unpickling this creates the marker file: proof that someone executed the planted pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _publish(store: ObjectStore, model: str, version: str, weights: bytes | None, tmp: Path) -> None:
    """A version whose manifest honestly lists ``weights`` (so only the format check can stop it)."""
    out = tmp / f"{model}-{version}"
    out.mkdir()
    if weights is None:
        save_file(DigitsNet().state_dict(), out / WEIGHTS_FILE)
    else:
        (out / WEIGHTS_FILE).write_bytes(weights)
    (out / METRICS_FILE).write_text("{}")
    publish_version(
        store, Manifest(model=model, version=version, created_at=datetime(2026, 1, 1, tzinfo=UTC), files=[]), out
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def in_process(verb: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """The CLI's own code path without a new interpreter (torch's import alone costs seconds on CI).
    These runs fail before any global torch state is touched; one pickle case still runs as a real process."""
    capsys.readouterr()
    code = cli.run([verb], env)
    return subprocess.CompletedProcess([verb], code, "", capsys.readouterr().err)


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_damaged_parent_fails_training_naming_the_file(
    damage: str, digits: Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"damaged-{damage}"
    _publish(digits.store, model, "v1", None, tmp_path)
    key = version_key(model, "v1", WEIGHTS_FILE)
    if damage == "corrupted":
        data = bytearray(digits.store.get_bytes(key))
        data[-1] ^= 0xFF
        digits.store.put_bytes(key, bytes(data))
    else:
        digits.store.remove_prefix(key)
    result = in_process("train", job_env(digits, model, "v2", **{c.ENV_PARENT_VERSION: "v1"}), capsys)
    assert result.returncode != 0
    reason = _last_line(result)
    assert reason.startswith("train failed: ArtifactError:") and f"{model}/v1/{WEIGHTS_FILE}" in reason, reason
    assert ("SHA-256" in reason) if damage == "corrupted" else ("missing from the bucket" in reason)
    assert not digits.store.exists(version_key(model, "v2", MANIFEST_FILE))
    assert not list(digits.store.list_keys(checkpoints_prefix(model, "v2"))), "it must fail before training"


@pytest.mark.parametrize("verb", ["train", "verify"])
def test_a_planted_pickle_is_never_executed(
    verb: str, digits: Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    model = f"pickled-{verb}"
    _publish(digits.store, model, "v1", pickle.dumps(PlantedPickle(marker)), tmp_path)
    pickle.loads(pickle.dumps(PlantedPickle(tmp_path / "self-test"))).close()
    assert (tmp_path / "self-test").exists(), "the planted pickle would create the marker if loaded"

    env = job_env(digits, model, "v2" if verb == "train" else "v1", **{c.ENV_PARENT_VERSION: "v1"})
    if verb == "verify":
        env.pop(c.ENV_PARENT_VERSION)
    result = trainer(verb, env) if verb == "train" else in_process(verb, env, capsys)
    assert result.returncode != 0
    reason = _last_line(result)
    assert f"{model}/v1/{WEIGHTS_FILE} is not a valid safetensors file" in reason, reason
    assert not marker.exists(), "the pickle was executed"
    if verb == "verify":
        assert not digits.store.exists(version_key(model, "v1", VERIFICATION_FILE))


def test_a_bad_configuration_is_the_last_stderr_line_and_the_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(cli.ENV_TERMINATION_LOG, str(termination))
    env = {
        c.ENV_S3_ENDPOINT: "127.0.0.1:9",
        c.ENV_ACCESS_KEY: "unused",
        c.ENV_SECRET_KEY: "unused",
        c.ENV_BUCKET: "unused",
        c.ENV_MODEL: "digits",
        c.ENV_VERSION: "v2",
        c.ENV_DATASET: DATASET,
        c.ENV_HYPERPARAMETERS: '{"epochs": 0}',
    }
    result = in_process("train", env, capsys)
    assert result.returncode == 1
    reason = _last_line(result)
    assert reason.startswith("train failed: ConfigError: MODELLOOP_HYPERPARAMETERS: epochs"), reason
    assert "Traceback" not in result.stderr, "an expected failure needs no traceback"
    assert termination.read_text() == reason


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(digits: Bucket) -> None:
    cfg = from_env(job_env(digits, "fallback", "v1"), "train")
    checkpoints = CheckpointStore(digits.store, "fallback", "v1")
    written = {}
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        net = DigitsNet()
        written[epoch] = net.state_dict()
        optimizer = torch.optim.Adam(net.parameters()).state_dict()
        state = TrainingState(epoch, net.state_dict(), net.state_dict(), optimizer, EarlyStopping(5), History())
        checkpoints.write(epoch, *encode(state))
    state_key = checkpoints.prefix + "epoch-000002/state.safetensors"
    data = bytearray(digits.store.get_bytes(state_key))
    data[len(data) // 2] ^= 0xFF
    digits.store.put_bytes(state_key, bytes(data))

    net = DigitsNet()
    resumed = Trainer(cfg, digits.store, DigitsPlugin(), rt.start({})).resume_into(
        net, torch.optim.Adam(net.parameters())
    )
    assert resumed.epoch == 1
    assert all(torch.equal(net.state_dict()[k], v) for k, v in written[1].items())
