"""S3 over TLS against a real MinIO serving HTTPS with a certificate from a CA made for the run.

Every client goes through ``ObjectStore``, so each is exercised the way it runs: the operator as its
own process (the CA bundle read from a ConfigMap), the trainer's CLI in-process with the environment
its Job gives it, and the serving sidecar as its own process. A CA that did not sign the store's
certificate, or TLS to a plain-HTTP store, is named as such, with what to fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    POLICY,
    Operator,
    create_ca_bundle,
    create_fixtures,
    create_policy,
    get_policy,
    policy_body,
)
from test_feedback_counting import batch, feedback_status
from test_server_support import Cluster, Replica, publish_versions

from modelloop.api import constants as c
from modelloop.api.feedback import batch_key
from modelloop.clients.objectstore import CABundleInvalid, ObjectStore, tls_failure
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.pki import TestCA
from modelloop_dev.processes import wait_for
from modelloop_trainer.cli import ENV_TERMINATION_LOG
from modelloop_trainer.cli import run as trainer_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def failure(store: ObjectStore) -> str | None:
    with pytest.raises(Exception) as caught:
        store.get_bytes("anything")
    return tls_failure(caught.value)


def test_clients_verify_the_store_with_the_ca_bundle_and_say_why_when_they_cannot(
    minio_tls: MinioServer, minio: MinioServer, tls_bucket: str, tmp_path: Path
) -> None:
    store = ObjectStore(minio_tls.config(tls_bucket))
    store.put_bytes("over-tls", b"secret weights")
    assert store.get_bytes("over-tls") == b"secret weights"

    stranger = TestCA("some-other-ca").write(tmp_path / "other.crt")
    wrong = ObjectStore(dataclasses.replace(minio_tls.config(tls_bucket), ca_file=str(stranger)), attempts=1)
    assert failure(wrong) == "certificate not trusted (unable to get local issuer certificate)"
    system_only = ObjectStore(dataclasses.replace(minio_tls.config(tls_bucket), ca_file=None), attempts=1)
    assert failure(system_only) == "certificate not trusted (unable to get local issuer certificate)"

    plain = ObjectStore(dataclasses.replace(minio.config("anything"), secure=True), attempts=1)
    why = failure(plain)
    assert why is not None and why.startswith("the endpoint does not answer in TLS, it may serve plain HTTP"), why

    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(CABundleInvalid, match=f"{garbage} holds no usable PEM CA certificate"):
        ObjectStore(dataclasses.replace(minio_tls.config(tls_bucket), ca_file=str(garbage)))


def conditions(api: client.ApiClient, ns: str) -> dict[str, dict[str, Any]]:
    return {x["type"]: x for x in (get_policy(api, ns).get("status") or {}).get("conditions", [])}


def warnings(api: client.ApiClient, ns: str, reason: str) -> list[str]:
    return [
        e.message or ""
        for e in client.CoreV1Api(api).list_namespaced_event(ns).items
        if e.reason == reason and e.type == "Warning" and e.involved_object.kind == c.RETRAINPOLICY_KIND
    ]


def test_operator_reports_an_untrusted_store_then_counts_feedback_over_tls_once_the_ca_bundle_is_right(
    control_plane: ControlPlane,
    minio_tls: MinioServer,
    tls_ca: TestCA,
    namespace: str,
    tls_bucket: str,
    api: client.ApiClient,
    tmp_path: Path,
) -> None:
    ns = namespace
    create_fixtures(api, minio_tls, ns)
    create_ca_bundle(api, ns, TestCA("not-the-store-ca").pem)
    body = policy_body(minio_tls, tls_bucket)
    body["spec"]["storage"]["tls"] = {"caBundle": {"configMap": "s3-ca"}}
    create_policy(api, body, ns)
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    try:
        wait_for(
            lambda: conditions(api, ns).get("FeedbackReadable", {}).get("reason") == "StorageTLSFailed"
            and bool(warnings(api, ns, "StorageTLSFailed")),
            90, "FeedbackReadable=False (StorageTLSFailed) with a Warning Event", op.proc,
        )  # fmt: skip
        expected = (
            f"TLS verification failed for {minio_tls.endpoint}: certificate not trusted (unable to get local issuer"
            " certificate); set spec.storage.tls.caBundle to the CA that signed it"
        )
        readable = conditions(api, ns)["FeedbackReadable"]
        assert readable["status"] == "False" and readable["message"].startswith(expected), readable
        assert conditions(api, ns)["Ready"]["reason"] == "StorageTLSFailed"
        (event,) = warnings(api, ns, "StorageTLSFailed")
        assert event.startswith(expected), event

        create_ca_bundle(api, ns, tls_ca.pem)  # the ConfigMap fixed, the spec untouched: healed on a later pass
        wait_for(
            lambda: conditions(api, ns).get("FeedbackReadable", {}).get("status") == "True",
            90, "FeedbackReadable=True once the CA bundle is the store's CA", op.proc,
        )  # fmt: skip
        wait_for(
            lambda: (get_policy(api, ns).get("status") or {}).get("trainingVersion") == "v1",
            60, "the bootstrap training", op.proc,
        )  # fmt: skip
        ObjectStore(minio_tls.config(tls_bucket)).put_bytes(batch_key(MODEL), batch(3, corrections=2))
        wait_for(
            lambda: int(feedback_status(api, ns).get("pendingReviews") or 0) == 3,
            60, "3 reviews counted over TLS", op.proc,
        )  # fmt: skip
        assert feedback_status(api, ns)["pendingCorrections"] == 2

        job = client.BatchV1Api(api).read_namespaced_job(f"{POLICY}-v1-train", ns)
        pod = job.spec.template.spec
        (trainer,) = pod.containers
        env = {e.name: e.value for e in trainer.env}
        assert env[c.ENV_S3_SECURE] == "true"
        assert env[c.ENV_S3_CA_FILE] == f"{c.S3_CA_DIR}/ca.crt"
        (volume,) = [v for v in pod.volumes if v.config_map is not None and v.config_map.name == "s3-ca"]
        mounts = {m.name: m for m in trainer.volume_mounts}
        assert mounts[volume.name].mount_path == c.S3_CA_DIR and mounts[volume.name].read_only
        assert len(warnings(api, ns, "StorageTLSFailed")) == 1, "an Event per transition, not per failed pass"
    finally:
        op.proc.stop()


def test_trainer_reads_and_writes_the_store_over_tls_with_the_ca_file(
    minio_tls: MinioServer, tls_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = minio_tls.env(tls_bucket)
    assert trainer_run(["seed-dataset", "--dataset", "datasets/digits"], env=env) == 0
    keys = list(ObjectStore(minio_tls.config(tls_bucket)).list_keys("datasets/digits/"))
    assert keys, "the trainer uploaded nothing"

    termination = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(termination))  # what Kubernetes shows as the Job's failure
    wrong = {**env, c.ENV_S3_CA_FILE: str(TestCA("not-the-store-ca").write(tmp_path / "wrong.crt"))}
    assert trainer_run(["seed-dataset", "--dataset", "datasets/other"], env=wrong) == 1
    reason = termination.read_text()
    assert reason.startswith(
        f"seed-dataset failed: TLS verification failed for {minio_tls.endpoint}: certificate not trusted"
    ), reason
    assert "set spec.storage.tls.caBundle to the CA that signed it" in reason


def test_sidecar_downloads_over_tls_with_the_ca_file_and_posts_an_event_when_it_cannot_verify(
    control_plane: ControlPlane, minio_tls: MinioServer, namespace: str, tls_bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio_tls, tls_bucket, ["v1"])
    cluster = Cluster(control_plane, namespace, minio_tls, tls_bucket)
    kubeconfig = cluster.serving_kubeconfig(tmp_path)
    cluster.set_desired("v1", digests["v1"])

    untrusting = {**minio_tls.env(tls_bucket), c.ENV_S3_CA_FILE: str(TestCA("x").write(tmp_path / "x.crt"))}
    cluster.create_pod("digits-0")
    bad = Replica(tmp_path, "digits-0", namespace, untrusting, kubeconfig).start()
    try:

        def tls_events() -> list[str]:
            return [e.message or "" for e in cluster.events("digits-0") if e.reason == "StorageTLSFailed"]

        wait_for(lambda: bool(tls_events()), 90, "a StorageTLSFailed Event on the Pod", bad.sidecar)
        message = tls_events()[0]
        assert message.startswith(f"TLS verification failed for {minio_tls.endpoint}: certificate not trusted"), message
        assert f"set {c.ENV_S3_CA_FILE} to the CA that signed it" in message and "still serving" in message
        assert c.ANNOTATION_SERVING_VERSION not in cluster.pod_annotations("digits-0"), "nothing was loaded"
    finally:
        bad.stop()

    cluster.create_pod("digits-1")
    good = Replica(tmp_path, "digits-1", namespace, minio_tls.env(tls_bucket), kubeconfig).start()
    try:
        wait_for(lambda: cluster.reports("digits-1", digests["v1"]), 90, "v1 served over TLS", good.sidecar)
        assert good.serving() == "v1"
    finally:
        good.stop()
