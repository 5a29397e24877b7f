"""Signing and verifying a version's digests with the OpenSSF model-signing format (key-based, offline).

The operator signs with an elliptic-curve private key (PEM, from a Secret in its own namespace);
the reload sidecar verifies with the public key the policy names. Nothing is re-hashed here: the
caller passes the digests it already checked (see :mod:`modelloop.api.signing`), built into
model-signing's own manifest, so ``model_signing verify key`` accepts the same ``model.sig`` over a
downloaded copy of the version.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from model_signing import manifest as ms_manifest
from model_signing._hashing.hashing import Digest
from model_signing._signing import sign_ec_key, sign_sigstore_pb
from model_signing._signing.signing import Payload
from sigstore_models.bundle import v1 as bundle_pb

from modelloop.api.artifacts import MANIFEST_FILE, ArtifactError, digest_of, version_key
from modelloop.api.signing import SIGNATURE_FILE, signed_digests

from .artifactstore import read_manifest
from .objectstore import ObjectStore


class SignatureInvalid(ValueError):
    """The bundle is unreadable, was made with another key, or its signature does not verify."""


class SigningKeyError(ValueError):
    """The private or public key file is missing or is not a supported EC key (P-256/384/521, PEM)."""


def _manifest(name: str, digests: dict[str, str]) -> ms_manifest.Manifest:
    serialization = ms_manifest._FileSerialization("sha256", ignore_paths=[Path(SIGNATURE_FILE)])
    items = [
        ms_manifest.FileManifestItem(path=PurePosixPath(path), digest=Digest("sha256", bytes.fromhex(sha)))
        for path, sha in sorted(digests.items())
    ]
    return ms_manifest.Manifest(name, items, serialization)


def sign_digests(private_key: Path, name: str, digests: dict[str, str]) -> bytes:
    """The model-signing bundle (JSON bytes) over ``digests`` (path -> SHA-256 hex)."""
    try:
        signer = sign_ec_key.Signer(private_key)
    except (OSError, ValueError, TypeError) as e:
        raise SigningKeyError(f"signing key {private_key} is unusable: {e}") from None
    signature = signer.sign(Payload(_manifest(name, digests)))
    assert isinstance(signature, sign_sigstore_pb.Signature)
    return signature.bundle.to_json().encode()


def _read_bundle(data: bytes) -> sign_sigstore_pb.Signature:
    """Same parsing as model-signing's ``Signature.read``, from bytes rather than a path."""
    parsed = json.loads(data)
    material = parsed["verificationMaterial"]
    material.setdefault("tlogEntries", [])
    if "publicKey" in material:
        material["publicKey"].setdefault("hint", None)
        for k in ("rawBytes", "keyDetails"):
            material["publicKey"].pop(k, None)
    return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(parsed))


def verify_digests(public_key: Path, bundle: bytes) -> dict[str, str]:
    """path -> SHA-256 hex as signed; SignatureInvalid when the bundle does not verify with ``public_key``."""
    try:
        verifier = sign_ec_key.Verifier(public_key)
    except (OSError, ValueError, TypeError) as e:
        raise SigningKeyError(f"public key {public_key} is unusable: {e}") from None
    try:
        signature = _read_bundle(bundle)
    except Exception as e:  # noqa: BLE001 — any parse failure of untrusted bytes is the same verdict
        raise SignatureInvalid(f"{SIGNATURE_FILE} is not a model-signing bundle: {e}") from None
    try:
        signed = verifier.verify(signature)
    except InvalidSignature:
        raise SignatureInvalid(f"{SIGNATURE_FILE} does not verify with the policy's public key") from None
    except Exception as e:  # noqa: BLE001 — ValueError (key mismatch, bad payload) or malformed fields
        if "Key mismatch" in str(e):
            raise SignatureInvalid(
                f"{SIGNATURE_FILE} was signed with a different key than the policy's public key"
            ) from None
        raise SignatureInvalid(f"{SIGNATURE_FILE} does not verify: {e}") from None
    out: dict[str, str] = {}
    for rd in signed.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise SignatureInvalid(f"{SIGNATURE_FILE} signs {rd.identifier} with {rd.digest.algorithm}, not sha256")
        out[rd.identifier] = rd.digest.digest_hex
    return out


def sign_version(
    store: ObjectStore, private_key: Path, model: str, version: str, manifest_digest: str, verification: bytes
) -> str:
    """Sign the published version and upload ``model.sig``; returns the signature's digest.

    The manifest is read back and must still be the one verification checked (``manifest_digest``),
    and ``verification`` is the verification.json the gates were decided on: the signature then
    says "these bytes passed these gates".
    """
    manifest, digest = read_manifest(store, model, version)
    if digest != manifest_digest:
        raise ArtifactError(
            f"s3://{store.bucket}/{version_key(model, version, MANIFEST_FILE)} is now {digest}, not the verified "
            f"{manifest_digest}; the version was rewritten after verification, refusing to sign it"
        )
    bundle = sign_digests(
        private_key, f"{model}/{version}", signed_digests(manifest, manifest_digest, digest_of(verification))
    )
    store.put_bytes(version_key(model, version, SIGNATURE_FILE), bundle, "application/json")
    return digest_of(bundle)
