"""Where a model version's files live in the bucket and what its manifest promises.

Shared by the trainer (writes), the verifier and the reload sidecar (check), and the operator
(reads digests, prunes). A version exists only once ``manifest.json`` is present and every
file it lists matches its size and SHA-256; the manifest is always written last.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FORMAT_VERSION: Final = 1
WEIGHTS_FILE: Final = "model.safetensors"
METRICS_FILE: Final = "metrics.json"
CURVE_FILE: Final = "training-curve.png"
MANIFEST_FILE: Final = "manifest.json"
# Written by the verification Job after the manifest: an attestation about the manifest
# (it names the manifest digest it verified), so it is deliberately not listed in it.
VERIFICATION_FILE: Final = "verification.json"
# Training progress, rewritten every epoch; read by the operator (least privilege: the trainer
# needs no Kubernetes API access to report progress).
PROGRESS_FILE: Final = "progress.json"
CHECKPOINTS_DIR: Final = "checkpoints"
FEEDBACK_DIR: Final = "feedback"
RECEIPTS_DIR: Final = "receipts"
INLINE_INPUTS_DIR: Final = "inline-inputs"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VERSION = re.compile(r"^v[1-9][0-9]*$")


def check_model_name(model: str) -> str:
    """Model names become bucket prefixes: DNS labels only, so no path traversal."""
    if len(model) > 63 or not _NAME.match(model):
        raise ValueError(f"model name {model!r} is not a DNS label (a-z, 0-9, '-', max 63)")
    return model


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise ValueError(f"version {version!r} is not of the form v<N> (v1, v2, ...)")
    return version


def version_number(version: str) -> int:
    """v12 -> 12; versions sort by this number, never as strings."""
    return int(check_version(version)[1:])


def version_prefix(model: str, version: str) -> str:
    return f"{check_model_name(model)}/{check_version(version)}/"


def version_key(model: str, version: str, name: str) -> str:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"artifact file name {name!r} escapes the version prefix")
    return version_prefix(model, version) + str(rel)


def checkpoints_prefix(model: str, version: str) -> str:
    return version_prefix(model, version) + CHECKPOINTS_DIR + "/"


def feedback_prefix(model: str) -> str:
    return f"{check_model_name(model)}/{FEEDBACK_DIR}/"


def receipts_prefix(model: str) -> str:
    """Where the server stores what it answered (one receipt per prediction); reviews are joined to them."""
    return f"{check_model_name(model)}/{RECEIPTS_DIR}/"


def inline_inputs_prefix(model: str) -> str:
    """Where the server stores inputs sent inline (encoded images), so that reviews of them can be trained on."""
    return f"{check_model_name(model)}/{INLINE_INPUTS_DIR}/"


def inline_input_key(model: str, sha256: str) -> str:
    """Content-addressed by the input's SHA-256: the same bytes sent twice, or by two replicas, are one object."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"{sha256[:80]!r} is not a SHA-256 hex digest")
    return inline_inputs_prefix(model) + sha256


def artifact_uri(bucket: str, model: str, version: str) -> str:
    return f"s3://{bucket}/{version_prefix(model, version)}"


def parse_artifact_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/model/v3/ -> (bucket, "model/v3/")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"artifact URI {uri!r} does not start with s3://")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket or not prefix:
        raise ValueError(f"artifact URI {uri!r} has no bucket or prefix")
    return bucket, prefix if prefix.endswith("/") else prefix + "/"


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex digest, size) of a stream read to its end in chunks: never the whole file in memory."""
    h = hashlib.sha256()
    size = 0
    while block := stream.read(chunk):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def digest_of(data: bytes) -> str:
    """The manifest digest as shown in status: ``sha256:<hex>`` of the manifest's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


def check_relative_path(path: str) -> str:
    """A manifest path names a file under the version prefix, and every reader joins it onto a directory.

    So it must be relative, '/'-separated, with no empty, '.' or '..' segment (nothing that could
    reach outside the version's directory, or name the same file two ways), and no NUL or backslash.
    """
    if not path:
        raise ValueError("file path is empty")
    if "\x00" in path or "\\" in path:
        raise ValueError(f"file path {path!r} contains a NUL or a backslash")
    if path.startswith("/"):
        raise ValueError(f"file path {path!r} is absolute; manifest paths are relative to the version prefix")
    bad = [seg for seg in path.split("/") if seg in ("", ".", "..")]
    if bad:
        shown = "an empty segment" if "" in bad else f"a {bad[0]!r} segment"
        raise ValueError(f"file path {path!r} has {shown}; it could point outside the version's directory")
    return path


class ManifestFile(_Model):
    path: str = Field(
        description="Relative to the version prefix: '/'-separated, no empty, '.' or '..' segments, not absolute.",
        max_length=1024,
    )
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe_path(cls, v: str) -> str:
        return check_relative_path(v)


class FeedbackSnapshot(_Model):
    """Which feedback a training run used: every object under feedback/ up to ``through_key``."""

    through_key: str = Field(default="", alias="throughKey", description="Last feedback object included.")
    objects: int = Field(default=0, ge=0, description="Feedback objects (batches) included.")
    samples: int = Field(default=0, ge=0, description="Reviewed samples included.")
    corrections: int = Field(default=0, ge=0, description="Samples whose label differs from the prediction.")


class Manifest(_Model):
    format_version: int = Field(default=MANIFEST_FORMAT_VERSION, alias="formatVersion")
    model: str
    version: str
    parent_version: str | None = Field(default=None, alias="parentVersion")
    created_at: datetime = Field(alias="createdAt")
    files: list[ManifestFile]
    training_parameters: dict[str, Any] = Field(default_factory=dict, alias="trainingParameters")
    feedback_snapshot: FeedbackSnapshot = Field(default_factory=FeedbackSnapshot, alias="feedbackSnapshot")
    plugin: str = ""
    framework: dict[str, str] = Field(default_factory=dict, description="e.g. torch version")
    preprocessing: dict[str, Any] = Field(
        default_factory=dict,
        description="How the plug-in turned inputs into the network's as this version was trained (e.g. "
        "{'imageSize': 224}); the server preprocesses for this version the same way. Empty: the plug-in's defaults.",
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode()

    def file(self, path: str) -> ManifestFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(f"{path} is not listed in the manifest of {self.model}/{self.version}")


class ArtifactError(Exception):
    """An artifact is missing, corrupt or does not match its manifest. The message names the file."""


class ManifestInvalid(ArtifactError):
    """The manifest itself is unusable (not a manifest, or a file path that escapes the version).

    Raised only for bytes whose digest is what the caller expected, when it expected one: the same
    bytes will be just as invalid on every retry, so a reader refuses the version for good.
    """


def check_file(entry: ManifestFile, actual_sha256: str, actual_size: int, where: str) -> None:
    if actual_size != entry.size:
        raise ArtifactError(
            f"{where}/{entry.path}: size {actual_size} does not match the manifest's {entry.size}; "
            "the artifact is corrupt or was modified after training, refusing to load it"
        )
    if actual_sha256 != entry.sha256:
        raise ArtifactError(
            f"{where}/{entry.path}: SHA-256 {actual_sha256[:12]}… does not match the manifest's "
            f"{entry.sha256[:12]}…; the artifact is corrupt or was modified, refusing to load it"
        )


class Progress(_Model):
    """Written by the trainer to progress.json; the operator mirrors it into ModelVersion status."""

    epoch: int = Field(ge=0)
    epochs: int = Field(ge=1)
    loss: float | None = None
    validation_loss: float | None = Field(default=None, alias="validationLoss")
    validation_accuracy: float | None = Field(default=None, alias="validationAccuracy")
    resumed_from_epoch: int | None = Field(default=None, alias="resumedFromEpoch")
    updated_at: datetime = Field(alias="updatedAt")


class Verification(_Model):
    """verification.json: what the verification Job measured, for the operator's gate decision."""

    model: str
    version: str
    manifest_digest: str = Field(alias="manifestDigest")
    baseline_version: str | None = Field(default=None, alias="baselineVersion")
    holdout_samples: int = Field(alias="holdoutSamples")
    validation_accuracy: float | None = Field(default=None, alias="validationAccuracy")
    holdout_accuracy: float = Field(alias="holdoutAccuracy")
    baseline_holdout_accuracy: float | None = Field(default=None, alias="baselineHoldoutAccuracy")
    per_class_accuracy: dict[str, float] = Field(alias="perClassAccuracy")
    per_class_precision: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassPrecision",
        description="Holdout precision by class name; empty in records written before it was measured.",
    )
    per_class_recall: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassRecall",
        description="Holdout recall by class name; empty in records written before it was measured.",
    )
    macro_f1: float = Field(alias="macroF1")
    latency_p50_ms: float = Field(alias="latencyP50Ms")
    latency_p95_ms: float = Field(alias="latencyP95Ms")
    peak_memory_mib: float = Field(alias="peakMemoryMiB")
    throughput_rps: float = Field(alias="throughputRps")
    device: str = "cpu"
    measured_at: datetime = Field(alias="measuredAt")
