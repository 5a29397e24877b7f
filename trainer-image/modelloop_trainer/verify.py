"""``modelloop-trainer verify``: measure a candidate version against the active one.

Run by the operator's verification Job after training. It only measures and records
(``verification.json``); the pass/fail decision is the operator's pure gate function. Both
versions are checked against their manifests before a byte of weights is parsed, and both are
evaluated on the same holdout split. The accuracy evaluation and the performance probe run
concurrently, as the requirements ask: the probe's latency is then measured under load, which is
the conservative direction for a gate.
"""

from __future__ import annotations

import logging
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from modelloop.api.artifacts import (
    METRICS_FILE,
    VERIFICATION_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    Verification,
    version_key,
)
from modelloop.clients.artifactstore import fetch_version, read_manifest
from modelloop.clients.objectstore import ObjectStore

from .config import JobConfig
from .metrics import Evaluation
from .plugin import ModelPlugin
from .report import TrainingMetrics
from .streaming import EpochSampler, IndexedDataset, Sample, StoreSource, StreamingPlugin, evaluate_stream, loader

log = logging.getLogger(__name__)

LATENCY_REQUESTS = 200
WARMUP_REQUESTS = 20
THROUGHPUT_BATCH = 32
THROUGHPUT_SECONDS = 1.0
PROBE_SAMPLES = 64  # holdout samples the probe sends as requests (encoded files for a decoding plug-in)
EVAL_BATCH = 256


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    digest: str
    net: nn.Module
    metrics: TrainingMetrics | None
    plugin: ModelPlugin  # as it preprocesses for this version (its manifest's preprocessing)


@dataclass(frozen=True)
class Probe:
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_rps: float
    peak_memory_mib: float


def load_version(
    store: ObjectStore, plugin: ModelPlugin, model: str, version: str, workdir: Path, device: torch.device
) -> LoadedVersion:
    """Fetch (SHA-256-checked against the manifest) and load a version; ArtifactError names any bad file."""
    _, digest = read_manifest(store, model, version)
    dest = workdir / version
    manifest = fetch_version(store, model, version, dest, expected_digest=digest, only={WEIGHTS_FILE, METRICS_FILE})
    where = f"s3://{store.bucket}/{model}/{version}"
    listed = {f.path for f in manifest.files}
    if WEIGHTS_FILE not in listed:
        raise ArtifactError(f"{where}/{WEIGHTS_FILE} is not listed in the manifest; the version has no weights")
    try:
        plugin = plugin.for_preprocessing(manifest.preprocessing)
    except ValueError as e:
        raise ArtifactError(f"{where}/manifest.json: cannot preprocess inputs as {version} was trained: {e}") from e
    try:
        weights = load_file(dest / WEIGHTS_FILE)
    except (SafetensorError, ValueError, OSError) as e:
        raise ArtifactError(f"{where}/{WEIGHTS_FILE} is not a valid safetensors file ({e}); refusing to load it") from e
    net = plugin.build()
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{where}/{WEIGHTS_FILE}: the weights do not fit the plug-in's network: {e}") from e
    metrics = None
    if METRICS_FILE in listed:
        try:
            metrics = TrainingMetrics.model_validate_json((dest / METRICS_FILE).read_bytes())
        except ValidationError as e:
            raise ArtifactError(f"{where}/{METRICS_FILE} is not valid training metrics: {e.errors()[0]['msg']}") from e
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedVersion(version, digest, plugin.for_inference(net).network, metrics, plugin)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def probe(plugin: ModelPlugin, net: nn.Module, requests: Sequence[Any], device: torch.device) -> Probe:
    """Single-request latency and batched throughput as the server sees them, its input path included.

    ``requests`` are what clients send: JSON-like lists of numbers, validated by ``preprocess``, or
    for a plug-in that decodes (an image model) the encoded files themselves, decoded by
    ``decode_bytes`` as the server decodes BYTES inputs. A slow decode or validation shows up
    here and not first in production.
    """
    encoded = bool(requests) and isinstance(requests[0], bytes)

    def answer(batch: Sequence[Any]) -> None:
        items = [plugin.decode_bytes(raw) for raw in batch] if encoded else batch
        with torch.inference_mode():
            out = net(plugin.preprocess(items).to(device))
            out.argmax(dim=1).cpu()

    for i in range(WARMUP_REQUESTS):
        answer([requests[i % len(requests)]])
    latencies = []
    for i in range(LATENCY_REQUESTS):
        t0 = time.perf_counter()
        answer([requests[i % len(requests)]])
        latencies.append((time.perf_counter() - t0) * 1000)
    served = 0
    batch = [requests[i % len(requests)] for i in range(THROUGHPUT_BATCH)]
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < THROUGHPUT_SECONDS:
        answer(batch)
        served += len(batch)
    return Probe(
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        throughput_rps=served / elapsed,
        peak_memory_mib=_peak_memory_mib(device),
    )


def verify(cfg: JobConfig, store: ObjectStore, plugin: ModelPlugin) -> Verification:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(cfg.hyperparameters.seed)
    with tempfile.TemporaryDirectory(prefix="modelloop-verify-") as tmp:
        workdir = Path(tmp)
        candidate = load_version(store, plugin, cfg.model, cfg.version, workdir, device)
        if candidate.metrics is None:
            raise ArtifactError(f"s3://{store.bucket}/{cfg.model}/{cfg.version}/{METRICS_FILE} is not in the manifest")
        baseline = None
        if cfg.active_version and cfg.active_version != cfg.version:
            baseline = load_version(store, plugin, cfg.model, cfg.active_version, workdir, device)
        samples: list[Sample] = []
        requests: list[Any]
        if isinstance(plugin, StreamingPlugin):
            samples = plugin.load_samples(store, cfg.dataset, "holdout")
            source = StoreSource(store.config, cfg.dataset)
            # The probe needs requests, not the whole holdout: a bounded sample of its encoded files.
            requests = [source.fetch(s.ref) for s in samples[:PROBE_SAMPLES]]
        else:
            holdout = plugin.load_split(store, cfg.dataset, "holdout")
            requests = [row.tolist() for row in holdout.x[:PROBE_SAMPLES]]

        def evaluate(v: LoadedVersion) -> Evaluation:
            if not isinstance(v.plugin, StreamingPlugin):
                return v.plugin.evaluate(v.net, holdout)
            # Each version sees the holdout decoded as it was trained (its image size), the baseline included.
            streamed = IndexedDataset(v.plugin, samples, source)
            sampler = EpochSampler(EVAL_BATCH)
            sampler.set(range(len(streamed)), 0)
            # No worker processes: forking beside the probe's running thread is unsafe; still streamed.
            return evaluate_stream(v.plugin, v.net, loader(streamed, sampler, workers=0), device)

        def accuracy() -> tuple[Evaluation, Evaluation | None]:
            cand = evaluate(candidate)
            base = evaluate(baseline) if baseline is not None else None
            return cand, base

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
            acc_future = pool.submit(accuracy)
            probe_future = pool.submit(probe, candidate.plugin, candidate.net, requests, device)
            cand_eval, base_eval = acc_future.result()
            perf = probe_future.result()

    result = Verification(
        model=cfg.model,
        version=cfg.version,
        manifest_digest=candidate.digest,
        baseline_version=baseline.version if baseline else None,
        holdout_samples=len(samples) if samples else len(holdout),
        validation_accuracy=candidate.metrics.validation_accuracy,
        holdout_accuracy=cand_eval.accuracy,
        baseline_holdout_accuracy=base_eval.accuracy if base_eval else None,
        per_class_accuracy=dict(zip(plugin.class_names, cand_eval.per_class_accuracy, strict=True)),
        per_class_precision=dict(zip(plugin.class_names, cand_eval.per_class_precision, strict=True)),
        per_class_recall=dict(zip(plugin.class_names, cand_eval.per_class_recall, strict=True)),
        macro_f1=cand_eval.macro_f1,
        latency_p50_ms=perf.latency_p50_ms,
        latency_p95_ms=perf.latency_p95_ms,
        peak_memory_mib=perf.peak_memory_mib,
        throughput_rps=perf.throughput_rps,
        device=str(device),
        measured_at=datetime.now(UTC),
    )
    store.put_bytes(
        version_key(cfg.model, cfg.version, VERIFICATION_FILE),
        result.model_dump_json(by_alias=True, indent=2).encode(),
        "application/json",
    )
    log.info(
        "verified %s/%s (%s): holdout accuracy %.4f vs %s %s, p95 %.1f ms, %.0f req/s, peak memory %.0f MiB",
        cfg.model,
        cfg.version,
        candidate.digest,
        cand_eval.accuracy,
        cfg.active_version or "no active version",
        f"{base_eval.accuracy:.4f}" if base_eval else "-",
        perf.latency_p95_ms,
        perf.throughput_rps,
        perf.peak_memory_mib,
    )
    return result
