"""Synthetic model versions for the serving tests and benchmarks: no training run needed.

Each version is the plug-in's network with seeded random weights (so v1, v2, ... answer
differently), written complete with a manifest, either into a local model directory (as the
sidecar would leave it) or published to the bucket (as the trainer would).
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from modelloop.api.artifacts import MANIFEST_FILE, WEIGHTS_FILE, Manifest, ManifestFile, digest_of, sha256_stream
from modelloop.clients.artifactstore import publish_version
from modelloop.clients.objectstore import ObjectStore
from modelloop_trainer.plugin import ModelPlugin


def _manifest(model: str, version: str, plugin: str, preprocessing: dict[str, Any] | None = None) -> Manifest:
    return Manifest(
        model=model,
        version=version,
        created_at=datetime.now(UTC),
        files=[],
        plugin=plugin,
        framework={"torch": torch.__version__},
        training_parameters={"synthetic": True},
        preprocessing=preprocessing or {},
    )


def write_weights(plugin: ModelPlugin, seed: int, out_dir: Path) -> Path:
    torch.manual_seed(seed)
    net = plugin.build()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, path)
    return path


def write_local_version(
    plugin: ModelPlugin, plugin_ref: str, model_dir: Path, model: str, version: str, seed: int
) -> str:
    """``<model_dir>/<version>/`` with weights and manifest; returns the manifest digest."""
    out = model_dir / version
    weights = write_weights(plugin, seed, out)
    with weights.open("rb") as f:
        sha, size = sha256_stream(f)
    manifest = _manifest(model, version, plugin_ref, plugin.preprocessing())
    manifest.files = [ManifestFile(path=WEIGHTS_FILE, size=size, sha256=sha)]
    raw = manifest.to_bytes()
    (out / MANIFEST_FILE).write_bytes(raw)
    return digest_of(raw)


def publish_synthetic(
    store: ObjectStore, plugin: ModelPlugin, plugin_ref: str, model: str, version: str, seed: int
) -> str:
    """Publish a version to the bucket through the real artifact store; returns the manifest digest."""
    with tempfile.TemporaryDirectory(prefix=f"synthetic-{version}-") as tmp:
        write_weights(plugin, seed, Path(tmp))
        return publish_version(store, _manifest(model, version, plugin_ref, plugin.preprocessing()), Path(tmp))


def publish_weights(store: ObjectStore, weights: dict[str, Tensor], plugin_ref: str, model: str, version: str) -> str:
    """Publish given weights (a network the caller trained, well or badly) as a version; the manifest digest."""
    with tempfile.TemporaryDirectory(prefix=f"weights-{version}-") as tmp:
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, Path(tmp) / WEIGHTS_FILE)
        return publish_version(store, _manifest(model, version, plugin_ref), Path(tmp))
