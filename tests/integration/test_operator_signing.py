"""The operator signs a version once it passes its gates, and the sidecar's own check accepts the signature.

Promotion waits for the signature: with ``spec.serving.signature`` set and no signing key, a version
that passed every gate stays Verifying with a ``Signed=False`` condition and an Event naming the
chart value to set; once the operator has its key (restarted with it, as a chart upgrade would),
the same version is signed, turns Verified and is promoted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from kubernetes import client
from operator_harness import (
    DEPLOYMENT,
    MODEL,
    Operator,
    complete_job,
    create_fixtures,
    fake_training,
    get_policy,
    job_exists,
    phase,
    policy_body,
    versions,
    write_verification,
)
from test_server_support import signing_keys

from modelloop.api import constants as c
from modelloop.api.artifacts import MANIFEST_FILE, digest_of, version_key
from modelloop.api.signing import SIGNATURE_FILE
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.settings import SidecarSettings
from modelloop_server.sidecar import Desired, RejectedForGood, Sidecar

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_verified_version_is_signed_before_promotion_and_the_sidecar_accepts_it(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    store = minio.store(bucket)
    private, public = signing_keys(tmp_path)
    create_fixtures(api, minio, ns)
    signature = {"publicKey": {"configMapName": "modelloop-signing"}}
    body = policy_body(
        minio, bucket, serving={"deployment": DEPLOYMENT, "rolloutTimeout": "5m", "signature": signature}
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)

    unkeyed = Operator(control_plane, ns, tmp_path / "operator-nokey.log").start()
    try:
        wait_for(lambda: job_exists(api, ns, "digits-v1-train"), 90, "training Job", unkeyed.proc)
        digest = fake_training(store, "v1", None, tmp_path)
        complete_job(api, ns, "digits-v1-train")
        wait_for(lambda: job_exists(api, ns, "digits-v1-verify"), 60, "verification Job", unkeyed.proc)
        write_verification(store, "v1", digest, 0.93, None, None)
        complete_job(api, ns, "digits-v1-verify")

        def signed_condition() -> dict[str, str]:
            conds = (versions(api, ns)["v1"].get("status") or {}).get("conditions") or []
            return next((x for x in conds if x["type"] == "Signed"), {})

        wait_for(lambda: signed_condition().get("reason") == "SigningKeyMissing", 60, "Signed=False", unkeyed.proc)
        assert signed_condition()["status"] == "False"
        assert "signing.keySecret" in signed_condition()["message"]
        events = client.CoreV1Api(api).list_namespaced_event(ns).items
        assert [e for e in events if e.reason == "SigningKeyMissing" and e.involved_object.kind == "ModelVersion"]
        assert phase(api, ns, "v1") == "Verifying", "promotion waits for the signature"
        assert not (get_policy(api, ns).get("status") or {}).get("desired")
        assert not store.exists(version_key(MODEL, "v1", SIGNATURE_FILE))
    finally:
        unkeyed.proc.stop()

    keyed = Operator(control_plane, ns, tmp_path / "operator.log", MODELLOOP_SIGNING_KEY=str(private)).start()
    try:
        wait_for(
            lambda: ((get_policy(api, ns).get("status") or {}).get("desired") or {}).get("version") == "v1",
            60, "desired v1", keyed.proc,
        )  # fmt: skip
    finally:
        keyed.proc.stop()
    status = versions(api, ns)["v1"]["status"]
    bundle = store.get_bytes(version_key(MODEL, "v1", SIGNATURE_FILE))
    assert status["artifact"]["signatureDigest"] == digest_of(bundle)
    assert next(x for x in status["conditions"] if x["type"] == "Signed")["status"] == "True"

    # The sidecar's own check, on a local copy as it would have downloaded it.
    local = tmp_path / "models" / "v1"
    local.mkdir(parents=True)
    (local / MANIFEST_FILE).write_bytes(store.get_bytes(version_key(MODEL, "v1", MANIFEST_FILE)))
    settings = SidecarSettings(
        model=MODEL, policy="p", namespace=ns, pod_name="pod", model_dir=local.parent,
        control_socket=tmp_path / "none.sock", signing_public_key=public,
    )  # fmt: skip
    desired = Desired("v1", f"s3://{bucket}/{MODEL}/v1/", digest)
    Sidecar(settings, api, store.config).check_signature(desired, local)  # RejectedForGood if it refused it

    _, stranger = signing_keys(tmp_path, "stranger")
    other = Sidecar(dataclasses.replace(settings, signing_public_key=stranger), api, store.config)
    with pytest.raises(RejectedForGood, match="different key"):
        other.check_signature(desired, local)
