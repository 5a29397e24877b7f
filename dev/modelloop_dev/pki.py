"""Certificates made for one run: the control plane's CA and clients, and MinIO's TLS (``MinioServer(tls=...)``).

Test and development code only: never shipped in an image.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_names or server_ips else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class ServerCert:
    """A serving certificate and its key, PEM, with the CA that signed it (what a client must trust)."""

    crt: bytes
    key: bytes
    ca: bytes


class TestCA:
    """A throwaway CA: ``server()`` issues serving certificates it signs; two instances never trust each other."""

    __test__ = False  # not a pytest class

    def __init__(self, common_name: str = "modelloop-test-ca") -> None:
        self._key = key()
        self._name = name(common_name)
        self.pem = cert(self._name, self._key, self._name, self._key, ca=True).public_bytes(serialization.Encoding.PEM)

    def server(self, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> ServerCert:
        k = key()
        crt = cert(name(names[0] if names else ips[0]), k, self._name, self._key, server_names=names, server_ips=ips)
        return ServerCert(crt.public_bytes(serialization.Encoding.PEM), pem_key(k), self.pem)

    def write(self, path: Path) -> Path:
        """The CA certificate as a PEM file (what a ConfigMap's ca.crt or MODELLOOP_S3_CA_FILE holds)."""
        path.write_bytes(self.pem)
        return path
