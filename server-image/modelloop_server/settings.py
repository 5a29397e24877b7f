"""Configuration of the server and the sidecar, read from the environment once, at start-up.

Nothing here runs at import time: ``main()`` builds the settings object and hands it down, so
tests construct settings directly and a bad value fails start-up with a message naming the
variable instead of a traceback in the middle of serving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelloop.api import constants as c
from modelloop.api.artifacts import check_model_name

from .control import DEFAULT_SOCKET_NAME, REVIEW_AUTH_SOCKET_NAME
from .inputrefs import default_prefixes, parse_prefixes
from .memory import DEFAULT_CGROUP_ROOT, DEFAULT_OVERHEAD_FACTOR, DEFAULT_RESERVE_BYTES

ENV_MODEL_DIR = "MODELLOOP_MODEL_DIR"
ENV_BIND_HOST = "MODELLOOP_BIND_HOST"
ENV_PORT = "MODELLOOP_PORT"
ENV_POLICY = "MODELLOOP_POLICY"
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_CGROUP_ROOT = "MODELLOOP_CGROUP_ROOT"
ENV_MEMORY_OVERHEAD_FACTOR = "MODELLOOP_MEMORY_OVERHEAD_FACTOR"
ENV_MEMORY_RESERVE_BYTES = "MODELLOOP_MEMORY_RESERVE_BYTES"
ENV_CONTROL_SOCKET = "MODELLOOP_CONTROL_SOCKET"
ENV_REVIEW_AUTH = "MODELLOOP_REVIEW_AUTH"
ENV_REVIEW_AUTH_SOCKET = "MODELLOOP_REVIEW_AUTH_SOCKET"
ENV_REVIEWER_TOKENS_DIR = "MODELLOOP_REVIEWER_TOKENS_DIR"
# The operator's public key (PEM), mounted from the ConfigMap/Secret the policy's
# spec.serving.signature.publicKey names; when set, every version must carry a valid model.sig.
ENV_SIGNING_PUBLIC_KEY = "MODELLOOP_SIGNING_PUBLIC_KEY"
ENV_FEEDBACK_SPOOL_DIR = "MODELLOOP_FEEDBACK_SPOOL_DIR"
ENV_FEEDBACK_DURABILITY = "MODELLOOP_FEEDBACK_DURABILITY"
ENV_FEEDBACK_COMMIT_WINDOW = "MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS"
WRITE_THROUGH = "write-through"
SPOOL = "spool"
MAX_COMMIT_WINDOW_SECONDS = 1.0
ENV_RECEIPT_SPOOL_DIR = "MODELLOOP_RECEIPT_SPOOL_DIR"
ENV_RECEIPT_MAX_AGE_HOURS = "MODELLOOP_RECEIPT_MAX_AGE_HOURS"
ENV_INPUT_REF_PREFIXES = "MODELLOOP_INPUT_REF_PREFIXES"
DEFAULT_MAX_JSON_DEPTH = 32
DEFAULT_SPOOL_DIR_NAME = ".feedback-spool"
DEFAULT_RECEIPT_SPOOL_DIR_NAME = ".receipt-spool"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise SettingsError(f"{name}={value} must be positive")
    return value


def _factor(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value < 1:
        raise SettingsError(f"{name}={value} must be at least 1 (a model takes at least the size of its weights)")
    return value


def _durability(env: Mapping[str, str]) -> str:
    raw = env.get(ENV_FEEDBACK_DURABILITY, "") or WRITE_THROUGH
    if raw not in (WRITE_THROUGH, SPOOL):
        raise SettingsError(
            f"{ENV_FEEDBACK_DURABILITY}={raw!r} must be '{WRITE_THROUGH}' (the default: a review is answered once it is"
            f" in the bucket) or '{SPOOL}' (answered once fsynced to {ENV_FEEDBACK_SPOOL_DIR}: put that on a volume"
            " that outlives the Pod)"
        )
    return raw


def _commit_window(env: Mapping[str, str]) -> float:
    raw = env.get(ENV_FEEDBACK_COMMIT_WINDOW, "")
    if not raw:
        return 0.01
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{ENV_FEEDBACK_COMMIT_WINDOW}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_COMMIT_WINDOW_SECONDS:
        raise SettingsError(
            f"{ENV_FEEDBACK_COMMIT_WINDOW}={value} must be between 0 and {MAX_COMMIT_WINDOW_SECONDS:g}: every review"
            " waits up to this long for others to share its upload"
        )
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _ref_prefixes(env: Mapping[str, str], model: str) -> tuple[str, ...]:
    """Where inputs sent by reference may be read from; default ``s3://<bucket>/<model>/inputs/``."""
    raw = env.get(ENV_INPUT_REF_PREFIXES, "")
    if not raw:
        bucket = env.get(c.ENV_BUCKET, "")
        return default_prefixes(bucket, model) if bucket else ()
    try:
        return parse_prefixes(raw)
    except ValueError as e:
        raise SettingsError(
            f"{ENV_INPUT_REF_PREFIXES}: {e} (give comma-separated s3://<bucket>/<prefix>/ entries, or 'off')"
        ) from None


def _model(env: Mapping[str, str]) -> str:
    try:
        return check_model_name(_required(env, c.ENV_MODEL))
    except ValueError as e:
        raise SettingsError(f"{c.ENV_MODEL}: {e}") from None


def _control_socket(env: Mapping[str, str], model_dir: Path) -> Path:
    """Where the server listens for the sidecar: a path both containers see, by default in the shared model dir."""
    raw = env.get(ENV_CONTROL_SOCKET, "")
    path = Path(raw) if raw else model_dir / DEFAULT_SOCKET_NAME
    if not path.is_absolute():
        raise SettingsError(
            f"{ENV_CONTROL_SOCKET}={raw!r} must be an absolute path (a file on a volume shared with the sidecar)"
        )
    return path


def _review_socket(env: Mapping[str, str], model_dir: Path) -> Path:
    raw = env.get(ENV_REVIEW_AUTH_SOCKET, "")
    path = Path(raw) if raw else model_dir / REVIEW_AUTH_SOCKET_NAME
    if not path.is_absolute():
        raise SettingsError(
            f"{ENV_REVIEW_AUTH_SOCKET}={raw!r} must be an absolute path on a volume shared by both containers"
        )
    return path


def _review_mode(env: Mapping[str, str]) -> str:
    raw = env.get(ENV_REVIEW_AUTH, "") or "sidecar"
    if raw not in ("sidecar", "off"):
        raise SettingsError(
            f"{ENV_REVIEW_AUTH}={raw!r} must be 'sidecar' (the default: reviews need a bearer token) or 'off'"
        )
    return raw


@dataclass(frozen=True)
class ServerSettings:
    model: str
    plugin: str
    model_dir: Path
    bind_host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 1 << 20
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH  # arrays/objects nested deeper are refused before parsing
    max_batch: int = 256
    max_queued_rows: int = 4096  # rows waiting for an inference thread; beyond it predict answers 429
    inference_threads: int = 0  # 0: one per CPU of the container's quota (cgroup cpu.max)
    inference_batch_rows: int = 256  # rows one forward pass may take from queued requests; 1: no coalescing
    warmup_passes: int = 3
    feedback_durability: str = WRITE_THROUGH  # or SPOOL: what a review's 2xx waits for
    feedback_commit_window_seconds: float = 0.01  # write-through: how long a group waits for more reviews
    feedback_commit_records: int = 1000  # write-through: at most this many reviews in one PUT
    feedback_commit_timeout_seconds: float = 10.0  # write-through: unconfirmed by then, the review gets 503
    feedback_batch_records: int = 100
    feedback_flush_seconds: float = 5.0
    feedback_max_backlog: int = 100_000
    feedback_max_spool_bytes: int = 256 << 20  # accepted, not yet stored reviews; beyond it feedback answers 503
    feedback_spool_dir: Path | None = None  # None: <model_dir>/.feedback-spool (lost with the Pod's emptyDir)
    receipt_batch_records: int = 500
    receipt_flush_seconds: float = 5.0  # a review of a generated id reaching another replica waits at most this long
    receipt_max_backlog: int = 200_000  # receipts not yet stored; beyond it new receipts stay in memory only
    receipt_max_spool_bytes: int = 256 << 20
    receipt_spool_dir: Path | None = None  # None: <model_dir>/.receipt-spool
    receipt_index_size: int = 100_000  # receipts held in memory for the join, newest first
    receipt_cache_batches: int = 32  # receipt batches fetched from the bucket, kept for further joins
    receipt_max_age_hours: float = 168.0  # reviews of older generated ids are refused
    receipt_inline_values: int = 4096  # inputs with more values are kept by SHA-256 and size only
    receipt_search_minutes: float = 60.0  # client-supplied ids: how far back another replica searches
    receipt_search_batches: int = 20  # ... and at most how many batches it reads
    control_socket: Path | None = None  # None: <model_dir>/.control.sock
    review_auth: str = "sidecar"  # reviews need a bearer token the sidecar accepts; "off": anyone may review
    review_socket: Path | None = None  # None: <model_dir>/.review-auth.sock
    review_rate_per_minute: float = 1200.0  # per reviewer, sustained
    review_burst: int = 200  # per reviewer, at once
    keep_versions: int = 3
    cgroup_root: Path = DEFAULT_CGROUP_ROOT  # where the container's memory limit is read; tests point it at a fake
    memory_overhead_factor: float = DEFAULT_OVERHEAD_FACTOR  # load estimate: weights file size x this + reserve
    memory_reserve_bytes: int = DEFAULT_RESERVE_BYTES
    shadow_queue_rows: int = 256  # input rows waiting for the shadow model; beyond it shadow work is dropped (0: off)
    shadow_pairs_kept: int = 10_000  # (active, candidate) prediction pairs kept in memory by request id
    shadow_batch_rows: int = 64  # rows one shadow forward pass may take from the queue
    input_ref_prefixes: tuple[str, ...] = ()  # s3://bucket/prefix/ an input may be referenced under; (): none
    input_ref_max_bytes: int = 8 << 20  # a larger referenced object is refused (413) before it is read
    input_ref_timeout_seconds: float = 5.0  # all references of one request, HEAD and read; then 503
    input_ref_max_request_bytes: int = 64 << 20  # all references of one request together; beyond it 413
    input_ref_concurrency: int = 8  # fetches at once, on their own threads; a request waits until its deadline
    inline_input_max_backlog_bytes: int = 64 << 20  # inline inputs waiting to be stored; beyond it not stored (0: off)

    @property
    def spool_dir(self) -> Path:
        return self.feedback_spool_dir or self.model_dir / DEFAULT_SPOOL_DIR_NAME

    @property
    def receipts_spool(self) -> Path:
        return self.receipt_spool_dir or self.model_dir / DEFAULT_RECEIPT_SPOOL_DIR_NAME

    @property
    def control_path(self) -> Path:
        return self.control_socket or self.model_dir / DEFAULT_SOCKET_NAME

    @property
    def review_path(self) -> Path:
        return self.review_socket or self.model_dir / REVIEW_AUTH_SOCKET_NAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSettings:
        e = os.environ if env is None else env
        model_dir = Path(_required(e, ENV_MODEL_DIR))
        spool = e.get(ENV_FEEDBACK_SPOOL_DIR, "")
        receipt_spool = e.get(ENV_RECEIPT_SPOOL_DIR, "")
        model = _model(e)
        return cls(
            model=model,
            plugin=e.get(c.ENV_PLUGIN) or c.DEFAULT_PLUGIN,
            model_dir=model_dir,
            bind_host=e.get(ENV_BIND_HOST) or "0.0.0.0",
            port=_int(e, ENV_PORT, 8080, 1),
            max_body_bytes=_int(e, "MODELLOOP_MAX_BODY_BYTES", 1 << 20, 64),
            max_json_depth=_int(e, "MODELLOOP_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH, 2),
            max_batch=_int(e, "MODELLOOP_MAX_BATCH", 256, 1),
            max_queued_rows=_int(e, "MODELLOOP_MAX_QUEUED_ROWS", 4096, 1),
            inference_threads=_int(e, "MODELLOOP_INFERENCE_THREADS", 0),
            inference_batch_rows=_int(e, "MODELLOOP_INFERENCE_BATCH_ROWS", 256, 1),
            feedback_durability=_durability(e),
            feedback_commit_window_seconds=_commit_window(e),
            feedback_commit_records=_int(e, "MODELLOOP_FEEDBACK_COMMIT_RECORDS", 1000, 1),
            feedback_commit_timeout_seconds=_float(e, "MODELLOOP_FEEDBACK_COMMIT_TIMEOUT_SECONDS", 10.0),
            feedback_batch_records=_int(e, "MODELLOOP_FEEDBACK_BATCH", 100, 1),
            feedback_flush_seconds=_float(e, "MODELLOOP_FEEDBACK_FLUSH_SECONDS", 5.0),
            feedback_max_backlog=_int(e, "MODELLOOP_FEEDBACK_MAX_BACKLOG", 100_000, 1),
            feedback_max_spool_bytes=_int(e, "MODELLOOP_FEEDBACK_MAX_SPOOL_BYTES", 256 << 20, 64 << 10),
            feedback_spool_dir=Path(spool) if spool else None,
            receipt_batch_records=_int(e, "MODELLOOP_RECEIPT_BATCH", 500, 1),
            receipt_flush_seconds=_float(e, "MODELLOOP_RECEIPT_FLUSH_SECONDS", 5.0),
            receipt_max_backlog=_int(e, "MODELLOOP_RECEIPT_MAX_BACKLOG", 200_000, 1),
            receipt_max_spool_bytes=_int(e, "MODELLOOP_RECEIPT_MAX_SPOOL_BYTES", 256 << 20, 64 << 10),
            receipt_spool_dir=Path(receipt_spool) if receipt_spool else None,
            receipt_index_size=_int(e, "MODELLOOP_RECEIPT_INDEX_SIZE", 100_000, 1),
            receipt_cache_batches=_int(e, "MODELLOOP_RECEIPT_CACHE_BATCHES", 32, 1),
            receipt_max_age_hours=_float(e, ENV_RECEIPT_MAX_AGE_HOURS, 168.0),
            receipt_inline_values=_int(e, "MODELLOOP_RECEIPT_INLINE_VALUES", 4096, 0),
            receipt_search_minutes=_float(e, "MODELLOOP_RECEIPT_SEARCH_MINUTES", 60.0),
            receipt_search_batches=_int(e, "MODELLOOP_RECEIPT_SEARCH_BATCHES", 20, 0),
            control_socket=_control_socket(e, model_dir),
            review_auth=_review_mode(e),
            review_socket=_review_socket(e, model_dir),
            review_rate_per_minute=_float(e, "MODELLOOP_REVIEW_RATE_PER_MINUTE", 1200.0),
            review_burst=_int(e, "MODELLOOP_REVIEW_BURST", 200, 1),
            cgroup_root=Path(e.get(ENV_CGROUP_ROOT) or DEFAULT_CGROUP_ROOT),
            memory_overhead_factor=_factor(e, ENV_MEMORY_OVERHEAD_FACTOR, DEFAULT_OVERHEAD_FACTOR),
            memory_reserve_bytes=_int(e, ENV_MEMORY_RESERVE_BYTES, DEFAULT_RESERVE_BYTES),
            shadow_queue_rows=_int(e, "MODELLOOP_SHADOW_QUEUE_ROWS", 256),
            shadow_pairs_kept=_int(e, "MODELLOOP_SHADOW_PAIRS", 10_000, 1),
            shadow_batch_rows=_int(e, "MODELLOOP_SHADOW_BATCH_ROWS", 64, 1),
            input_ref_prefixes=_ref_prefixes(e, model),
            input_ref_max_bytes=_int(e, "MODELLOOP_INPUT_REF_MAX_BYTES", 8 << 20, 1),
            input_ref_timeout_seconds=_float(e, "MODELLOOP_INPUT_REF_TIMEOUT_SECONDS", 5.0),
            input_ref_max_request_bytes=_int(e, "MODELLOOP_INPUT_REF_MAX_REQUEST_BYTES", 64 << 20, 1),
            input_ref_concurrency=_int(e, "MODELLOOP_INPUT_REF_CONCURRENCY", 8, 1),
            inline_input_max_backlog_bytes=_int(e, "MODELLOOP_INLINE_INPUT_MAX_BACKLOG_BYTES", 64 << 20, 0),
        )


@dataclass(frozen=True)
class SidecarSettings:
    model: str
    policy: str
    namespace: str
    pod_name: str
    model_dir: Path
    control_socket: Path
    review_socket: Path | None = None  # None: <model_dir>/.review-auth.sock
    reviewer_tokens_dir: Path | None = None  # static reviewer tokens, one file per reviewer (a Secret volume)
    signing_public_key: Path | None = None
    keep_versions: int = 3
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SidecarSettings:
        e = os.environ if env is None else env
        model_dir = Path(_required(e, ENV_MODEL_DIR))
        return cls(
            model=_model(e),
            policy=_required(e, ENV_POLICY),
            namespace=_required(e, ENV_POD_NAMESPACE),
            pod_name=_required(e, ENV_POD_NAME),
            model_dir=model_dir,
            control_socket=_control_socket(e, model_dir),
            review_socket=_review_socket(e, model_dir),
            reviewer_tokens_dir=Path(e[ENV_REVIEWER_TOKENS_DIR]) if e.get(ENV_REVIEWER_TOKENS_DIR) else None,
            signing_public_key=Path(e[ENV_SIGNING_PUBLIC_KEY]) if e.get(ENV_SIGNING_PUBLIC_KEY) else None,
            keep_versions=_int(e, "MODELLOOP_KEEP_VERSIONS", 3, 2),
            retry_base_seconds=_float(e, "MODELLOOP_RETRY_BASE_SECONDS", 1.0),
            retry_max_seconds=_float(e, "MODELLOOP_RETRY_MAX_SECONDS", 60.0),
        )
