"""What ``kubectl get rp,mv`` shows on-call: the server-side Table after the operator wrote a status."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelloop.api.constants import GROUP, MODELVERSION_PLURAL, RETRAINPOLICY_PLURAL, VERSION
from modelloop.api.modelversion import ModelVersionStatus
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.processes import wait_for

pytestmark = pytest.mark.integration

TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"
NOW = "2026-01-02T03:04:05Z"

POLICY = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "RetrainPolicy",
    "metadata": {"name": "digits"},
    "spec": {
        "model": "digits",
        "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
        "dataset": {"path": "datasets/digits"},
        "training": {"image": "trainer:1"},
    },
}
POLICY_STATUS = {
    "activeVersion": "v3",
    "previousVersion": "v2",
    "desired": {"version": "v4", "artifactURI": "s3://models/digits/v4/", "manifestDigest": "sha256:" + "0" * 64},
    "rollout": {"updated": 1, "total": 2, "summary": "1/2"},
    "feedback": {"pendingCorrections": 42},
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Serving", "message": "v3 serves", "lastTransitionTime": NOW},
        {"type": "Training", "status": "False", "reason": "Idle", "message": "", "lastTransitionTime": NOW},
    ],
}
VERSION_OBJ = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ModelVersion",
    "metadata": {"name": "digits-v4"},
    "spec": {"model": "digits", "version": "v4", "parentVersion": "v3", "policy": "digits"},
}
# As the operator writes it: through the model, which derives metrics.summary from holdoutAccuracy.
VERSION_STATUS = ModelVersionStatus.model_validate(
    {
        "phase": "Verifying",
        "message": "verification job running",
        "progress": {"epoch": 20, "epochs": 20, "summary": "epoch 20/20"},
        "metrics": {"holdoutAccuracy": 0.9108635097493036},
    }
).model_dump(by_alias=True, mode="json", exclude_none=True)


def create_with_status(api: client.ApiClient, namespace: str, plural: str, obj: dict[str, Any], status: Any) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, obj)
    name = obj["metadata"]["name"]
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": status})


def table(api: client.ApiClient, namespace: str, plural: str, wide: bool) -> list[dict[str, Any]]:
    """The server-side Table as rows of {COLUMN: cell}; ``wide`` includes priority-1 columns like ``-o wide``."""
    method, url, headers, body, post = api.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}",
        header_params={"Accept": TABLE},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post)
    response.read()  # type: ignore[no-untyped-call]
    data = json.loads(response.data or b"{}")
    assert data["kind"] == "Table", data
    shown = [(i, c) for i, c in enumerate(data["columnDefinitions"]) if wide or c["priority"] == 0]
    return [{c["name"].upper(): row["cells"][i] for i, c in shown} for row in data["rows"]]


def test_policy_and_version_columns_show_the_status(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    create_with_status(api, namespace, RETRAINPOLICY_PLURAL, POLICY, POLICY_STATUS)
    create_with_status(api, namespace, MODELVERSION_PLURAL, VERSION_OBJ, VERSION_STATUS)

    (policy,) = table(api, namespace, RETRAINPOLICY_PLURAL, wide=False)
    assert list(policy) == ["NAME", "MODEL", "ACTIVE", "DESIRED", "ROLLOUT", "PENDING-FEEDBACK", "READY", "AGE"]
    assert {k: v for k, v in policy.items() if k != "AGE"} == {
        "NAME": "digits",
        "MODEL": "digits",
        "ACTIVE": "v3",
        "DESIRED": "v4",
        "ROLLOUT": "1/2",
        "PENDING-FEEDBACK": 42,
        "READY": "True",
    }
    (policy_wide,) = table(api, namespace, RETRAINPOLICY_PLURAL, wide=True)
    assert (policy_wide["PREVIOUS"], policy_wide["SUSPENDED"], policy_wide["REASON"]) == ("v2", False, "Serving")

    (version,) = table(api, namespace, MODELVERSION_PLURAL, wide=False)
    assert {k: v for k, v in version.items() if k != "AGE"} == {
        "NAME": "digits-v4",
        "MODEL": "digits",
        "VERSION": "v4",
        "PHASE": "Verifying",
        "PROGRESS": "epoch 20/20",
        "ACCURACY": "0.911",
    }
    (version_wide,) = table(api, namespace, MODELVERSION_PLURAL, wide=True)
    assert (version_wide["PARENT"], version_wide["POLICY"]) == ("v3", "digits")

    # The same through kubectl, by category and short name, as a person would type it. A fresh discovery
    # cache: kubectl does not refresh a stale one to expand a category, and ports repeat across runs.
    cache = f"--cache-dir={tmp_path}"
    shown = control_plane.kubectl("get", "modelloop", "-n", namespace, "-o", "wide", cache).stdout
    blocks = {block.splitlines()[1].split()[0]: block.splitlines() for block in shown.strip().split("\n\n")}
    rp_header, rp_row = blocks["retrainpolicy.modelloop.dev/digits"][:2]
    assert rp_header.split()[:7] == ["NAME", "MODEL", "ACTIVE", "DESIRED", "ROLLOUT", "PENDING-FEEDBACK", "READY"]
    assert rp_row.split()[:7] == ["retrainpolicy.modelloop.dev/digits", "digits", "v3", "v4", "1/2", "42", "True"]
    mv_header, mv_row = blocks["modelversion.modelloop.dev/digits-v4"][:2]
    assert mv_header.split()[:3] == ["NAME", "MODEL", "VERSION"]
    assert "epoch 20/20" in mv_row and "0.911" in mv_row.split() and "0.9108" not in mv_row
    by_short_name = control_plane.kubectl("get", "mv", "digits-v4", "-n", namespace, cache).stdout.split()
    assert by_short_name[:11] == [
        "NAME",
        "MODEL",
        "VERSION",
        "PHASE",
        "PROGRESS",
        "ACCURACY",
        "AGE",
        "digits-v4",
        "digits",
        "v4",
        "Verifying",
    ]
    assert "epoch 20/20" in control_plane.kubectl("get", "mv", "-n", namespace, cache).stdout


def test_versions_list_in_training_order_by_creation_time(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    """Names sort as text (digits-v10 before digits-v9); ``--sort-by=.metadata.creationTimestamp``, the
    order docs/api.md tells people to use, is training order. The AGE column shows the same."""
    custom = client.CustomObjectsApi(api)
    for n in (9, 10, 11):
        obj = {
            **VERSION_OBJ,
            "metadata": {"name": f"digits-v{n}"},
            "spec": {**VERSION_OBJ["spec"], "version": f"v{n}", "parentVersion": f"v{n - 1}"},
        }
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MODELVERSION_PLURAL, obj)
        # creationTimestamp has whole seconds: let the next one fall in a later second.
        stamp = datetime.fromisoformat(created["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        wait_for(functools.partial(_reached, stamp + timedelta(seconds=1)), 5, "the next second")

    def names(*args: str) -> list[str]:
        out = control_plane.kubectl("get", "mv", "-n", namespace, "--no-headers", *args).stdout
        return [line.split()[0] for line in out.splitlines()]

    assert names() == ["digits-v10", "digits-v11", "digits-v9"]
    assert names("--sort-by=.metadata.creationTimestamp") == ["digits-v9", "digits-v10", "digits-v11"]


def _reached(moment: datetime) -> bool:
    return datetime.now(UTC) >= moment
