"""The README's openssl lines make a certificate MinIO serves and a strict TLS client accepts.

The cluster tier runs the whole install on a real node (minutes); this runs only the lines that make
the CA and MinIO's certificate, as written, and serves them from a real MinIO here (seconds), so a
change to those lines that MinIO or Python's strict verification (``VERIFY_X509_STRICT``, the
default from Python 3.13: CA key usage, key identifiers) would refuse fails here first.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelloop_dev.minio import MinioServer
from modelloop_dev.pki import ServerCert
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
HOST = "minio.digits.svc"


def readme_certificate_lines() -> list[str]:
    """The install block's lines that make the CA and the certificate (not those that talk to a cluster)."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- install:begin[^>]*-->\s*```console\n(.*?)```", text, re.S)
    assert found, "README.md has no install block"
    lines = [ln for ln in found.group(1).splitlines() if ln.startswith(("TLS_DIR=", "openssl "))]
    assert len(lines) == 3, f"expected TLS_DIR=... and two openssl lines in the install block: {lines}"
    return lines


@pytest.fixture(scope="module")
def readme_cert(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    out = tmp_path_factory.mktemp("readme-tls")
    script = "\n".join(
        [*readme_certificate_lines(), f'cp "$TLS_DIR"/ca.crt "$TLS_DIR"/tls.crt "$TLS_DIR"/tls.key {out}/']
    )
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, capture_output=True, timeout=60)
    return ServerCert((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes(), (out / "ca.crt").read_bytes())


@pytest.fixture(scope="module")
def readme_minio(
    tools_bin: Path, tmp_path_factory: pytest.TempPathFactory, readme_cert: ServerCert
) -> Iterator[MinioServer]:
    server = MinioServer(tools_bin, tmp_path_factory.mktemp("minio-readme-tls"), tls=readme_cert)
    # Not start(): its probe asks for 127.0.0.1, a name the README's certificate (rightly) lacks.
    server.process.start()
    try:
        wait_for(
            lambda: get(server.port, strict(readme_cert.ca.decode()), HOST) == 200, 60, "MinIO ready", server.process
        )
        yield server
    finally:
        server.stop()


def strict(cadata: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=cadata)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def get(port: int, context: ssl.SSLContext, host: str) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET /minio/health/ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return int(tls.recv(64).split()[1])


def test_minio_serves_the_readme_certificate_to_a_strict_client(
    readme_minio: MinioServer, readme_cert: ServerCert
) -> None:
    port = readme_minio.port
    assert get(port, strict(readme_cert.ca.decode()), HOST) == 200
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"):
        get(port, strict(readme_cert.ca.decode()), "minio.other.svc")
    with pytest.raises(ssl.SSLCertVerificationError):
        get(port, strict(None), HOST)  # the system CAs do not know the README's CA
