"""The object-store client's TLS pieces: configuration from the environment, the CA bundle, failure reasons."""

from __future__ import annotations

import ssl

import pytest

from modelloop.api import constants as c
from modelloop.api.retrainpolicy import StorageSpec
from modelloop.clients.objectstore import CABundleInvalid, StoreConfig, tls_context, tls_failure

ENV = {
    c.ENV_S3_ENDPOINT: "minio:9000",
    c.ENV_ACCESS_KEY: "a",
    c.ENV_SECRET_KEY: "s",
    c.ENV_BUCKET: "models",
}


def test_the_ca_file_comes_from_the_environment_and_needs_tls() -> None:
    cfg = StoreConfig.from_env({**ENV, c.ENV_S3_SECURE: "true", c.ENV_S3_CA_FILE: "/etc/modelloop/storage-ca/ca.crt"})
    assert (cfg.secure, cfg.ca_file) == (True, "/etc/modelloop/storage-ca/ca.crt")
    with pytest.raises(RuntimeError, match=f"{c.ENV_S3_CA_FILE}=/x.crt is set but {c.ENV_S3_SECURE} is not true"):
        StoreConfig.from_env({**ENV, c.ENV_S3_CA_FILE: "/x.crt"})


def test_plain_http_has_no_tls_context_and_tls_always_verifies() -> None:
    assert tls_context(StoreConfig("m:9000", "a", "s", "b")) is None
    ctx = tls_context(StoreConfig("m:9000", "a", "s", "b", secure=True))
    assert ctx is not None and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (StoreConfig("m:9000", "a", "s", "b", secure=True, ca_data="not a certificate"), "holds no usable PEM"),
        (StoreConfig("m:9000", "a", "s", "b", secure=True, ca_file="/nonexistent/ca.crt"), "cannot read"),
    ],
)
def test_an_unusable_ca_bundle_is_refused_up_front(cfg: StoreConfig, words: str) -> None:
    with pytest.raises(CABundleInvalid, match=words):
        tls_context(cfg)


def test_tls_failure_reasons() -> None:
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "self-signed certificate in certificate chain"
    assert tls_failure(untrusted) == "certificate not trusted (self-signed certificate in certificate chain)"
    wrapped = RuntimeError("download failed")
    wrapped.__cause__ = untrusted
    assert tls_failure(wrapped) == "certificate not trusted (self-signed certificate in certificate chain)"
    assert tls_failure(ConnectionRefusedError(111, "Connection refused")) is None


@pytest.mark.parametrize(
    ("storage", "tls", "bundle"),
    [
        ({}, True, None),  # TLS by default
        ({"secure": False}, False, None),  # what every policy stored before tls existed carries
        ({"secure": True}, True, None),
        ({"tls": {}}, True, None),
        ({"tls": {"enabled": False}}, False, None),
        ({"tls": {"caBundle": {"configMap": "trust"}}}, True, ("trust", "ca.crt")),
        ({"secure": True, "tls": {"caBundle": {"configMap": "trust", "key": "b.pem"}}}, True, ("trust", "b.pem")),
        # a policy stored with the old default (secure: false) to which tls is added: tls wins, no need to
        # remove a field the user never wrote
        ({"secure": False, "tls": {"caBundle": {"configMap": "trust"}}}, True, ("trust", "ca.crt")),
        ({"secure": True, "tls": {"enabled": False}}, False, None),
    ],
)
def test_which_storage_specs_use_tls(storage: dict[str, object], tls: bool, bundle: tuple[str, str] | None) -> None:
    spec = StorageSpec.model_validate(
        {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}, **storage}
    )
    assert spec.use_tls is tls
    ref = spec.ca_bundle
    assert (None if ref is None else (ref.config_map, ref.key)) == bundle
