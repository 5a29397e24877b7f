"""Each reconcile, run twice on the same observed state, has one set of side effects.

kopf retries a handler whose status patch did not land (a conflict, a crash between the create
and the patch), so the handler sees the *old* state again after its side effects happened. The
reconcile functions are called directly here, against the real API server and MinIO, with the
same stale body both times — exactly what a retry sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kopf._core.engines.posting import settings_var
from kubernetes import client, config
from operator_harness import create_s3_secret

from modelloop.api import constants as c
from modelloop.handlers.modelversion import reconcile_modelversion
from modelloop.handlers.retrainpolicy import reconcile_policy
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer

pytestmark = pytest.mark.integration

LOG = logging.getLogger("test-idempotency")


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    config.load_kube_config(str(control_plane.kubeconfig))
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.posting.level = logging.CRITICAL  # kopf.warn ignores `enabled` (only the level filters it)
    token = settings_var.set(settings)
    with control_plane.api_client() as api:
        yield api
    settings_var.reset(token)


def _policy(api: client.ApiClient, minio: MinioServer, bucket: str, ns: str) -> dict[str, Any]:
    create_s3_secret(api, minio, ns)
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "metadata": {"name": "digits"},
        "spec": {
            "model": "digits",
            "storage": {
                "endpoint": minio.endpoint,
                "bucket": bucket,
                "trainerCredentials": {"secretName": "s3"},
                "tls": {"enabled": False},  # the test MinIO serves plain HTTP
            },
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "modelloop-trainer:dev"},
            "serving": {"deployment": "web"},
            # These tests reject versions by hand and count what follows; retries are tested in test_operator_loop.
            "retry": {"maxAttempts": 1},
        },
    }
    custom = client.CustomObjectsApi(api)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body
    )
    return created


def test_policy_and_version_reconciles_run_twice_create_one_version_and_one_job(
    api: client.ApiClient, minio: MinioServer, bucket: str, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    policy = _policy(api, minio, bucket, namespace)
    now = datetime.now(UTC)

    first = reconcile_policy(kopf.Body(policy), namespace, "digits", LOG, now)
    second = reconcile_policy(kopf.Body(policy), namespace, "digits", LOG, now)

    mvs = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL)["items"]
    assert [mv["spec"]["version"] for mv in mvs] == ["v1"], "a retried policy reconcile must not create v2"
    assert first["latestVersion"] == "v1"
    assert second.get("latestVersion") in (None, "v1"), "the retry found v1 in flight and must not claim another"
    mv = mvs[0]
    assert mv["metadata"]["ownerReferences"][0]["name"] == "digits"

    outcomes = [
        reconcile_modelversion(kopf.Body(mv), dict(mv["spec"]), dict(mv.get("status") or {}), namespace, None, LOG, now)
        for _ in range(2)
    ]

    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert [j.metadata.name for j in jobs] == ["digits-v1-train"], "a retried version reconcile must not add a Job"
    assert [o["phase"] for o in outcomes] == ["Training", "Training"]
    assert outcomes[0]["trainingJob"] == outcomes[1]["trainingJob"] == "digits-v1-train"
    assert "created" in outcomes[0]["message"] and "found" in outcomes[1]["message"]


def test_a_lost_status_write_neither_retrains_nor_strands_a_promotion(
    api: client.ApiClient, minio: MinioServer, bucket: str, namespace: str
) -> None:
    """The operator killed between creating (or marking) a ModelVersion and writing the policy status."""
    custom = client.CustomObjectsApi(api)
    ns = namespace

    def fresh() -> kopf.Body:
        return kopf.Body(custom.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, "digits"))

    def write(changed: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, "digits", {"status": changed}
        )

    def set_phase(version: str, status: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL, f"digits-{version}", {"status": status}
        )

    def versions() -> list[str]:
        items = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.MODELVERSION_PLURAL)["items"]
        return sorted(mv["spec"]["version"] for mv in items)

    _policy(api, minio, bucket, ns)
    write(reconcile_policy(fresh(), ns, "digits", LOG, datetime.now(UTC)))  # bootstrap v1, recorded
    set_phase("v1", {"phase": "Rejected"})

    custom.patch_namespaced_custom_object(
        c.GROUP,
        c.VERSION,
        ns,
        c.RETRAINPOLICY_PLURAL,
        "digits",
        {"metadata": {"annotations": {c.ANNOTATION_RETRAIN_NOW: "x"}}},
    )
    lost = reconcile_policy(fresh(), ns, "digits", LOG, datetime.now(UTC))  # creates v2; its write is lost
    assert (lost["latestVersion"], lost["handled"]["retrainNow"]) == ("v2", "x")
    set_phase("v2", {"phase": "Rejected"})

    after = reconcile_policy(fresh(), ns, "digits", LOG, datetime.now(UTC))
    assert versions() == ["v1", "v2"], "the retrain-now request v2 answered must not start v3"
    assert (after["latestVersion"], after["handled"]["retrainNow"]) == ("v2", "x")
    write(after)

    digest = "sha256:" + "0" * 64
    set_phase("v2", {"phase": "Verified", "artifact": {"uri": f"s3://{bucket}/digits/v2/", "manifestDigest": digest}})
    lost = reconcile_policy(fresh(), ns, "digits", LOG, datetime.now(UTC))  # marks v2 Promoting; write lost
    assert lost["desired"]["version"] == "v2"
    again = reconcile_policy(fresh(), ns, "digits", LOG, datetime.now(UTC))
    assert again.get("desired", {}).get("version") == "v2", "a Promoting version nobody rolls out is stranded"
    assert again["desired"]["manifestDigest"] == digest
