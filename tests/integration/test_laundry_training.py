"""The laundry (ResNet-18) example trains for real: its generated dataset streamed from MinIO by
DataLoader workers, transfer learning from base weights in the bucket, published like any version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file, save

from modelloop.api import constants as c
from modelloop.api.artifacts import METRICS_FILE, VERIFICATION_FILE, WEIGHTS_FILE, Verification, version_key
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.clients.artifactstore import fetch_version
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import generate, upload
from modelloop_trainer.plugin import DatasetError
from modelloop_trainer.streaming import IndexedDataset, StoreSource

pytestmark = pytest.mark.integration

PLUGIN = "modelloop_trainer.examples.laundry:LaundryPlugin"
DATASET = "datasets/laundry"
BASE = "base/resnet18.safetensors"
SIZE = 64
HP = {"epochs": 2, "batchSize": 8, "learningRate": 0.001, "seed": 3, "earlyStoppingPatience": 0}


@pytest.fixture(scope="module")
def laundry(
    minio: MinioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ObjectStore, dict[str, str]]]:
    if not minio.alive():
        minio.start()
    name = f"laundry-{uuid.uuid4().hex[:10]}"
    store = minio.store(name)
    out = tmp_path_factory.mktemp("laundry")
    generate(out, 30, seed=1, size=SIZE)
    assert upload(store, out, DATASET) == 30
    # The tests' own "pretrained" weights: random, but every backbone tensor present and recognisable.
    base = LaundryPlugin(image_size=SIZE).build().state_dict()
    store.put_bytes(BASE, save({k: v.contiguous() for k, v in base.items()}))
    yield store, minio.env(name)
    store.remove_prefix("")


def _env(bucket_env: dict[str, str], version: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_", "RANK", "WORLD_SIZE"))}
    return {
        **clean,
        **bucket_env,
        c.ENV_MODEL: "laundry",
        c.ENV_VERSION: version,
        c.ENV_DATASET: DATASET,
        c.ENV_PLUGIN: PLUGIN,
        c.ENV_HYPERPARAMETERS: json.dumps(HP),
        "MODELLOOP_LAUNDRY_IMAGE_SIZE": str(SIZE),
        "MODELLOOP_LAUNDRY_BASE_WEIGHTS": BASE,
        "MODELLOOP_DATALOADER_WORKERS": "2",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def trained(laundry: tuple[ObjectStore, dict[str, str]]) -> subprocess.CompletedProcess[str]:
    """laundry/v1: two epochs with a frozen backbone, trained once for the module."""
    _, bucket_env = laundry
    env = _env(bucket_env, "v1", MODELLOOP_LAUNDRY_FREEZE_BACKBONE="true")
    result = subprocess.run(
        [sys.executable, "-m", "modelloop_trainer", "train"], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_resnet18_trains_from_base_weights_streamed_from_minio_and_publishes_a_version(
    laundry: tuple[ObjectStore, dict[str, str]], trained: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    store, _ = laundry
    assert "streaming 24 indexed samples" in trained.stderr
    manifest = fetch_version(store, "laundry", "v1", tmp_path / "v1")
    assert manifest.plugin == PLUGIN and {f.path for f in manifest.files} >= {WEIGHTS_FILE, METRICS_FILE}
    assert manifest.preprocessing == {"imageSize": SIZE}, "the server decodes photos for v1 at this size"
    metrics = json.loads((tmp_path / "v1" / METRICS_FILE).read_text())
    assert metrics["epochsRun"] == 2 and set(metrics["perClassAccuracy"]) == {"ok", "defect"}
    assert metrics["trainSamples"] + metrics["validationSamples"] == 24
    assert sum(map(sum, metrics["confusionMatrix"])) == metrics["validationSamples"]
    # Frozen backbone: the published backbone is the base, bit for bit; only the head moved.
    weights = load_file(tmp_path / "v1" / WEIGHTS_FILE)
    expected = load(store.get_bytes(BASE))
    assert all((weights[k] == expected[k]).all() for k in expected if not k.startswith("fc."))
    assert not (weights["fc.weight"] == expected["fc.weight"]).all()


def test_the_verifier_streams_the_holdout_index_and_records_the_measurement(
    laundry: tuple[ObjectStore, dict[str, str]], trained: subprocess.CompletedProcess[str]
) -> None:
    store, bucket_env = laundry
    result = subprocess.run(
        [sys.executable, "-m", "modelloop_trainer", "verify"],
        env=_env(bucket_env, "v1"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    verification = Verification.model_validate_json(store.get_bytes(version_key("laundry", "v1", VERIFICATION_FILE)))
    assert verification.holdout_samples == 6 and set(verification.per_class_accuracy) == {"ok", "defect"}
    assert 0 <= verification.holdout_accuracy <= 1 and verification.latency_p95_ms > 0


def test_v2_learns_from_reviews_of_images_by_reference_with_the_policys_hyperparameters(
    laundry: tuple[ObjectStore, dict[str, str]], trained: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """Reviews whose input came by reference, or was sent inline and stored by the server, are streamed from
    the bucket like the base set's images; one kept as a digest only, and one whose stored input is missing,
    are counted as skipped, each with its reason."""
    store, bucket_env = laundry
    images = sorted(k for k in store.list_keys(f"{DATASET}/images/"))[:5]
    now = datetime.now(UTC)
    records = [
        FeedbackRecord(
            id=f"TASK-{i}", version="v1", input_ref=f"s3://{store.bucket}/{key}", input_sha256="a" * 64,
            input_size=1, predicted=0, label=i % 2, reason="missed stain" if i % 2 else None, reviewed_at=now,
        )
        for i, key in enumerate(images)
    ]  # fmt: skip
    records.append(
        FeedbackRecord(id="inline", version="v1", input_sha256="b" * 64, predicted=0, label=1, reviewed_at=now)
    )
    # Sent inline and stored by the server (content-addressed), and one whose upload never happened.
    photo = store.get_bytes(sorted(store.list_keys(f"{DATASET}/images/"))[5])
    sha = hashlib.sha256(photo).hexdigest()
    store.put_bytes(f"laundry/inline-inputs/{sha}", photo)
    for rid, digest in (("stored", sha), ("lost", "c" * 64)):
        records.append(
            FeedbackRecord(
                id=rid, version="v1", input_sha256=digest, input_stored=f"s3://{store.bucket}/laundry/inline-inputs/{digest}",
                predicted=0, label=1, reviewed_at=now,
            )
        )  # fmt: skip
    key = batch_key("laundry", now)
    store.put_bytes(key, encode_batch(records))
    hp = {
        **HP,
        "optimizer": "sgd",
        "learningRateSchedule": {"type": "step", "stepEpochs": 1, "gamma": 0.5},
        "weightDecay": 0.0001,
        "imageSize": SIZE,
        "frozenLayers": 4,
    }
    env = _env(bucket_env, "v2", MODELLOOP_PARENT_VERSION="v1", MODELLOOP_FEEDBACK_THROUGH=key)
    env[c.ENV_HYPERPARAMETERS] = json.dumps(hp)
    env["MODELLOOP_LAUNDRY_IMAGE_SIZE"] = "224"  # the policy's imageSize wins
    result = subprocess.run(
        [sys.executable, "-m", "modelloop_trainer", "train"], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = fetch_version(store, "laundry", "v2", tmp_path / "v2")
    assert manifest.parent_version == "v1" and manifest.training_parameters["optimizer"] == "sgd"
    assert manifest.preprocessing == {"imageSize": SIZE}, "the policy's imageSize, not the environment's 224"
    assert (manifest.feedback_snapshot.samples, manifest.feedback_snapshot.corrections) == (6, 3)
    metrics = json.loads((tmp_path / "v2" / METRICS_FILE).read_text())
    assert (metrics["feedbackSamples"], metrics["feedbackCorrections"], metrics["feedbackByReference"]) == (6, 3, 6)
    assert metrics["feedbackStoredInline"] == 1
    assert metrics["feedbackSkipped"] == {"inputKnownByDigestOnly": 1, "inlineInputNotStored": 1}
    assert metrics["trainSamples"] + metrics["validationSamples"] == 24 + 6
    assert set(metrics["perClassRecall"]) == set(metrics["perClassPrecision"]) == {"ok", "defect"}
    # frozenLayers 4: the stem and layer1..layer3 are the parent's, bit for bit; layer4 and the head trained.
    fetch_version(store, "laundry", "v1", tmp_path / "v1")
    parent, child = load_file(tmp_path / "v1" / WEIGHTS_FILE), load_file(tmp_path / "v2" / WEIGHTS_FILE)
    assert all(
        torch.equal(child[k], parent[k]) for k in parent if k.startswith(("conv1.", "bn1.", "layer1.", "layer3."))
    )
    assert not torch.equal(child["layer4.1.conv2.weight"], parent["layer4.1.conv2.weight"])


def test_an_object_missing_from_the_bucket_is_named(laundry: tuple[ObjectStore, dict[str, str]]) -> None:
    store, _ = laundry
    plugin = LaundryPlugin(image_size=SIZE)
    rows = b'{"ref": "images/000001.png", "label": "ok"}\n{"ref": "s3://%s/elsewhere/gone.png", "label": "defect"}\n'
    store.put_bytes("datasets/broken/train.jsonl", rows % store.bucket.encode())
    samples = plugin.load_samples(store, "datasets/broken", "train")
    data = IndexedDataset(plugin, samples, StoreSource(store.config, DATASET))
    assert data[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(
        DatasetError, match=re.escape(f"s3://{store.bucket}/elsewhere/gone.png is listed in the index but missing")
    ):
        data[1]
    with pytest.raises(DatasetError, match=re.escape("datasets/absent/holdout.jsonl is missing")):
        plugin.load_samples(store, "datasets/absent", "holdout")
