"""Whether the operator signs a version that passed its gates, and what to say when it cannot.

Pure: the handler passes whether the policy requires a signature and whether the operator was
given a signing key; the signing itself (key, bundle, upload) is I/O in ``clients.signing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

KEY_SETTING = "the chart value signing.keySecret (env MODELLOOP_SIGNING_KEY in the operator Pod)"


class SignAction(StrEnum):
    SIGN = "Sign"
    SKIP = "Skip"  # no key and no requirement: the version is promoted unsigned, as before signing existed
    WAIT = "Wait"  # required but impossible now: the version stays Verifying, promotion waits


@dataclass(frozen=True)
class SignDecision:
    action: SignAction
    reason: str
    message: str


def decide_signing(required: bool, key_configured: bool, key_error: str | None = None) -> SignDecision:
    """Sign whenever a key is configured (so turning verification on later finds signed versions)."""
    if key_configured and key_error is None:
        return SignDecision(SignAction.SIGN, "Signed", "signed with the operator's key")
    if key_configured and key_error is not None:
        if not required:
            return SignDecision(
                SignAction.SKIP,
                "SigningKeyInvalid",
                f"not signed: {key_error}; the policy does not require a signature, so it is promoted unsigned",
            )
        return SignDecision(
            SignAction.WAIT,
            "SigningKeyInvalid",
            f"cannot sign: {key_error}; fix the key in {KEY_SETTING} (EC P-256/384/521, PEM); "
            "promotion waits (spec.serving.signature requires a signature)",
        )
    if required:
        return SignDecision(
            SignAction.WAIT,
            "SigningKeyMissing",
            "the policy requires a signature (spec.serving.signature) but the operator has no signing key; "
            f"set {KEY_SETTING}; promotion waits",
        )
    return SignDecision(SignAction.SKIP, "NotRequired", "not signed: the operator has no signing key configured")
