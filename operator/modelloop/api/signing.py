"""What the operator's signature over a version covers, and how a reader compares it: pure, no keys.

The operator signs, after the gates pass, one OpenSSF model-signing bundle (``model.sig`` beside the
manifest) whose resources are every file the manifest lists with its SHA-256, ``manifest.json``
itself (so its parent version, training parameters and feedback snapshot are covered) and
``verification.json`` (the gate results the operator acted on). The reload sidecar rebuilds the same
set from the bytes it checked and refuses the version unless the signed set is identical.
"""

from __future__ import annotations

from typing import Final

from .artifacts import MANIFEST_FILE, VERIFICATION_FILE, Manifest

SIGNATURE_FILE: Final = "model.sig"


class SignatureMismatch(ValueError):
    """The signature is genuine but covers other bytes than the ones published; the message names them."""


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def signed_digests(manifest: Manifest, manifest_digest: str, verification_digest: str) -> dict[str, str]:
    """path -> SHA-256 hex of everything a version's signature must cover."""
    out = {f.path: f.sha256 for f in manifest.files}
    for reserved in (MANIFEST_FILE, VERIFICATION_FILE, SIGNATURE_FILE):
        if reserved in out:
            raise SignatureMismatch(f"the manifest lists {reserved!r}, a name reserved for the version's metadata")
    out[MANIFEST_FILE] = _hex(manifest_digest)
    out[VERIFICATION_FILE] = _hex(verification_digest)
    return out


def compare_signed(expected: dict[str, str], signed: dict[str, str], where: str) -> None:
    """Raise SignatureMismatch naming the first files whose published digest is not the signed one."""
    problems: list[str] = []
    for path in sorted(expected.keys() | signed.keys()):
        if path not in signed:
            problems.append(f"{path} is not covered by the signature")
        elif path not in expected:
            problems.append(f"{path} is signed but not published")
        elif expected[path] != signed[path]:
            problems.append(f"{path} has SHA-256 {expected[path][:12]}… but {signed[path][:12]}… was signed")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise SignatureMismatch(
            f"{where}: the signature does not match the published version ({shown}); "
            "the weights, manifest or verification results were changed after the operator signed them"
        )
