"""What the operator signs and how a reader compares it (pure), plus a sign/verify round trip of the bundle."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelloop.api.artifacts import Manifest, ManifestFile
from modelloop.api.signing import SignatureMismatch, compare_signed, signed_digests
from modelloop.clients.signing import SignatureInvalid, SigningKeyError, sign_digests, verify_digests
from modelloop.decide.signing import SignAction, decide_signing

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _manifest(*files: tuple[str, str]) -> Manifest:
    return Manifest(
        model="digits",
        version="v2",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        files=[ManifestFile(path=p, size=1, sha256=s) for p, s in files],
    )


@pytest.mark.parametrize(
    ("required", "configured", "error", "action", "reason"),
    [
        (False, False, None, SignAction.SKIP, "NotRequired"),
        (True, False, None, SignAction.WAIT, "SigningKeyMissing"),
        (False, True, None, SignAction.SIGN, "Signed"),
        (True, True, None, SignAction.SIGN, "Signed"),
        (True, True, "not an EC key", SignAction.WAIT, "SigningKeyInvalid"),
        (False, True, "not an EC key", SignAction.SKIP, "SigningKeyInvalid"),
    ],
)
def test_signing_decision(required: bool, configured: bool, error: str | None, action: SignAction, reason: str) -> None:
    d = decide_signing(required, configured, error)
    assert (d.action, d.reason) == (action, reason)
    if action == SignAction.WAIT:
        assert "signing.keySecret" in d.message and "promotion waits" in d.message
    if error:
        assert error in d.message


def test_signed_digests_cover_every_file_the_manifest_and_the_verification_record() -> None:
    out = signed_digests(_manifest(("model.safetensors", A), ("metrics.json", B)), "sha256:" + C, "sha256:" + A)
    assert out == {"model.safetensors": A, "metrics.json": B, "manifest.json": C, "verification.json": A}


@pytest.mark.parametrize("reserved", ["manifest.json", "verification.json", "model.sig"])
def test_a_manifest_listing_a_reserved_name_cannot_be_signed(reserved: str) -> None:
    with pytest.raises(SignatureMismatch, match=reserved):
        signed_digests(_manifest((reserved, A)), "sha256:" + C, "sha256:" + A)


@pytest.mark.parametrize(
    ("signed", "fragment"),
    [
        ({"w": B, "manifest.json": C}, "w has SHA-256 aaaaaaaaaaaa… but bbbbbbbbbbbb… was signed"),
        ({"manifest.json": C}, "w is not covered by the signature"),
        ({"w": A, "manifest.json": C, "extra": A}, "extra is signed but not published"),
    ],
)
def test_compare_names_what_differs(signed: dict[str, str], fragment: str) -> None:
    with pytest.raises(SignatureMismatch, match="v2: the signature does not match") as e:
        compare_signed({"w": A, "manifest.json": C}, signed, "v2")
    assert fragment in str(e.value)


def test_compare_accepts_the_same_set() -> None:
    compare_signed({"w": A, "manifest.json": C}, {"manifest.json": C, "w": A}, "v2")


def _keys(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / f"{name}.key", tmp / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def test_bundle_round_trip_and_every_forgery_is_refused(tmp_path: Path) -> None:
    priv, pub = _keys(tmp_path, "op")
    _, other_pub = _keys(tmp_path, "other")
    digests = {"model.safetensors": A, "manifest.json": C, "verification.json": B}
    bundle = sign_digests(priv, "digits/v2", digests)
    assert verify_digests(pub, bundle) == digests

    with pytest.raises(SignatureInvalid, match="different key"):
        verify_digests(other_pub, bundle)

    doc = json.loads(bundle)
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_digests(pub, json.dumps(doc).encode())

    with pytest.raises(SignatureInvalid, match="not a model-signing bundle"):
        verify_digests(pub, b"not json")


def test_unusable_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match=r"missing\.key"):
        sign_digests(tmp_path / "missing.key", "digits/v2", {"w": A})
    (tmp_path / "junk.pub").write_text("junk")
    with pytest.raises(SigningKeyError, match=r"junk\.pub"):
        verify_digests(tmp_path / "junk.pub", b"{}")


def test_the_stock_model_signing_verifier_accepts_the_bundle_over_a_downloaded_copy(tmp_path: Path) -> None:
    """The bundle is the library's own format: ``model_signing verify key`` checks a copy by hand."""
    import hashlib

    from model_signing import verifying

    priv, pub = _keys(tmp_path, "op")
    copy = tmp_path / "v2"
    (copy / "sub").mkdir(parents=True)
    (copy / "model.safetensors").write_bytes(b"weights")
    (copy / "sub" / "metrics.json").write_bytes(b"{}")
    digests = {p.relative_to(copy).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.rglob("*.*")}
    (copy / "model.sig").write_bytes(sign_digests(priv, "digits/v2", digests))
    config = verifying.Config().use_elliptic_key_verifier(public_key=pub)
    config.verify(copy, copy / "model.sig")
    (copy / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        config.verify(copy, copy / "model.sig")
