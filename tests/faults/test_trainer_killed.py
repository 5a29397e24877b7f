"""The training process is SIGKILLed mid-run (a preempted or OOM-killed pod); the retry resumes.

What a retried Job does is start the same container again with the same environment, so the
test does exactly that with the real trainer against the real MinIO: train, kill -9 once a
checkpoint is in the bucket, train again. The second run must start from the newest complete
checkpoint, not epoch 1, and say so in ``progress.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.api.artifacts import checkpoints_prefix, version_key
from modelloop.clients.objectstore import NotFound, ObjectStore

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MODEL = "digits"
VERSION = "v1"
DATASET = "datasets/digits"
EPOCHS = 8
TIMEOUT = 300.0


def _trainer(verb: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "modelloop_trainer", verb, *args]


def _complete_checkpoints(store: ObjectStore) -> list[int]:
    prefix = checkpoints_prefix(MODEL, VERSION)
    epochs = []
    for key in store.list_keys(prefix):
        m = re.fullmatch(r"epoch-(\d{6})/meta\.json", key[len(prefix) :])
        if m:
            epochs.append(int(m.group(1)))
    return sorted(epochs)


def _progress(store: ObjectStore) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = store.get_json(version_key(MODEL, VERSION, "progress.json"))
    except NotFound:
        return None
    return data


def test_killed_trainer_resumes_from_last_checkpoint(minio: Any, bucket: str, tmp_path: Path) -> None:
    store: ObjectStore = minio.store(bucket)
    env = {
        **os.environ,
        **minio.env(bucket),
        c.ENV_MODEL: MODEL,
        c.ENV_VERSION: VERSION,
        c.ENV_DATASET: DATASET,
        c.ENV_HYPERPARAMETERS: json.dumps(
            {"epochs": EPOCHS, "checkpointInterval": 1, "earlyStoppingPatience": 0, "augment": False}
        ),
    }
    seeded = subprocess.run(
        _trainer("seed-dataset", "--dataset", DATASET), env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert seeded.returncode == 0, seeded.stderr

    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        first = subprocess.Popen(_trainer("train"), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not [e for e in _complete_checkpoints(store) if e >= 2]:
                assert first.poll() is None, (
                    f"trainer exited ({first.returncode}) before checkpoint 2:\n{first_log.read_text()}"
                )
                assert time.monotonic() < deadline, f"no checkpoint 2 within {TIMEOUT}s:\n{first_log.read_text()}"
                time.sleep(0.05)  # polling interval of a condition, not a synchronisation
            first.send_signal(signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first.wait(TIMEOUT)
    assert first.returncode == -signal.SIGKILL
    assert not store.exists(version_key(MODEL, VERSION, "manifest.json")), (
        "the trainer finished all epochs before it could be killed; the test proved nothing (raise EPOCHS)"
    )
    resume_point = _complete_checkpoints(store)[-1]
    killed_at = _progress(store)
    assert killed_at is not None and killed_at["epoch"] < EPOCHS

    second = subprocess.run(_trainer("train"), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert second.returncode == 0, second.stderr

    epochs_trained = [int(m) for m in re.findall(rf"epoch (\d+)/{EPOCHS}:", second.stderr)]
    assert epochs_trained == list(range(resume_point + 1, EPOCHS + 1)), (
        f"the retry should train epochs {resume_point + 1}..{EPOCHS} only, trained {epochs_trained}"
    )
    progress = _progress(store)
    assert progress is not None
    assert progress["epoch"] == EPOCHS
    assert progress["resumedFromEpoch"] == resume_point
    metrics = store.get_json(version_key(MODEL, VERSION, "metrics.json"))
    assert metrics["resumedFromEpoch"] == resume_point
    assert len(metrics["trainLoss"]) == EPOCHS, "the loss history of epochs before the kill was lost on resume"
    assert _complete_checkpoints(store)[-1] == EPOCHS
    manifest = store.get_json(version_key(MODEL, VERSION, "manifest.json"))
    assert {f["path"] for f in manifest["files"]} >= {"model.safetensors", "metrics.json"}
