"""The training/verification Job bodies: deterministic names, env contract, security, torchrun."""

from __future__ import annotations

import json
from typing import Any

from modelloop.api import constants as c
from modelloop.api.retrainpolicy import Hyperparameters, RetrainPolicySpec
from modelloop.decide.jobs import build_job, build_rendezvous_service, job_outcome


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
