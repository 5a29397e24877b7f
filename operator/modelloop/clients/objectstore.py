"""S3-generic object store access (MinIO in tests and the demo, any S3 in production).

Everything that touches the bucket goes through :class:`ObjectStore`: uploads and downloads
stream in chunks (a 1 GB artifact never sits in memory) and transient failures (connection
refused, 5xx, throttling) are retried with exponential backoff, so a MinIO restart is a delay,
not a failed training run or a lost feedback batch.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.error import S3Error

from modelloop.api import constants as c

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 8 << 20
_TRANSIENT_S3 = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}


PRECONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")
"""S3 error codes of a conditional PUT whose condition did not hold (412), or lost a race for it (409)."""


class NotFound(KeyError):
    """The object does not exist (a fact, never retried)."""


@dataclass(frozen=True)
class StoreConfig:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    secure: bool = False
    region: str | None = None
    ca_file: str | None = None
    """A PEM bundle of the CAs to verify the endpoint with (a mounted ConfigMap); system CAs when None."""
    ca_data: str | None = None
    """The same, as text (the operator reads the ConfigMap instead of mounting it)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StoreConfig:
        """Credentials come from the environment, which Kubernetes fills from a Secret."""
        e = os.environ if env is None else env
        missing = [k for k in (c.ENV_S3_ENDPOINT, c.ENV_ACCESS_KEY, c.ENV_SECRET_KEY, c.ENV_BUCKET) if not e.get(k)]
        if missing:
            raise RuntimeError(f"object store not configured: set {', '.join(missing)}")
        secure = e.get(c.ENV_S3_SECURE, "false").lower() == "true"
        ca_file = e.get(c.ENV_S3_CA_FILE) or None
        if ca_file and not secure:
            raise RuntimeError(
                f"{c.ENV_S3_CA_FILE}={ca_file} is set but {c.ENV_S3_SECURE} is not true: a CA bundle is only"
                f" used over TLS; set {c.ENV_S3_SECURE}=true"
            )
        return cls(
            endpoint=e[c.ENV_S3_ENDPOINT],
            access_key=e[c.ENV_ACCESS_KEY],
            secret_key=e[c.ENV_SECRET_KEY],
            bucket=e[c.ENV_BUCKET],
            secure=secure,
            region=e.get(c.ENV_S3_REGION) or None,
            ca_file=ca_file,
        )


def tls_context(config: StoreConfig) -> ssl.SSLContext | None:
    """The verifying TLS context for ``config``: its CA bundle when it names one, else the system CAs.

    Built eagerly so that an unreadable or non-PEM bundle is an error at start-up naming the file,
    not a handshake failure on the first request. Verification is never turned off.
    """
    if not config.secure:
        return None
    if config.ca_file is None and config.ca_data is None:
        return ssl.create_default_context()
    where = config.ca_file or "the CA bundle"
    try:
        return ssl.create_default_context(cafile=config.ca_file, cadata=config.ca_data)
    except (ssl.SSLError, ValueError) as e:
        raise CABundleInvalid(f"{where} holds no usable PEM CA certificate ({e})") from e
    except OSError as e:
        raise CABundleInvalid(f"cannot read {where}: {e.strerror or e}") from e


class CABundleInvalid(ValueError):
    """The configured CA bundle cannot be used (missing file, not PEM): waiting does not fix it."""


def tls_failure(exc: BaseException) -> str | None:
    """Why the TLS handshake with the store failed, when that is what ``exc`` is; else None.

    The operator turns it into a condition and the sidecar into an Event: a wrong CA or a plain-HTTP
    endpoint reached over TLS fails the same way on every retry, so it must say so, not look like an
    outage.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate not trusted ({e.verify_message or e.reason})"
        if isinstance(e, ssl.SSLError):
            text = f"{e.reason or ''} {e}".upper()
            if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text or "PACKET_LENGTH_TOO_LONG" in text:
                return f"the endpoint does not answer in TLS, it may serve plain HTTP ({e.reason})"
            return f"TLS handshake failed ({e.reason or e})"
        reason = getattr(e, "reason", None)
        e = reason if isinstance(reason, BaseException) else (e.__cause__ or e.__context__)
    return None


# Local disk conditions that waiting does not heal: retrying only delays the refusal.
_LOCAL_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _transient(err: BaseException) -> bool:
    if tls_failure(err) is not None:
        return False  # the same certificate fails the same way on the next try
    if isinstance(err, S3Error):
        return err.code in _TRANSIENT_S3
    if isinstance(err, OSError) and err.errno in _LOCAL_PERMANENT_ERRNOS:
        return False
    return isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)) and not isinstance(
        err, (FileNotFoundError, IsADirectoryError, PermissionError)
    )


def check_resolvable(
    endpoint: str,
    timeout: float,
    getaddrinfo: Callable[[str, int], object] = lambda host, port: socket.getaddrinfo(host, port),
) -> None:
    """Raises :class:`socket.gaierror` unless ``endpoint``'s host resolves within ``timeout`` seconds.

    A resolver that answers slowly (a cluster DNS forwarding to an unreachable upstream, tried once
    per search domain) makes every S3 call wait for it, so a policy with a mistyped endpoint stayed
    without status for minutes; this bounds that wait. The lookup cannot be cancelled: it finishes
    in a daemon thread that nobody waits for.
    """
    host, _, port = endpoint.rpartition(":") if endpoint.rpartition(":")[2].isdigit() else (endpoint, "", "")
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            getaddrinfo(host, int(port or 443))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome.append(e)

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise socket.gaierror(f"{host} did not resolve within {timeout:.0f}s (DNS timed out)")
    if outcome[0] is not None:
        raise outcome[0]


class ObjectStore:
    def __init__(self, config: StoreConfig, attempts: int = 6, base_delay: float = 0.2, max_delay: float = 5.0):
        self.config = config
        self.bucket = config.bucket
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0), maxsize=16, retries=False, ssl_context=tls_context(config)
        )
        self.client = Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=http,
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kw: Any) -> ObjectStore:
        return cls(StoreConfig.from_env(env), **kw)

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                    raise NotFound(f"s3://{self.bucket}/{what}: {e.code}") from e
                if not _transient(e) or attempt == self.attempts:
                    raise
                err: BaseException = e
            except Exception as e:
                if not _transient(e) or attempt == self.attempts:
                    raise
                err = e
            log.warning(
                "object store: %s failed (%s), retry %d/%d in %.1fs", what, err, attempt, self.attempts - 1, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    def ensure_bucket(self) -> None:
        def go() -> None:
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as e:
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self.retry(self.bucket, go)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Upload small data in one PUT (atomic on S3); returns its SHA-256."""
        self.retry(
            key,
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type),
        )
        return hashlib.sha256(data).hexdigest()

    def put_new(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Upload ``data`` unless ``key`` already holds an object (``If-None-Match: *``): True when this call
        stored it, False when it was there already.

        For keys that name one immutable object (a feedback batch): an upload retried after a failure that
        the store had in fact completed (a timeout after the PUT landed, a server killed before it removed
        its spool file) does not rewrite the object, so its upload time does not move and nothing that
        tracks objects by upload time sees it twice. A store that ignores the header overwrites, as before.
        """
        return self.put_if(key, data, None, content_type) is not None

    def put_if(
        self, key: str, data: bytes, etag: str | None, content_type: str = "application/octet-stream"
    ) -> str | None:
        """Conditional PUT: ``etag`` None → only if ``key`` does not exist, else only if it still has that
        ETag. Returns the new ETag, or None when the condition failed (another writer got there first, the
        object was deleted since, or an earlier attempt of this same call landed; the caller reads the object
        to tell)."""
        condition = {"If-None-Match": "*"} if etag is None else {"If-Match": f'"{etag}"'}

        def go() -> str:
            # minio-py's put_object prefixes unknown headers as user metadata; the plain PutObject call does not.
            written = self.client._put_object(
                self.bucket, key, data, headers={"Content-Type": content_type, **condition}
            )
            return written.etag or ""

        try:
            return self.retry(key, go)
        except NotFound:  # If-Match on an object deleted since it was read (MinIO: NoSuchKey)
            return None
        except S3Error as e:
            if e.code in PRECONDITION_FAILED:
                return None
            raise

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag (for a later :meth:`put_if`); :class:`NotFound` when absent."""

        def go() -> tuple[bytes, str]:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read(), (resp.headers.get("etag") or "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

        return self.retry(key, go)

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode(), "application/json")

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> tuple[str, int]:
        """Stream a file up (multipart for large files); returns (sha256, size) of what was sent.

        The digest is computed from the bytes as they are handed to the client, in the same pass
        as the upload (a separate hashing pass cost a quarter of the upload throughput on 1 GB).
        """
        size = path.stat().st_size

        def go() -> tuple[str, int]:
            with path.open("rb") as f:
                reader = _HashingReader(f)
                stream = cast(BinaryIO, reader)
                self.client.put_object(self.bucket, key, stream, size, content_type=content_type, part_size=64 << 20)
            if reader.size != size:
                raise RuntimeError(f"{path} changed size while it was uploaded ({size} -> {reader.size} bytes)")
            return reader.sha256.hexdigest(), reader.size

        return self.retry(key, go)

    def get_bytes(self, key: str) -> bytes:
        def go() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self.retry(key, go)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def download(self, key: str, dest: Path) -> tuple[str, int]:
        """Stream an object to ``dest`` (via a temporary name), hashing as it goes."""
        tmp = dest.with_name(dest.name + ".part")

        def go() -> tuple[str, int]:
            h = hashlib.sha256()
            size = 0
            resp = self.client.get_object(self.bucket, key)
            try:
                with tmp.open("wb") as f:
                    for block in resp.stream(CHUNK):
                        h.update(block)
                        f.write(block)
                        size += len(block)
            finally:
                resp.close()
                resp.release_conn()
            return h.hexdigest(), size

        try:
            result = self.retry(key, go)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        return result

    def exists(self, key: str) -> bool:
        try:
            self.retry(key, lambda: self.client.stat_object(self.bucket, key))
            return True
        except NotFound:
            return False

    def list_keys(self, prefix: str, start_after: str | None = None, recursive: bool = True) -> Iterator[str]:
        """Keys under ``prefix`` in lexical order, strictly after ``start_after`` when given."""
        objs = self.retry(
            prefix,
            lambda: list(
                self.client.list_objects(
                    self.bucket, prefix=prefix, recursive=recursive, start_after=start_after or None
                )
            ),
        )
        for o in objs:
            if o.object_name is not None:
                yield o.object_name

    def list_objects(self, prefix: str, start_after: str | None = None) -> list[tuple[str, int, datetime]]:
        """(key, size, last modified by the store's clock) under ``prefix`` in key order, after ``start_after``."""
        objs = self.retry(
            prefix,
            lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True, start_after=start_after)),
        )
        return [
            (o.object_name, o.size or 0, o.last_modified)
            for o in objs
            if o.object_name is not None and o.last_modified is not None
        ]

    def remove_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""
        from minio.deleteobjects import DeleteObject

        keys = list(self.list_keys(prefix))
        if not keys:
            return 0
        errors = self.retry(
            prefix, lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
        )
        if errors:
            raise RuntimeError(f"could not delete {len(errors)} objects under {prefix}: {errors[0]}")
        return len(keys)


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that hashes what is read; the S3 client reads parts in order."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        data = self._f.read(-1 if n is None else n)
        self.sha256.update(data)
        self.size += len(data)
        return data
