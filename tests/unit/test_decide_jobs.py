"""The training/verification Job bodies: deterministic names, env contract, security, torchrun."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop.api.retrainpolicy import Hyperparameters, RetrainPolicySpec
from modelloop.decide.jobs import Verb, build_job, build_rendezvous_service, job_outcome


def spec(**training: Any) -> RetrainPolicySpec:
    return RetrainPolicySpec.model_validate(
        {
            "model": "digits",
            "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "trainer:1", "args": ["--quiet"], **training},
        }
    )


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_training_job() -> None:
    job = build_job(
        policy="p", spec=spec(gpusPerWorker=2, backoffLimit=4), version="v3", verb="train",
        parent_version="v2", active_version=None, feedback_through="digits/feedback/x.jsonl",
    )  # fmt: skip
    assert job["metadata"]["name"] == "p-v3-train"
    assert job["metadata"]["labels"][c.LABEL_VERSION] == "v3"
    pod = job["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    assert ctr["command"] == ["modelloop-trainer", "train", "--quiet"]
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in ctr["volumeMounts"]
    assert job["spec"]["backoffLimit"] == 4
    e = env(job)
    assert e[c.ENV_PARENT_VERSION] == "v2"
    assert e[c.ENV_FEEDBACK_THROUGH] == "digits/feedback/x.jsonl"
    assert e[c.ENV_ACCESS_KEY] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert json.loads(e[c.ENV_HYPERPARAMETERS])["batchSize"] == 64
    assert c.ENV_GATES not in e
    assert "completionMode" not in job["spec"]


def test_verification_job_names_the_active_version_and_gates() -> None:
    job = build_job(
        policy="p",
        spec=spec(),
        version="v3",
        verb="verify",
        parent_version="v2",
        active_version="v2",
        feedback_through="",
    )
    assert job["metadata"]["name"] == "p-v3-verify"
    e = env(job)
    assert e[c.ENV_ACTIVE_VERSION] == "v2"
    assert json.loads(e[c.ENV_GATES])["minHoldoutAccuracy"] == 0.88
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][1] == "verify"


def test_a_retry_trains_with_the_hyperparameters_its_version_records() -> None:
    adjusted = Hyperparameters(learning_rate=5e-4, epochs=30)
    for verb in ("train", "verify"):
        job = build_job(
            policy="p", spec=spec(), version="v4", verb=verb, parent_version="v2", active_version="v2",
            feedback_through="", hyperparameters=adjusted,
        )  # fmt: skip
        got = json.loads(env(job)[c.ENV_HYPERPARAMETERS])
        assert (got["learningRate"], got["epochs"]) == (5e-4, 30), verb


def test_distributed_training_is_an_indexed_job_with_torchrun() -> None:
    s = spec(workers=3, gpusPerWorker=2)
    job = build_job(
        policy="p", spec=s, version="v1", verb="train", parent_version=None, active_version=None, feedback_through=""
    )
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 3)
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "p-v1-train"
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["torchrun", "--nnodes=3"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd and "--nproc-per-node=2" in cmd
    assert "--master-addr=p-v1-train-0.p-v1-train" in cmd
    assert cmd[-3:] == ["modelloop-trainer", "train", "--quiet"]
    svc = build_rendezvous_service("p", s, "v1")
    assert svc["metadata"]["name"] == "p-v1-train" and svc["spec"]["clusterIP"] == "None"


def test_job_outcome() -> None:
    assert job_outcome({"status": {}}) == ("Running", "")
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ("Complete", "")
    failed = {
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}]
        }
    }
    assert job_outcome(failed) == ("Failed", "DeadlineExceeded: too slow")


TEMPLATE: dict[str, Any] = {
    "labels": {"team": "vision", "cost-center": "ml-42"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
            ]
        },
    },
    "priorityClassName": "training-low",
    "imagePullSecrets": [{"name": "registry"}],
    "env": [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
    ],
    "volumes": [
        {"name": "ca", "configMap": {"name": "corp-ca"}},
        {"name": "cache", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
    ],
    "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
}


@pytest.mark.parametrize(
    ("verb", "workers"), [("train", 1), ("verify", 1), ("train", 3)], ids=["training", "verification", "indexed"]
)
def test_the_pod_template_reaches_every_pod(verb: Verb, workers: int) -> None:
    job = build_job(
        policy="p", spec=spec(podTemplate=TEMPLATE, serviceAccountName="trainer", workers=workers), version="v2",
        verb=verb, parent_version="v1", active_version="v1", feedback_through="",
    )  # fmt: skip
    tpl = job["spec"]["template"]
    pod = tpl["spec"]
    ctr = pod["containers"][0]
    assert tpl["metadata"]["labels"]["team"] == "vision"
    assert tpl["metadata"]["labels"][c.LABEL_POLICY] == "p" and tpl["metadata"]["labels"][c.LABEL_COMPONENT] == verb
    assert "team" not in job["metadata"]["labels"]  # pod template only: Job labels would let Kueue & co. claim it
    assert tpl["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod["affinity"] == TEMPLATE["affinity"]
    assert pod["priorityClassName"] == "training-low"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["serviceAccountName"] == "trainer" and pod["automountServiceAccountToken"] is False
    e = env(job)
    assert e["HTTPS_PROXY"] == "http://proxy:3128"
    assert e["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
    assert e[c.ENV_MODEL] == "digits"  # the operator's contract is still there
    assert [v["name"] for v in pod["volumes"]][:3] == ["tmp", "ca", "cache"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in pod["volumes"]
    assert ctr["volumeMounts"][:2] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True},
    ]
    assert (job["spec"].get("completionMode"), len(pod["volumes"])) == (("Indexed", 4) if workers > 1 else (None, 3))


def test_without_a_template_the_pod_is_unchanged() -> None:
    pod = build_job(
        policy="p", spec=spec(), version="v1", verb="train", parent_version=None, active_version=None,
        feedback_through="",
    )["spec"]["template"]  # fmt: skip
    assert "annotations" not in pod["metadata"]
    assert not {"affinity", "priorityClassName", "imagePullSecrets"} & pod["spec"].keys()
    assert pod["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def _with_storage(**storage: Any) -> RetrainPolicySpec:
    base = spec().model_dump(by_alias=True, exclude_none=True)
    base["storage"].update(storage)
    return RetrainPolicySpec.model_validate(base)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("verb", ["train", "verify"])
def test_the_ca_bundle_is_mounted_read_only_and_named_to_the_trainer(verb: Verb) -> None:
    s = _with_storage(tls={"caBundle": {"configMap": "trust-bundle", "key": "bundle.pem"}})
    job = build_job(policy="p", spec=s, version="v2", verb=verb, parent_version=None, active_version=None,
                    feedback_through="")  # fmt: skip
    e = env(job)
    assert (e[c.ENV_S3_SECURE], e[c.ENV_S3_CA_FILE]) == ("true", f"{c.S3_CA_DIR}/bundle.pem")
    pod = _pod(job)
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": "trust-bundle", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": c.S3_CA_DIR, "readOnly": True}


@pytest.mark.parametrize(
    ("storage", "secure"),
    [
        ({}, "true"),
        ({"secure": False}, "false"),
        ({"secure": True}, "true"),
        ({"tls": {}}, "true"),
        ({"tls": {"enabled": False}}, "false"),
    ],
)
def test_tls_without_a_bundle_uses_the_system_cas(storage: dict[str, Any], secure: str) -> None:
    job = build_job(policy="p", spec=_with_storage(**storage), version="v2", verb="train", parent_version=None,
                    active_version=None, feedback_through="")  # fmt: skip
    assert env(job)[c.ENV_S3_SECURE] == secure and c.ENV_S3_CA_FILE not in env(job)
    assert not [v for v in _pod(job)["volumes"] if "configMap" in v]


def _credentials(job: dict[str, Any]) -> tuple[Any, Any]:
    e = env(job)
    return e[c.ENV_ACCESS_KEY], e[c.ENV_SECRET_KEY]


@pytest.mark.parametrize(
    ("verifier", "verb", "secret", "keys"),
    [
        (None, "train", "s3", ("accessKey", "secretKey")),
        (None, "verify", "s3", ("accessKey", "secretKey")),
        ({"secretName": "verifier-s3"}, "train", "s3", ("accessKey", "secretKey")),
        ({"secretName": "verifier-s3"}, "verify", "verifier-s3", ("accessKey", "secretKey")),
        ({"secretName": "verifier-s3", "accessKeyKey": "id", "secretKeyKey": "key"}, "verify", "verifier-s3",
         ("id", "key")),
    ],
)  # fmt: skip
def test_the_verification_job_runs_as_the_verifier_where_the_policy_names_one(
    verifier: dict[str, str] | None, verb: Verb, secret: str, keys: tuple[str, str]
) -> None:
    s = _with_storage(**({"verifierCredentials": verifier} if verifier else {}))
    job = build_job(policy="p", spec=s, version="v2", verb=verb, parent_version="v1", active_version="v1",
                    feedback_through="")  # fmt: skip
    assert _credentials(job) == (
        {"secretKeyRef": {"name": secret, "key": keys[0]}},
        {"secretKeyRef": {"name": secret, "key": keys[1]}},
    )
    names = [x["name"] for x in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count(c.ENV_ACCESS_KEY) == 1 and names.count(c.ENV_SECRET_KEY) == 1


@pytest.mark.parametrize(("verb", "workers"), [("train", 1), ("verify", 1), ("train", 2)])
def test_a_queued_policy_submits_every_job_suspended_to_its_kueue_queue(verb: Verb, workers: int) -> None:
    """Without Kueue's webhook only the Job itself can say "wait": created suspended, Kueue unsuspends it."""
    job = build_job(
        policy="p", spec=spec(queueName="training", workloadPriorityClass="urgent", workers=workers), version="v1",
        verb=verb, parent_version=None, active_version=None, feedback_through="",
    )  # fmt: skip
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][c.KUEUE_LABEL_QUEUE_NAME] == "training"
    assert job["metadata"]["labels"][c.KUEUE_LABEL_PRIORITY_CLASS] == "urgent"
    assert job["spec"].get("completionMode") == ("Indexed" if verb == "train" and workers > 1 else None)


def test_without_a_queue_the_job_starts_at_once_with_no_kueue_label() -> None:
    job = build_job(
        policy="p", spec=spec(), version="v1", verb="train",
        parent_version=None, active_version=None, feedback_through="",
    )  # fmt: skip
    assert "suspend" not in job["spec"]
    assert not any(k.startswith("kueue.x-k8s.io/") for k in job["metadata"]["labels"])
