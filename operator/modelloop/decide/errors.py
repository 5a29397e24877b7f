"""What an error met while reconciling a policy means: permanent or transient, and what to tell the on-call.

The handler reduces the exception to a :class:`Failure` (facts only: where it happened, the
error's type, the S3 code or HTTP status) and :func:`classify` turns it into a condition reason,
a message that says what to do, and when the operator tries again. Permanent errors (the spec
must change) are not retried until the policy changes; transient ones are retried with backoff,
and the message says when; errors a person must fix outside the spec (a missing Secret, wrong
credentials, missing RBAC) are re-checked at a slow pace, since nothing watched says they are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from croniter import croniter

from modelloop.api.retrainpolicy import RetrainPolicySpec


class InvalidSpec(ValueError):
    """A spec the API server accepted (an older CRD, or a rule the schema cannot state) but the operator cannot act on."""


class Stage(StrEnum):
    """Where in the pass the error happened: it decides who can fix it."""

    SPEC = "spec"
    CREDENTIALS = "credentials"
    STORAGE = "storage"
    KUBERNETES = "kubernetes"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Failure:
    stage: Stage
    error: str
    """The exception's type name, e.g. NameResolutionError."""
    detail: str
    """The exception's text, one line."""
    s3_code: str | None = None
    http_status: int | None = None
    subject: str = ""
    """What was being reached: ``endpoint/bucket``, ``Secret ns/name``; named in the message."""
    endpoint: str = ""
    """The object store's host:port, for messages about the store's TLS."""


@dataclass(frozen=True)
class ErrorVerdict:
    permanent: bool
    reason: str
    """The condition reason and Event reason, CamelCase."""
    message: str
    """For the condition and the Event: what failed, what to do, and when the operator tries again."""
    retry_after: float | None
    """Seconds until the next attempt; None for permanent errors (retried when the policy changes)."""


_DENIED_S3 = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING_BUCKET_S3 = {"NoSuchBucket"}
_NAME_ERRORS = {"NameResolutionError", "gaierror"}
MAX_MESSAGE = 1000


def unusable_spec(spec: RetrainPolicySpec) -> str | None:
    """What the operator cannot act on in a spec the API server accepted; None when it can act on all of it."""
    schedule = spec.triggers.schedule
    if schedule and not croniter.is_valid(schedule):
        return (
            f"spec.triggers.schedule {schedule!r} is not a valid cron expression (minute 0-59, hour 0-23,"
            " day-of-month 1-31, month 1-12, day-of-week 0-7; steps >= 1)"
        )
    return None


def backoff(attempt: int, base: float, cap: float) -> float:
    """``base`` doubled per earlier consecutive failure, at most ``cap``; attempt 1 waits ``base``."""
    return float(min(base * 2.0 ** max(attempt - 1, 0), cap))


def classify(failure: Failure, attempt: int, base: float, cap: float) -> ErrorVerdict:
    """The verdict on the ``attempt``-th consecutive failure (1 for the first)."""
    soon = backoff(attempt, base, cap)
    what = f"{failure.error}: {failure.detail}".replace("\n", " ")
    subject = failure.subject or failure.stage.value

    def permanent(reason: str, text: str) -> ErrorVerdict:
        return ErrorVerdict(True, reason, _clip(f"{text}; not retried until the policy changes"), None)

    def transient(reason: str, text: str, delay: float) -> ErrorVerdict:
        return ErrorVerdict(False, reason, _clip(f"{text}; retrying in {_seconds(delay)}"), delay)

    if failure.stage is Stage.SPEC:
        return permanent("InvalidSpec", f"spec cannot be acted on: {failure.detail}; fix the spec")
    if failure.stage is Stage.CREDENTIALS:
        if failure.http_status == 404:
            return transient("SecretNotFound", f"{subject} not found: create it in the policy's namespace", cap)
        if failure.http_status == 403:
            return transient("Forbidden", f"the operator may not read {subject} ({what}): grant it get on secrets", cap)
        if failure.error == "CABundleInvalid":
            return transient("CABundleInvalid", failure.detail, cap)
        if failure.error == "KeyError":
            missing = failure.detail.strip("\"'")
            return transient("CredentialsInvalid", f"{missing}: add it or fix spec.storage.trainerCredentials", cap)
        return transient("CredentialsUnreadable", f"cannot read {subject}: {what}", soon)
    if failure.stage is Stage.STORAGE:
        if failure.error == "TLSError":
            return transient("StorageTLSFailed", _tls_message(failure), cap)
        if "HTTP request to an HTTPS server" in failure.detail:
            return transient(
                "StorageTLSRequired",
                f"{subject} serves HTTPS only: set spec.storage.tls (with caBundle when a private CA signed"
                " its certificate)",
                cap,
            )
        if failure.s3_code in _DENIED_S3:
            return transient(
                "StorageAccessDenied",
                f"{subject} refused the credentials ({failure.s3_code}): fix the Secret named in"
                " spec.storage.trainerCredentials or the bucket policy",
                cap,
            )
        if failure.s3_code in _MISSING_BUCKET_S3:
            return transient("BucketNotFound", f"{subject}: the bucket does not exist: create it", cap)
        if failure.error in _NAME_ERRORS:
            return transient(
                "StorageUnreachable",
                f"{subject}: the endpoint's host name does not resolve ({what}); check spec.storage.endpoint",
                soon,
            )
        return transient("StorageUnreachable", f"cannot reach {subject}: {what}", soon)
    if failure.stage is Stage.KUBERNETES:
        status = failure.http_status
        if status == 403:
            return transient(
                "Forbidden", f"the API server refused the operator ({what}): check the operator's RBAC", cap
            )
        if status in (400, 422):
            return permanent("RejectedByAPIServer", f"the API server refused what the operator wrote: {what}")
        return transient("APIServerError", f"Kubernetes API call failed: {what}", soon)
    return transient("ReconcileError", f"reconcile failed: {what}", soon)


def _tls_message(failure: Failure) -> str:
    """A certificate the operator does not trust needs the CA; an endpoint without TLS needs the flag or the port."""
    head = f"TLS verification failed for {failure.endpoint or failure.subject}: {failure.detail}"
    if "mismatch" in failure.detail:
        return (
            f"{head}; the certificate does not name that host: use a name it covers in spec.storage.endpoint"
            " or reissue it with this one"
        )
    if "plain HTTP" in failure.detail:
        return (
            f"{head}; point spec.storage.endpoint at the store's TLS port, or set spec.storage.tls.enabled"
            " to false if it is reachable only inside the cluster"
        )
    return f"{head}; set spec.storage.tls.caBundle to the CA that signed it"


def _seconds(delay: float) -> str:
    return f"{delay:.0f}s" if delay >= 1 else f"{delay:.1f}s"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
