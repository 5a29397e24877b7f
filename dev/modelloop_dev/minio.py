"""A real MinIO server on loopback, for tests and the demo: the S3 the artifacts really go through.

With ``tls`` it serves HTTPS only (``--certs-dir`` with ``public.crt``/``private.key``), signed by a
CA made for the run: what a store behind a private CA looks like to every client.
"""

from __future__ import annotations

import os
import secrets
import ssl
import time
from pathlib import Path
from types import TracebackType

from modelloop.api import constants as c
from modelloop.clients.objectstore import ObjectStore, StoreConfig
from modelloop_dev.pki import ServerCert
from modelloop_dev.processes import ManagedProcess, free_port, http_get, wait_for


class MinioServer:
    """One MinIO process with random root credentials and its data under ``workdir``.

    ``stop()`` then ``start()`` brings it back on the same port with the same data and credentials,
    which is what an object-store outage looks like to the clients.
    """

    def __init__(
        self, bin_dir: Path, workdir: Path, start_timeout: float = 60.0, tls: ServerCert | None = None
    ) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.ca_file: Path | None = None
        tls_args: list[str | Path] = []
        if tls is not None:
            certs = self.workdir / "certs"
            certs.mkdir(exist_ok=True)
            (certs / "public.crt").write_bytes(tls.crt)
            (certs / "private.key").write_bytes(tls.key)
            (certs / "private.key").chmod(0o600)
            self.ca_file = self.workdir / "ca.crt"
            self.ca_file.write_bytes(tls.ca)
            tls_args = [f"--certs-dir={certs}"]
        self.start_timeout = start_timeout
        self.port = free_port()
        self.console_port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.access_key = "dev-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.data_dir = self.workdir / "data"
        self.started_in: float | None = None
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        self.process = ManagedProcess(
            "minio",
            [
                bin_dir / "minio",
                "server",
                "--quiet",
                *tls_args,
                f"--address=127.0.0.1:{self.port}",
                f"--console-address=127.0.0.1:{self.console_port}",
                self.data_dir,
            ],
            self.workdir / "minio.log",
            env=env,
        )

    def start(self) -> MinioServer:
        t0 = time.monotonic()
        self.process.start()
        try:
            wait_for(self._ready, self.start_timeout, f"MinIO ready at {self.url}", self.process)
        except BaseException:
            self.process.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        self.process.stop()

    def alive(self) -> bool:
        return self.process.alive()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _ready(self) -> bool:
        context = ssl.create_default_context(cadata=self.tls.ca.decode()) if self.tls else None
        http_get(f"{self.url}/minio/health/ready", context=context)
        return True

    def config(self, bucket: str) -> StoreConfig:
        """A client configuration that trusts this server's CA when it serves TLS."""
        return StoreConfig(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            bucket=bucket,
            secure=self.tls is not None,
            ca_file=str(self.ca_file) if self.ca_file else None,
        )

    def store(self, bucket: str) -> ObjectStore:
        """A client for ``bucket``, creating the bucket if it is missing."""
        s = ObjectStore(self.config(bucket))
        s.ensure_bucket()
        return s

    def env(self, bucket: str) -> dict[str, str]:
        """The variables the operator, trainer, server and sidecar read the object store from."""
        return {
            c.ENV_S3_ENDPOINT: self.endpoint,
            c.ENV_S3_SECURE: "true" if self.tls else "false",
            c.ENV_ACCESS_KEY: self.access_key,
            c.ENV_SECRET_KEY: self.secret_key,
            c.ENV_BUCKET: bucket,
            **({c.ENV_S3_CA_FILE: str(self.ca_file)} if self.ca_file else {}),
        }

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
