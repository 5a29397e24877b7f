"""Loaded model versions and the one reference that says which of them answers.

Hot swap after the reference design: the new version is loaded beside the serving one, warmed up,
and only then published by rebinding a single attribute (atomic in Python). A request reads that
attribute once and keeps the object for its whole life, so a request in flight during a swap
finishes on the version it started with. The version it replaced stays in memory as
``previous``: rolling back to it needs no download, no load and no warm-up.

A candidate may be loaded as ``shadow`` (see :mod:`modelloop_server.shadow`): it answers nobody,
it scores the same inputs off the response path. Promoting it is the same atomic rebinding, with
no second load: the shadow object itself becomes ``current``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from modelloop.api.artifacts import WEIGHTS_FILE, ArtifactError, ManifestFile, check_version
from modelloop_trainer.inference import FORWARD_GATE
from modelloop_trainer.plugin import ModelPlugin

from .memory import MemoryCheck, size
from .modeldir import read_local_manifest, verify_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    digest: str
    path: Path
    network: nn.Module = field(repr=False)
    load_seconds: float = 0.0
    plugin: ModelPlugin | None = field(default=None, repr=False, compare=False)
    """The plug-in as it preprocesses for this version (its manifest's ``preprocessing``): requests this
    version answers are decoded with it. None only for models built outside :func:`load_version` (tests)."""

    @property
    def resident_bytes(self) -> int:
        """Bytes of the network's tensors (each storage once; memory-mapped weights count in full)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self._tensors()}
        return sum(storages.values())

    def _tensors(self) -> list[Tensor]:
        return [*self.network.parameters(), *self.network.buffers()]

    def probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities ``[N, num_classes]``; runs in a worker thread (torch releases the GIL).

        Through the forward gate: another version may be loading beside this one (see
        :data:`modelloop_trainer.inference.FORWARD_GATE`)."""
        with FORWARD_GATE.forward(), torch.inference_mode():
            return torch.softmax(self.network(x).float(), dim=1)


def load_version(plugin: ModelPlugin, version: str, path: Path, warmup_passes: int = 3) -> LoadedModel:
    """Build the plug-in's network from a local version directory and warm it up.

    The weights are re-checked against the manifest first (the disk copy is only as good as the
    last time someone looked) and read with safetensors, never unpickled. Warm-up runs real
    forward passes so the first user request does not pay for lazy initialisation, and proves the
    network produces ``num_classes`` finite outputs before it is allowed to answer anyone.
    """
    check_version(version)
    started = time.perf_counter()
    manifest, digest = verify_local(path, only={WEIGHTS_FILE})
    if manifest.version != version:
        raise ArtifactError(f"{path}/manifest.json describes {manifest.version}, not {version}")
    if not any(f.path == WEIGHTS_FILE for f in manifest.files):
        raise ArtifactError(f"{path}/manifest.json lists no {WEIGHTS_FILE}; this version has no weights")
    try:
        plugin = plugin.for_preprocessing(manifest.preprocessing)
    except ValueError as e:
        raise ArtifactError(
            f"{path}/manifest.json: cannot preprocess inputs for {version} as it was trained: {e}"
        ) from e
    if plugin.preprocessing():
        log.info("%s preprocesses inputs with %s, from its manifest", version, plugin.preprocessing())
    weights_path = path / WEIGHTS_FILE
    try:
        weights = load_file(weights_path)
    except (SafetensorError, ValueError, OSError) as e:
        raise ArtifactError(f"{weights_path} is not a valid safetensors file ({e})") from e
    try:
        network = _network_for(plugin, weights)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:2])
        raise ArtifactError(f"{weights_path}: the weights do not fit plug-in {type(plugin).__name__}: {first}") from e
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    optimised = plugin.for_inference(network)
    network = optimised.network
    if optimised.steps:
        log.info(
            "%s runs with %s (probabilities within %.1g of the network as built)",
            version, ", ".join(optimised.steps), optimised.max_difference,
        )  # fmt: skip
    model = LoadedModel(version=version, digest=digest, path=path, network=network, plugin=plugin)
    for n in range(max(1, warmup_passes)):
        batch = torch.zeros((1 + n * 7, *plugin.input_shape), dtype=torch.float32)
        out = model.probabilities(batch)
        if tuple(out.shape) != (batch.shape[0], plugin.num_classes) or not torch.isfinite(out).all():
            raise ArtifactError(
                f"{weights_path}: warm-up produced output of shape {tuple(out.shape)} (finite: "
                f"{bool(torch.isfinite(out).all())}), expected ({batch.shape[0]}, {plugin.num_classes}) finite values"
            )
    return LoadedModel(
        version=version,
        digest=digest,
        path=path,
        network=network,
        load_seconds=time.perf_counter() - started,
        plugin=plugin,
    )


def _network_for(plugin: ModelPlugin, weights: dict[str, Tensor]) -> nn.Module:
    """The plug-in's network holding ``weights``, without first initialising what they replace.

    Random initialisation of a large network costs more than reading its weights (for a 50 MB
    model, most of a promotion once the version is on disk), so the network is built on the meta
    device and adopts the loaded tensors. A plug-in this does not fit (weights of another dtype, a
    buffer the file does not carry, a build that needs real tensors) gets the ordinary build.
    """
    try:
        with torch.device("meta"):
            network = plugin.build()
        expected = network.state_dict()
        if expected.keys() == weights.keys() and all(weights[k].dtype == t.dtype for k, t in expected.items()):
            network.load_state_dict(weights, strict=True, assign=True)
            if not any(t.is_meta for t in (*network.parameters(), *network.buffers())):
                return network
    except Exception as e:  # noqa: BLE001 — any surprise here only costs the faster path
        log.debug("building %s on the meta device failed (%s); building it normally", type(plugin).__name__, e)
    network = plugin.build()
    network.load_state_dict(weights, strict=True)
    return network


@dataclass(frozen=True)
class SwapResult:
    model: LoadedModel
    replaced: LoadedModel | None
    swap_seconds: float
    from_memory: bool
    from_shadow: bool = False


@dataclass(frozen=True)
class ShadowResult:
    model: LoadedModel
    replaced: LoadedModel | None
    from_memory: bool


class ModelHolder:
    """``current`` answers requests; ``previous`` waits for an instant rollback.

    Loads are serialised (two sidecar calls racing must not leave ``previous`` pointing at a model
    that was never served); reads take no lock at all.
    """

    def __init__(self, plugin: ModelPlugin, warmup_passes: int = 3, memory: MemoryCheck | None = None) -> None:
        self.plugin = plugin
        self.warmup_passes = warmup_passes
        self.memory = memory
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.shadow: LoadedModel | None = None
        self._load_lock = threading.Lock()

    def load(self, version: str, path: Path) -> SwapResult:
        """Make ``version`` (files at ``path``) the one that answers; raises ArtifactError and keeps the old one.

        A version that must be read from disk is first checked against the container's memory
        (``ModelTooLarge``, nothing loaded); a rollback to the kept previous model needs no memory.
        """
        with self._load_lock:
            cur, prev = self.current, self.previous
            manifest, digest = read_local_manifest(path)
            shadow = self.shadow
            if cur is not None and (cur.version, cur.digest) == (version, digest):
                return SwapResult(cur, None, 0.0, True)
            from_shadow = shadow is not None and (shadow.version, shadow.digest) == (version, digest)
            if shadow is not None and from_shadow:
                new, from_memory = shadow, True
            elif prev is not None and (prev.version, prev.digest) == (version, digest):
                new, from_memory = prev, True
            else:
                self._admit(version, manifest.files, _held(cur, prev, shadow))
                new, from_memory = load_version(self.plugin, version, path, self.warmup_passes), False
            started = time.perf_counter()
            self.current = new
            swap_seconds = time.perf_counter() - started
            if from_shadow:
                self.shadow = None
            self.previous = cur
            return SwapResult(new, cur, swap_seconds, from_memory, from_shadow)

    def load_shadow(self, version: str, path: Path) -> ShadowResult:
        """Load ``version`` beside the serving model to score in the shadow; answers nobody.

        Verified like any load (manifest, weights, warm-up) and admitted against the memory limit
        with everything else resident. The kept previous model is reused when it is the one asked for.
        """
        with self._load_lock:
            cur, prev, old = self.current, self.previous, self.shadow
            manifest, digest = read_local_manifest(path)
            if cur is not None and (cur.version, cur.digest) == (version, digest):
                raise ArtifactError(f"{version} ({digest}) is the serving version; it cannot also be its own shadow")
            if old is not None and (old.version, old.digest) == (version, digest):
                return ShadowResult(old, None, True)
            if prev is not None and (prev.version, prev.digest) == (version, digest):
                new, from_memory = prev, True
            else:
                self._admit(version, manifest.files, _held(cur, prev, old))
                new, from_memory = load_version(self.plugin, version, path, self.warmup_passes), False
            self.shadow = new
            return ShadowResult(new, old, from_memory)

    def unload_shadow(self) -> LoadedModel | None:
        """Stop shadow scoring; the model is freed once the requests queued for it are scored."""
        with self._load_lock:
            old, self.shadow = self.shadow, None
            return old

    def _admit(self, version: str, files: Sequence[ManifestFile], held: str) -> None:
        if self.memory is None:
            return
        weights = [f.size for f in files if f.path == WEIGHTS_FILE]
        if weights:  # none: load_version refuses the version with a clearer message
            self.memory.admit(version, weights[0], held)


def _held(cur: LoadedModel | None, prev: LoadedModel | None, shadow: LoadedModel | None = None) -> str:
    """What stays resident while a new version loads: serving, kept for rollback, and the shadow."""
    parts = []
    if cur is not None:
        parts.append(f"{cur.version} serving ({size(cur.resident_bytes)})")
    if prev is not None:
        parts.append(f"{prev.version} kept for rollback ({size(prev.resident_bytes)})")
    if shadow is not None:
        parts.append(f"{shadow.version} in shadow ({size(shadow.resident_bytes)})")
    return "with " + ", ".join(parts) + " resident" if parts else ""
