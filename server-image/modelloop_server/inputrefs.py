"""Inputs by reference: an encoded input (a photo, say) named as ``s3://bucket/key`` instead of sent inline.

The OIP adapter (``oip.py``) calls :meth:`InputRefs.fetch_all` for a BYTES input flagged
``"content_type": "reference"``, before anything is decoded; the fetched bytes then take exactly the
path inline BYTES take (the plug-in's ``decode_bytes``), so a reference and the same bytes sent
inline answer the same.

The server fetches with the credentials it already holds for its bucket (the serving Secret, which
may read the bucket and write ``<model>/feedback/`` only, and which the server needs to store
reviews anyway): going through the sidecar would copy every image over the control socket and
grant nothing less. What limits the reach is here, not in the credentials: only references under
the allowed prefixes (default ``s3://<bucket>/<model>/inputs/``; never other hosts, never a URL
scheme but ``s3://``) are fetched, so a caller cannot read the model's weights, the feedback or
another team's objects through the server.

Each fetch is bounded: the object's size is asked first (HEAD) and an object over the limit is
refused without reading it; the read itself asks for at most limit + 1 bytes; the whole request's
fetches share one deadline; and at most ``concurrency`` fetches run at once, on their own threads,
so a slow store delays the requests that use references and never the inference threads.

Every refusal is a :class:`RefError` whose message names the field (``inputs[0].data[2]``) and the
reference, with the status the on-call and the client can act on: 400 malformed, 403 outside the
allowed prefixes (or not readable with the server's credentials), 404 missing, 413 too big, 503
with ``Retry-After`` when the store is unreachable, slow or every fetch slot is taken.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import urllib3
from minio import Minio
from minio.error import S3Error

from modelloop.clients.objectstore import StoreConfig, tls_context

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

SCHEME = "s3://"
REFERENCE = "reference"  # the value of the ``content_type`` parameter that marks a BYTES input as references
RETRY_AFTER_SECONDS = 2
MAX_KEY_BYTES = 1024  # S3's own limit
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

MALFORMED = "malformed"
FORBIDDEN = "forbidden"
MISSING = "missing"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"
BUSY = "busy"
UNDECODABLE = "undecodable"
FAILURE_REASONS = (MALFORMED, FORBIDDEN, MISSING, TOO_LARGE, UNAVAILABLE, BUSY, UNDECODABLE)


@dataclass(frozen=True)
class ObjectRef:
    """An object (or, with a key ending in ``/`` or empty, a prefix) in a bucket."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def under(self, prefix: ObjectRef) -> bool:
        return self.bucket == prefix.bucket and self.key.startswith(prefix.key)


class RefError(Exception):
    """A reference refused or not fetched: the status, the metric's reason and the client's message."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}


def _split(text: str) -> tuple[str, str]:
    if not text.startswith(SCHEME):
        raise ValueError(f"must be {SCHEME}<bucket>/<key> (the only scheme served), got {text[:80]!r}")
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{bucket[:70]!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    if any(ord(ch) < 32 or ch in "\x7f\\" for ch in key):
        raise ValueError("the key contains control characters or a backslash")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"the key is over S3's {MAX_KEY_BYTES} bytes")
    segments = key.split("/")
    inner = segments[:-1] if key.endswith("/") else segments
    if key and any(s in ("", ".", "..") for s in inner):
        raise ValueError("the key has an empty, '.' or '..' path segment; give the object's plain key")
    return bucket, key


def parse_reference(text: str) -> ObjectRef:
    """``s3://bucket/key`` as an :class:`ObjectRef`, or ValueError saying what is wrong with it."""
    bucket, key = _split(text)
    if not key or key.endswith("/"):
        raise ValueError(f"{text[:120]!r} names no object (the key is empty or ends in '/')")
    return ObjectRef(bucket, key)


def parse_prefix(text: str) -> ObjectRef:
    """An allowlist entry: ``s3://bucket/`` (the whole bucket) or ``s3://bucket/some/prefix/``.

    The prefix must end in ``/``: ``inputs`` would also admit ``inputs-private/...``.
    """
    bucket, key = _split(text.strip())
    if key and not key.endswith("/"):
        raise ValueError(f"{text!r} must end in '/' (a folder), or 'inputs' would also admit 'inputs-private/'")
    return ObjectRef(bucket, key)


def parse_prefixes(raw: str) -> tuple[str, ...]:
    """A comma-separated allowlist, each entry checked; ``off`` allows nothing."""
    if raw.strip().lower() == "off":
        return ()
    entries = tuple(p.strip() for p in raw.split(",") if p.strip())
    for p in entries:
        parse_prefix(p)
    return entries


def default_prefixes(bucket: str, model: str) -> tuple[str, ...]:
    return (f"{SCHEME}{bucket}/{model}/inputs/",)


def check_reference(text: str, prefixes: Sequence[ObjectRef], field: str) -> ObjectRef:
    """The reference, if well-formed and under an allowed prefix; else a RefError naming ``field``."""
    try:
        ref = parse_reference(text)
    except ValueError as e:
        raise RefError(400, MALFORMED, f"{field}: {e}") from None
    if not any(ref.under(p) for p in prefixes):
        allowed = ", ".join(str(p) for p in prefixes) or "none (MODELLOOP_INPUT_REF_PREFIXES=off or no bucket)"
        raise RefError(
            403, FORBIDDEN, f"{field}: {ref} is outside the prefixes this server reads inputs from ({allowed}); "
            "upload the input there or send its bytes inline",
        )  # fmt: skip
    return ref


class Missing(Exception):
    pass


class Denied(Exception):
    pass


class Unavailable(Exception):
    pass


class ObjectReader(Protocol):
    """The two calls a fetch needs; S3Reader in the server, a fake in unit tests."""

    def size(self, ref: ObjectRef) -> int: ...

    def read(self, ref: ObjectRef, limit: int) -> bytes: ...


class S3Reader:
    """Reads objects with the server's credentials, with short timeouts and no retries: a client is waiting."""

    def __init__(self, config: StoreConfig, timeout: float, connections: int) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 2.0), read=timeout),
            maxsize=connections,
            retries=False,
            ssl_context=tls_context(config),
        )
        self.client = Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=http,
        )

    @staticmethod
    def _classify(e: Exception) -> Exception:
        if isinstance(e, S3Error):
            if e.code in _MISSING:
                return Missing(e.code)
            if e.code in _DENIED:
                return Denied(e.code)
            return Unavailable(f"{e.code}: {e.message}")
        return Unavailable(f"{type(e).__name__}: {e}")

    def size(self, ref: ObjectRef) -> int:
        try:
            return int(self.client.stat_object(ref.bucket, ref.key).size or 0)
        except (S3Error, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise self._classify(e) from e

    def read(self, ref: ObjectRef, limit: int) -> bytes:
        try:
            resp = self.client.get_object(ref.bucket, ref.key, offset=0, length=limit + 1)
        except (S3Error, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise self._classify(e) from e
        try:
            out = bytearray()
            for chunk in resp.stream(64 << 10):
                out += chunk
                if len(out) > limit:
                    break
            return bytes(out)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from e
        finally:
            resp.close()
            resp.release_conn()


@dataclass(frozen=True)
class RefLimits:
    max_bytes: int = 8 << 20
    timeout_seconds: float = 5.0
    concurrency: int = 8
    max_request_bytes: int = 64 << 20


class _Budget:
    """The bytes one request's references may add up to, claimed from the fetch threads as sizes are learnt."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.lock = threading.Lock()

    def claim(self, n: int) -> bool:
        with self.lock:
            self.left -= n
            return self.left >= 0


class InputRefs:
    """Checks and fetches the references of one request, within the limits; one per server."""

    def __init__(
        self, prefixes: Sequence[str], reader: ObjectReader | None, limits: RefLimits, metrics: ServerMetrics
    ) -> None:
        self.prefixes = tuple(parse_prefix(p) for p in prefixes) if reader is not None else ()
        self.reader = reader
        self.limits = limits
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="inputref")
        self.slots = asyncio.Semaphore(limits.concurrency)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def failed(self, reason: str) -> None:
        self.metrics.input_ref_failures.labels(reason).inc()

    async def fetch_all(self, texts: Sequence[str], where: str) -> list[bytes]:
        """The objects ``texts`` name, in order; every reference is checked before anything is fetched."""
        try:
            refs = [check_reference(t, self.prefixes, f"{where}.data[{i}]") for i, t in enumerate(texts)]
        except RefError as e:
            self.failed(e.reason)
            raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout_seconds
        budget = _Budget(self.limits.max_request_bytes)
        fetches = (self._fetch(r, f"{where}.data[{i}]", deadline, budget) for i, r in enumerate(refs))
        try:
            async with asyncio.timeout_at(deadline):
                return list(await asyncio.gather(*fetches))
        except TimeoutError:
            self.failed(UNAVAILABLE)
            raise RefError(
                503, UNAVAILABLE, f"{where}: fetching the referenced input(s) took over {self.limits.timeout_seconds:g}s "
                "(MODELLOOP_INPUT_REF_TIMEOUT_SECONDS); the object store is slow or unreachable, retry shortly",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None  # fmt: skip
        except RefError as e:
            self.failed(e.reason)
            raise

    async def _fetch(self, ref: ObjectRef, field: str, deadline: float, budget: _Budget) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                await self.slots.acquire()
        except TimeoutError:
            raise RefError(
                503, BUSY, f"{field}: all {self.limits.concurrency} reference fetches "
                "(MODELLOOP_INPUT_REF_CONCURRENCY) were busy until the deadline; retry shortly",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None  # fmt: skip
        fut = asyncio.get_running_loop().run_in_executor(self.pool, self._fetch_sync, ref, field, budget)
        fut.add_done_callback(self._done)
        return await asyncio.shield(fut)

    def _done(self, fut: asyncio.Future[bytes]) -> None:
        """The slot is held until the thread is done, even when the request gave up on it before."""
        self.slots.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: a fetch whose request already gave up is not logged as unhandled

    def _fetch_sync(self, ref: ObjectRef, field: str, budget: _Budget) -> bytes:
        assert self.reader is not None  # no reader: no prefixes, so nothing passes check_reference
        started = time.perf_counter()
        limit = self.limits.max_bytes
        self.metrics.input_ref_fetches.inc()
        try:
            size = self.reader.size(ref)
            if size > limit:
                raise RefError(413, TOO_LARGE, self._too_big(field, ref, f"{size:,} bytes"))
            if not budget.claim(size):
                raise RefError(
                    413, TOO_LARGE, f"{field}: with {ref} ({size:,} bytes) this request's references add up to over "
                    f"{self.limits.max_request_bytes:,} bytes (MODELLOOP_INPUT_REF_MAX_REQUEST_BYTES); split the batch",
                )  # fmt: skip
            data = self.reader.read(ref, limit) if size else b""
            if len(data) > limit:
                raise RefError(413, TOO_LARGE, self._too_big(field, ref, "over the limit (it grew after the check)"))
        except Missing:
            raise RefError(
                404, MISSING, f"{field}: no object at {ref} (bucket {ref.bucket!r}, key {ref.key!r})"
            ) from None
        except Denied as e:
            log.warning("the server's credentials may not read %s (%s): grant read on the allowed prefixes", ref, e)
            raise RefError(
                403, FORBIDDEN, f"{field}: the server's credentials may not read {ref} ({e}); ask the operator of "
                "this model to grant read access to it, or send the bytes inline",
            ) from None  # fmt: skip
        except Unavailable as e:
            log.warning("cannot fetch input %s: %s", ref, e)
            raise RefError(
                503, UNAVAILABLE, f"{field}: the object store did not answer for {ref} ({e}); retry shortly",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None  # fmt: skip
        self.metrics.input_ref_bytes.inc(len(data))
        self.metrics.input_ref_seconds.observe(time.perf_counter() - started)
        return data

    def _too_big(self, field: str, ref: ObjectRef, what: str) -> str:
        return (
            f"{field}: {ref} is {what}; the limit for a referenced input is {self.limits.max_bytes:,} bytes "
            "(MODELLOOP_INPUT_REF_MAX_BYTES)"
        )
