"""Errors met on a policy: permanent or transient, the reason shown, and the retry the message promises."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from minio.error import S3Error

from modelloop.api.retrainpolicy import RetrainPolicySpec
from modelloop.clients.objectstore import CABundleInvalid
from modelloop.decide.errors import Failure, InvalidSpec, Stage, backoff, classify, unusable_spec
from modelloop.handlers.failures import failure_of

BASE, CAP = 4.0, 60.0
S3 = "s3://models/digits/feedback/ at minio.does-not-resolve:9000"

# (failure, attempt, permanent, reason, retry_after, words the message must contain)
CASES: dict[str, tuple[Failure, int, bool, str, float | None, tuple[str, ...]]] = {
    "bad schedule": (
        Failure(Stage.SPEC, "InvalidSpec", "spec.triggers.schedule '61 * * * *' is not a valid cron expression"),
        1, True, "InvalidSpec", None, ("61 * * * *", "fix the spec", "not retried until the policy changes"),
    ),
    "spec fails the models": (
        Failure(Stage.SPEC, "ValidationError", "training.image: Field required"),
        3, True, "InvalidSpec", None, ("training.image",),
    ),
    "endpoint does not resolve": (
        Failure(Stage.STORAGE, "NameResolutionError", "Failed to resolve 'minio.does-not-resolve'", subject=S3),
        1, False, "StorageUnreachable", 4.0, ("does not resolve", "spec.storage.endpoint", "retrying in 4s", S3),
    ),
    "endpoint refuses, third time": (
        Failure(Stage.STORAGE, "MaxRetryError", "Connection refused", subject=S3),
        3, False, "StorageUnreachable", 16.0, ("Connection refused", "retrying in 16s"),
    ),
    "backoff is capped": (
        Failure(Stage.STORAGE, "MaxRetryError", "Connection refused", subject=S3),
        9, False, "StorageUnreachable", 60.0, ("retrying in 60s",),
    ),
    "wrong credentials": (
        Failure(Stage.STORAGE, "S3Error", "denied", s3_code="InvalidAccessKeyId", subject=S3),
        1, False, "StorageAccessDenied", CAP, ("InvalidAccessKeyId", "trainerCredentials", "retrying in 60s"),
    ),
    "no bucket": (
        Failure(Stage.STORAGE, "S3Error", "no bucket", s3_code="NoSuchBucket", subject=S3),
        1, False, "BucketNotFound", CAP, ("create it",),
    ),
    "storage 503": (
        Failure(Stage.STORAGE, "S3Error", "busy", s3_code="ServiceUnavailable", subject=S3),
        2, False, "StorageUnreachable", 8.0, ("retrying in 8s",),
    ),
    "secret missing": (
        Failure(Stage.CREDENTIALS, "ApiException", "404 Not Found", http_status=404, subject="Secret ns/s3"),
        1, False, "SecretNotFound", CAP, ("Secret ns/s3 not found", "create it", "retrying in 60s"),
    ),
    "secret lacks a key": (
        Failure(Stage.CREDENTIALS, "KeyError", "'Secret ns/s3 has no key(s) accessKey'", subject="Secret ns/s3"),
        1, False, "CredentialsInvalid", CAP, ("has no key(s) accessKey", "trainerCredentials"),
    ),
    "secret forbidden": (
        Failure(Stage.CREDENTIALS, "ApiException", "403 Forbidden", http_status=403, subject="Secret ns/s3"),
        1, False, "Forbidden", CAP, ("get on secrets",),
    ),
    "api server refuses the operator": (
        Failure(Stage.KUBERNETES, "ApiException", "403 Forbidden: cannot create modelversions", http_status=403),
        1, False, "Forbidden", CAP, ("RBAC",),
    ),
    "api server rejects an object": (
        Failure(Stage.KUBERNETES, "ApiException", "422 Unprocessable Entity: name too long", http_status=422),
        1, True, "RejectedByAPIServer", None, ("name too long", "not retried"),
    ),
    "api server down": (
        Failure(Stage.KUBERNETES, "MaxRetryError", "Connection refused"),
        2, False, "APIServerError", 8.0, ("retrying in 8s",),
    ),
    "conflict": (
        Failure(Stage.KUBERNETES, "ApiException", "409 Conflict", http_status=409),
        1, False, "APIServerError", 4.0, ("409",),
    ),
    "store certificate not trusted": (
        Failure(Stage.STORAGE, "TLSError", "certificate not trusted (unable to get local issuer certificate)",
                subject=S3, endpoint="minio.example:9000"),
        1, False, "StorageTLSFailed", CAP,
        ("TLS verification failed for minio.example:9000: certificate not trusted (unable to get local issuer",
         "set spec.storage.tls.caBundle to the CA that signed it", "retrying in 60s"),
    ),
    "store certificate names another host": (
        Failure(Stage.STORAGE, "TLSError", "certificate not trusted (Hostname mismatch, certificate is not valid for"
                " 'minio')", subject=S3, endpoint="minio:9000"),
        1, False, "StorageTLSFailed", CAP, ("does not name that host", "spec.storage.endpoint"),
    ),
    "TLS to a plain-HTTP store": (
        Failure(Stage.STORAGE, "TLSError", "the endpoint does not answer in TLS, it may serve plain HTTP"
                " (WRONG_VERSION_NUMBER)", subject=S3, endpoint="minio:9000"),
        1, False, "StorageTLSFailed", CAP,
        ("TLS verification failed for minio:9000", "spec.storage.tls.enabled to false", "TLS port"),
    ),
    "plain HTTP to an HTTPS-only store": (
        Failure(Stage.STORAGE, "InvalidResponseError", "non-XML response from server; Response code: 400, Body:"
                " Client sent an HTTP request to an HTTPS server.", subject=S3),
        1, False, "StorageTLSRequired", CAP, ("serves HTTPS only", "set spec.storage.tls", "caBundle"),
    ),
    "CA bundle ConfigMap missing": (
        Failure(Stage.CREDENTIALS, "CABundleInvalid", "ConfigMap ns/s3-ca (spec.storage.tls.caBundle) not found:"
                " create it in the policy's namespace", subject="Secret ns/s3"),
        1, False, "CABundleInvalid", CAP, ("ConfigMap ns/s3-ca", "spec.storage.tls.caBundle", "retrying in 60s"),
    ),
    "a bug": (
        Failure(Stage.INTERNAL, "KeyError", "'manifestDigest'"),
        1, False, "ReconcileError", 4.0, ("KeyError", "manifestDigest", "retrying in 4s"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_classify(case: str) -> None:
    failure, attempt, permanent, reason, retry_after, words = CASES[case]
    verdict = classify(failure, attempt, BASE, CAP)
    assert (verdict.permanent, verdict.reason, verdict.retry_after) == (permanent, reason, retry_after)
    for w in words:
        assert w in verdict.message
    assert "\n" not in verdict.message


def test_messages_are_bounded() -> None:
    verdict = classify(Failure(Stage.INTERNAL, "RuntimeError", "x" * 5000), 1, BASE, CAP)
    assert len(verdict.message) <= 1000


@pytest.mark.parametrize(("attempt", "delay"), [(0, 4.0), (1, 4.0), (2, 8.0), (4, 32.0), (5, 60.0), (50, 60.0)])
def test_backoff(attempt: int, delay: float) -> None:
    assert backoff(attempt, BASE, CAP) == delay


def _spec(**triggers: Any) -> RetrainPolicySpec:
    return RetrainPolicySpec.model_validate(
        {
            "model": "digits",
            "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "trainer:1"},
            "triggers": triggers,
        }
    )


@pytest.mark.parametrize(
    ("schedule", "unusable"),
    [(None, False), ("0 3 * * 1", False), ("@daily", False), ("61 * * * *", True), ("*/0 * * * *", True)],
)
def test_unusable_spec_catches_what_an_older_crd_let_through(schedule: str | None, unusable: bool) -> None:
    problem = unusable_spec(_spec(schedule=schedule))
    assert (problem is not None) == unusable
    if problem:
        assert "spec.triggers.schedule" in problem and schedule in problem


def _name_error(host: str) -> urllib3.exceptions.MaxRetryError:
    pool = urllib3.HTTPConnectionPool(host, 9000)
    conn = pool.ConnectionCls(host, 9000)
    return urllib3.exceptions.MaxRetryError(pool, "/", urllib3.exceptions.NameResolutionError(host, conn, OSError()))


def test_failure_of_tells_storage_from_the_api_server_by_host() -> None:
    storage = failure_of(_name_error("minio.invalid"), storage_host="minio.invalid")
    assert (storage.stage, storage.error) == (Stage.STORAGE, "NameResolutionError")
    api = failure_of(_name_error("kubernetes.default.svc"), storage_host="minio.invalid")
    assert (api.stage, api.error) == (Stage.KUBERNETES, "NameResolutionError")


def test_failure_of_keeps_codes_and_statuses() -> None:
    forbidden = failure_of(ApiException(status=403, reason="Forbidden"))
    assert (forbidden.stage, forbidden.http_status) == (Stage.KUBERNETES, 403)
    s3 = failure_of(S3Error(None, "NoSuchBucket", "no bucket", "/b", "r", "h"), Stage.STORAGE)  # type: ignore[arg-type]
    assert (s3.stage, s3.s3_code) == (Stage.STORAGE, "NoSuchBucket")
    spec = failure_of(InvalidSpec("schedule '61 * * * *'"))
    assert spec.stage is Stage.SPEC and "61 * * * *" in spec.detail
    assert failure_of(KeyError("manifestDigest")).stage is Stage.INTERNAL


def test_a_lookup_that_timed_out_reads_as_a_name_that_does_not_resolve() -> None:
    failure = failure_of(socket.gaierror("minio.example did not resolve within 5s"), Stage.STORAGE, S3)
    verdict = classify(failure, 1, BASE, CAP)
    assert (verdict.reason, failure.error) == ("StorageUnreachable", "NameResolutionError")
    assert "does not resolve" in verdict.message and "within 5s" in verdict.message


def _tls_error(inner: ssl.SSLError) -> urllib3.exceptions.SSLError:
    """What urllib3 raises with retries off: its SSLError, the ssl module's as its context."""
    try:
        try:
            raise inner
        except ssl.SSLError as e:
            raise urllib3.exceptions.SSLError(e) from None
    except urllib3.exceptions.SSLError as outer:
        outer.__context__ = inner
        return outer


def test_failure_of_reads_a_tls_failure_as_storage_whatever_the_caller_guessed() -> None:
    untrusted = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    failure = failure_of(_tls_error(untrusted), Stage.STORAGE, S3, endpoint="minio:9000")
    assert (failure.stage, failure.error, failure.endpoint) == (Stage.STORAGE, "TLSError", "minio:9000")
    assert failure.detail == "certificate not trusted (unable to get local issuer certificate)"

    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert "plain HTTP" in failure_of(_tls_error(plain), storage_host="minio").detail


def test_a_ca_bundle_problem_is_its_own_failure() -> None:
    failure = failure_of(CABundleInvalid("ConfigMap ns/s3-ca has no key ca.crt"), Stage.CREDENTIALS, "Secret ns/s3")
    assert (failure.stage, failure.error) == (Stage.CREDENTIALS, "CABundleInvalid")
    assert classify(failure, 1, BASE, CAP).reason == "CABundleInvalid"
