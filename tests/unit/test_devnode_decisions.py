"""The development node's pure decisions: scheduling fit, env resolution, phases, backoff."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from modelloop_dev.devnode import (
    EnvError,
    Json,
    backoff_delay,
    expand,
    fits_node,
    pod_phase,
    resolve_env,
    rewrite_mounts,
    should_restart,
)

LABELS = {"kubernetes.io/hostname": "dev", "nvidia.com/gpu.present": "true", "modelloop.dev/development-node": "true"}
POD: Json = {
    "metadata": {
        "name": "trainer-0",
        "namespace": "ml",
        "uid": "u-1",
        "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
        "labels": {"app": "x"},
    },
    "spec": {"serviceAccountName": "trainer"},
}
OBJECTS: dict[tuple[str, str], Json] = {
    ("secrets", "s3"): {
        "data": {"accessKey": base64.b64encode(b"AK").decode(), "secretKey": base64.b64encode(b"SK").decode()}
    },
    ("configmaps", "cfg"): {"data": {"MODE": "fast", "LEVEL": "2"}},
}


def getter(kind: str, name: str) -> Json | None:
    return OBJECTS.get((kind, name))


def env_of(container: Json, mounts: dict[str, Path] | None = None) -> dict[str, str]:
    return resolve_env(
        container, POD, getter, pod_ip="127.0.3.4", node_name="dev", mounts=mounts or {}, base={"PATH": "/bin"}
    )


@pytest.mark.parametrize(
    ("spec", "fits"),
    [
        ({}, True),
        ({"nodeSelector": {"nvidia.com/gpu.present": "true"}}, True),
        ({"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}, False),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                                {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "Exists"}]},
                            ]
                        }
                    }
                }
            },
            True,
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["dev"]}
                                    ]
                                }
                            ]
                        }
                    }
                }
            },
            False,
        ),
    ],
)
def test_fits_node_honours_node_selector_and_required_affinity(spec: Json, fits: bool) -> None:
    reason = fits_node({"spec": spec}, LABELS)
    assert (reason is None) == fits
    if not fits:
        assert "development node" in str(reason)


def test_env_resolves_secrets_configmaps_and_downward_api() -> None:
    env = env_of(
        {
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "accessKey"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {
                    "name": "RANK",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                    },
                },
                {"name": "URL", "value": "http://$(POD_IP):8080/$(UNKNOWN)/$$(POD_IP)"},
            ],
        }
    )
    assert env["AWS_ACCESS_KEY_ID"] == "AK"
    assert env["MODE"] == "fast"
    assert env["CFG_LEVEL"] == "2"
    assert (env["POD_NAME"], env["POD_NAMESPACE"], env["POD_IP"], env["RANK"]) == ("trainer-0", "ml", "127.0.3.4", "3")
    assert env["URL"] == "http://127.0.3.4:8080/$(UNKNOWN)/$(POD_IP)"
    assert env["PATH"] == "/bin"


def test_env_value_wins_over_env_from() -> None:
    env = env_of({"envFrom": [{"configMapRef": {"name": "cfg"}}], "env": [{"name": "MODE", "value": "slow"}]})
    assert env["MODE"] == "slow"


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}, 'secret "missing" not found'),
        (
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "nope"}}},
            'couldn\'t find key nope in secret "s3"',
        ),
        ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.os"}}}, "fieldRef 'spec.os' is not supported"),
    ],
)
def test_env_errors_name_what_is_missing(var: Json, message: str) -> None:
    with pytest.raises(EnvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        env_of({"env": [var]})


def test_optional_refs_are_skipped_when_missing() -> None:
    env = env_of(
        {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k", "optional": True}}}]}
    )
    assert "X" not in env


def test_env_values_under_a_mount_path_point_at_the_volume_directory() -> None:
    mounts = {"/models": Path("/tmp/pod/volumes/models"), "/models/cache": Path("/tmp/pod/volumes/cache")}
    env = env_of(
        {
            "env": [
                {"name": "A", "value": "/models"},
                {"name": "B", "value": "/models/v3/weights"},
                {"name": "C", "value": "/models/cache/x"},
                {"name": "D", "value": "/modelsX"},
            ]
        },
        mounts,
    )
    assert env["A"] == "/tmp/pod/volumes/models"
    assert env["B"] == "/tmp/pod/volumes/models/v3/weights"
    assert env["C"] == "/tmp/pod/volumes/cache/x"
    assert env["D"] == "/modelsX"
    assert rewrite_mounts("/other", mounts) == "/other"


def test_node_provided_paths_are_not_rewritten_even_under_a_mount_path() -> None:
    env = resolve_env(
        {"env": [{"name": "TMPDIR", "value": "/tmp"}]},
        POD,
        getter,
        pod_ip="127.0.3.4",
        node_name="dev",
        mounts={"/tmp": Path("/work/pod/volumes/tmp")},
        base={"KUBECONFIG": "/tmp/devnode/pod/serviceaccount.kubeconfig"},
    )
    assert env["KUBECONFIG"] == "/tmp/devnode/pod/serviceaccount.kubeconfig"
    assert env["TMPDIR"] == "/work/pod/volumes/tmp"


def test_expand_leaves_unknown_references() -> None:
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"


@pytest.mark.parametrize(
    ("outcomes", "restarting", "phase"),
    [
        ([None], [False], "Running"),
        ([0, None], [False, False], "Running"),
        ([0, 0], [False, False], "Succeeded"),
        ([0, 1], [False, False], "Failed"),
        ([1], [True], "Running"),
    ],
)
def test_pod_phase(outcomes: list[int | None], restarting: list[bool], phase: str) -> None:
    assert pod_phase("Never", outcomes, restarting) == phase


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True), ("Never", 1, False)],
)
def test_restart_policy(policy: str, code: int, restart: bool) -> None:
    assert should_restart(policy, code) is restart


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(n) for n in range(1, 10)]
    assert delays[:3] == [1.0, 2.0, 4.0]
    assert max(delays) == 40.0
    assert delays == sorted(delays)
