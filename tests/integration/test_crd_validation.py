"""The generated CRDs, as the real API server enforces them.

Each bad object differs from a valid one in one place and must be refused at that place, with a
message a user can act on; the examples and a fully populated status must be accepted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelloop.api.common import Condition
from modelloop.api.constants import GROUP, MODELVERSION_PLURAL, RETRAINPOLICY_PLURAL, VERSION
from modelloop.api.modelversion import ModelVersionStatus, Phase
from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus
from modelloop_dev.controlplane import ControlPlane

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("retrainpolicy-*.yaml"))
DIGEST = "sha256:" + "ab" * 32
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

VALID_RP: dict[str, Any] = {
    "model": "digits",
    "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "trainer-s3"}},
    "dataset": {"path": "datasets/digits"},
    "triggers": {"feedback": {"minSamples": 100, "urgentSamples": 500, "minInterval": "168h"}},
    "training": {
        "image": "trainer:1",
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "hyperparameters": {"batchSize": 64},
    },
    "verification": {"gates": {"minHoldoutAccuracy": 0.88, "mustBeatActive": True}},
}
VALID_MV: dict[str, Any] = {"model": "digits", "version": "v2", "parentVersion": "v1", "policy": "digits"}


@pytest.fixture
def custom(control_plane: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    api = control_plane.api_client()
    try:
        yield client.CustomObjectsApi(api)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def as_dict(response: object) -> dict[str, Any]:
    assert isinstance(response, dict), response
    return response


def put(obj: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        obj = obj.setdefault(name, {})
    obj[last] = value


def drop(obj: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        obj = obj[name]
    del obj[last]


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name.lower()}, "spec": spec}


def refusal(call: Callable[[], object]) -> tuple[str, set[str]]:
    """The API server's message and the fields it names, for a call that must be refused as invalid.

    Leaves out the server's note that it skipped CEL rules because of other errors: not a field.
    """
    with pytest.raises(ApiException) as caught:
        call()
    status = json.loads(caught.value.body or "{}")
    if caught.value.status == 400:  # strict field validation refuses unknown fields before validation
        assert "strict decoding error" in status["message"], status
        return status["message"], set()
    assert caught.value.status == 422, status
    causes = status["details"]["causes"]
    return status["message"], {c.get("field", "") for c in causes if "were not checked" not in c["message"]}


Edit = Callable[[dict[str, Any]], None]


def setting(**paths: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        for dotted, value in paths.items():
            put(spec, dotted.replace("__", "."), value)

    return edit


# (spec edit, field the server must name, words its message must contain)
RP_CASES: dict[str, tuple[Edit, str, str]] = {
    "urgent-below-min": (
        setting(triggers__feedback__urgentSamples=50),
        "spec.triggers.feedback.urgentSamples",
        "urgentSamples must be >= minSamples",
    ),
    "min-samples-zero": (
        setting(triggers__feedback__minSamples=0),
        "spec.triggers.feedback.minSamples",
        "greater than or equal to 1",
    ),
    "interval-not-a-duration": (
        setting(triggers__feedback__minInterval="7 days"),
        "spec.triggers.feedback.minInterval",
        "should match",
    ),
    "cron-4-fields": (setting(triggers__schedule="*/5 * * *"), "spec.triggers.schedule", "5-field cron expression"),
    "cron-6-fields": (setting(triggers__schedule="0 0 3 * * *"), "spec.triggers.schedule", "5-field cron expression"),
    "cron-minute-61": (setting(triggers__schedule="61 * * * *"), "spec.triggers.schedule", "minute field (1st)"),
    "cron-hour-25": (setting(triggers__schedule="* 25 * * *"), "spec.triggers.schedule", "hour field (2nd)"),
    "cron-step-zero": (setting(triggers__schedule="*/0 * * * *"), "spec.triggers.schedule", "minute field (1st)"),
    "cron-day-zero": (setting(triggers__schedule="0 3 0 * *"), "spec.triggers.schedule", "day-of-month field"),
    "cron-month-13": (setting(triggers__schedule="0 3 1 13 *"), "spec.triggers.schedule", "month field (4th)"),
    "cron-weekday-8": (setting(triggers__schedule="0 3 * * 8"), "spec.triggers.schedule", "day-of-week field"),
    "cron-empty-list-item": (setting(triggers__schedule="0 1,,2 * * *"), "spec.triggers.schedule", "hour field"),
    "image-uppercase-path": (setting(training__image="Trainer:1"), "spec.training.image", "not an image reference"),
    "image-with-scheme": (
        setting(training__image="https://ghcr.io/team/trainer:1"),
        "spec.training.image",
        "not an image reference",
    ),
    "image-empty-tag": (setting(training__image="ghcr.io/team/trainer:"), "spec.training.image", "e.g. ghcr.io/"),
    "image-short-digest": (setting(training__image="trainer@sha256:abc"), "spec.training.image", "image reference"),
    "check-interval-too-fast": (
        setting(triggers__checkIntervalSeconds=1),
        "spec.triggers.checkIntervalSeconds",
        "greater than or equal to 5",
    ),
    "model-not-dns-label": (setting(model="Digits_Model"), "spec.model", "should match"),
    "model-missing": (lambda spec: drop(spec, "model"), "spec.model", "Required value"),
    "bucket-uppercase": (setting(storage__bucket="My_Bucket"), "spec.storage.bucket", "should match"),
    "endpoint-with-scheme": (setting(storage__endpoint="http://minio:9000"), "spec.storage.endpoint", "should match"),
    "ca-bundle-without-tls": (
        setting(storage__tls={"enabled": False, "caBundle": {"configMap": "trust"}}),
        "spec.storage.tls.caBundle",
        "caBundle is only used over TLS",
    ),
    "ca-bundle-key-with-slash": (
        setting(storage__tls={"caBundle": {"configMap": "trust", "key": "../ca.crt"}}),
        "spec.storage.tls.caBundle.key",
        "should match",
    ),
    "credentials-missing": (
        lambda spec: drop(spec, "storage.trainerCredentials"),
        "spec.storage.trainerCredentials",
        "Required",
    ),
    "verifier-is-the-trainer": (
        setting(storage__verifierCredentials={"secretName": "trainer-s3", "accessKeyKey": "id"}),
        "spec.storage.verifierCredentials",
        "give the verifier its own identity",
    ),
    "dataset-escapes-bucket": (setting(dataset__path="../secrets"), "spec.dataset.path", "should match"),
    "dataset-absolute": (setting(dataset__path="/datasets/digits"), "spec.dataset.path", "should match"),
    "gpu-fraction": (
        setting(training__resources__limits={"nvidia.com/gpu": "0.5"}),
        "spec.training.resources.limits",
        "whole number of GPUs",
    ),
    "not-a-quantity": (
        setting(training__resources__requests={"memory": "lots"}),
        "spec.training.resources.requests",
        "Kubernetes quantity",
    ),
    "request-above-limit": (
        setting(training__resources__requests={"memory": "16Gi"}),
        "spec.training.resources.requests",
        "must not exceed the limit",
    ),
    "gpu-request-without-limit": (
        setting(training__resources__requests={"nvidia.com/gpu": "1"}),
        "spec.training.resources.requests",
        "cannot be overcommitted",
    ),
    "verification-not-a-quantity": (
        setting(verification__resources__limits={"cpu": "two"}),
        "spec.verification.resources.limits",
        "Kubernetes quantity",
    ),
    "gpus-in-two-places": (
        setting(training__gpusPerWorker=1, training__resources__limits={"nvidia.com/gpu": "1", "memory": "4Gi"}),
        "spec.training.gpusPerWorker",
        "set GPUs in one place",
    ),
    "workers-above-batch": (
        setting(training__workers=8, training__hyperparameters__batchSize=4),
        "spec.training.workers",
        "must not exceed hyperparameters.batchSize",
    ),
    "workers-zero": (setting(training__workers=0), "spec.training.workers", "greater than or equal to 1"),
    "exists-with-value": (
        setting(training__tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"}]),
        "spec.training.tolerations[0].value",
        "operator Exists matches any value",
    ),
    "toleration-seconds-without-noexecute": (
        setting(training__tolerations=[{"key": "spot", "effect": "NoSchedule", "tolerationSeconds": 30}]),
        "spec.training.tolerations[0].tolerationSeconds",
        "only applies to effect NoExecute",
    ),
    "toleration-without-key": (
        setting(training__tolerations=[{"value": "x"}]),
        "spec.training.tolerations[0].key",
        "without a key must use operator Exists",
    ),
    "toleration-bad-effect": (
        setting(training__tolerations=[{"key": "gpu", "operator": "Exists", "effect": "Sometimes"}]),
        "spec.training.tolerations[0].effect",
        "should match",
    ),
    "learning-rate-zero": (
        setting(training__hyperparameters__learningRate=0),
        "spec.training.hyperparameters.learningRate",
        "greater than 0",
    ),
    "validation-fraction-one": (
        setting(training__hyperparameters__validationFraction=1),
        "spec.training.hyperparameters.validationFraction",
        "less than 1",
    ),
    "pull-policy": (setting(training__imagePullPolicy="Sometimes"), "spec.training.imagePullPolicy", "should match"),
    "empty-command": (setting(training__command=[]), "spec.training.command", "at least 1 items"),
    "plugin-not-module-class": (setting(training__plugin="digits"), "spec.training.plugin", "should match"),
    "node-selector-value-too-long": (
        setting(training__nodeSelector={"pool": "x" * 64}),
        "spec.training.nodeSelector.pool",
        "may not be more than 63 bytes",
    ),
    "no-accuracy-gate": (
        setting(
            verification__gates={"minValidationAccuracy": None, "minHoldoutAccuracy": None, "mustBeatActive": False}
        ),
        "spec.verification.gates",
        "at least one accuracy gate must stay on",
    ),
    "margin-without-beat": (
        setting(verification__gates={"mustBeatActive": False, "beatMargin": 0.01}),
        "spec.verification.gates.beatMargin",
        "only applies with mustBeatActive",
    ),
    "margin-unreachable": (
        setting(verification__gates={"minHoldoutAccuracy": 0.95, "beatMargin": 0.1}),
        "spec.verification.gates.beatMargin",
        "must not exceed 1",
    ),
    "accuracy-above-one": (
        setting(verification__gates__minValidationAccuracy=1.5),
        "spec.verification.gates.minValidationAccuracy",
        "less than or equal to 1",
    ),
    "latency-zero": (
        setting(verification__gates__maxLatencyP95Ms=0),
        "spec.verification.gates.maxLatencyP95Ms",
        "greater than 0",
    ),
    "keep-one-version": (
        setting(retention__keepVersions=1),
        "spec.retention.keepVersions",
        "greater than or equal to 2",
    ),
    "retry-zero-attempts": (setting(retry__maxAttempts=0), "spec.retry.maxAttempts", "greater than or equal to 1"),
    "retry-too-many": (setting(retry__maxAttempts=11), "spec.retry.maxAttempts", "less than or equal to 10"),
    "retry-factor-zero": (
        setting(retry__learningRateFactor=0),
        "spec.retry.learningRateFactor",
        "greater than 0",
    ),
    "retry-negative-epochs": (setting(retry__extraEpochs=-1), "spec.retry.extraEpochs", "greater than or equal to 0"),
    "rollout-timeout": (setting(serving__rolloutTimeout="soon"), "spec.serving.rolloutTimeout", "should match"),
    "shadow-zero-duration": (
        setting(rollout__shadow={"maxDuration": "0h0m"}),
        "spec.rollout.shadow.maxDuration",
        "maxDuration must be longer than zero",
    ),
    "shadow-margin-too-wide": (
        setting(rollout__shadow={"margin": 0.6}),
        "spec.rollout.shadow.margin",
        "less than or equal to 0.5",
    ),
    "shadow-alpha-zero": (setting(rollout__shadow={"alpha": 0}), "spec.rollout.shadow.alpha", "greater than 0"),
    "canary-steps-decreasing": (
        setting(rollout__canary={"enabled": True, "steps": [50, 10]}),
        "spec.rollout.canary.steps",
        "canary steps must be strictly increasing",
    ),
    "canary-steps-repeated": (
        setting(rollout__canary={"steps": [10, 25, 25]}),
        "spec.rollout.canary.steps",
        "canary steps must be strictly increasing",
    ),
    "canary-step-100": (
        setting(rollout__canary={"steps": [10, 100]}),
        "spec.rollout.canary.steps[1]",
        "less than or equal to 99",
    ),
    "canary-step-0": (
        setting(rollout__canary={"steps": [0, 50]}),
        "spec.rollout.canary.steps[0]",
        "greater than or equal to 1",
    ),
    "canary-no-steps": (setting(rollout__canary={"steps": []}), "spec.rollout.canary.steps", "at least 1"),
    "canary-zero-duration": (
        setting(rollout__canary={"maxStepDuration": "0s"}),
        "spec.rollout.canary.maxStepDuration",
        "maxStepDuration must be longer than zero",
    ),
    "shadow-no-reviews": (
        setting(rollout__shadow={"minReviews": 0}),
        "spec.rollout.shadow.minReviews",
        "greater than or equal to 1",
    ),
    "signature-key-in-both": (
        setting(serving__signature={"publicKey": {"configMapName": "k", "secretName": "k"}}),
        "spec.serving.signature.publicKey",
        "set exactly one of configMapName and secretName",
    ),
    "signature-key-nowhere": (
        setting(serving__signature={"publicKey": {"key": "signing.pub"}}),
        "spec.serving.signature.publicKey",
        "set exactly one of configMapName and secretName",
    ),
    "signature-without-key": (setting(serving__signature={}), "spec.serving.signature.publicKey", "Required value"),
    "suspend-not-bool": (setting(suspend="yes"), "spec.suspend", "must be of type boolean"),
    "budget-zero": (
        setting(triggers__maxTrainingsPerDay=0),
        "spec.triggers.maxTrainingsPerDay",
        "greater than or equal to 1",
    ),
    "budget-too-high": (
        setting(triggers__maxTrainingsPerDay=101),
        "spec.triggers.maxTrainingsPerDay",
        "less than or equal to 100",
    ),
    "template-env-modelloop": (
        setting(training__podTemplate={"env": [{"name": "MODELLOOP_BUCKET", "value": "other"}]}),
        "spec.training.podTemplate.env[0].name",
        "env MODELLOOP_BUCKET is set by the operator",
    ),
    "template-env-credentials": (
        setting(training__podTemplate={"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}),
        "spec.training.podTemplate.env[0].name",
        "is set by the operator",
    ),
    "template-env-value-and-from": (
        setting(
            training__podTemplate={
                "env": [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
            }
        ),
        "spec.training.podTemplate.env[0].valueFrom",
        "set value or valueFrom, not both",
    ),
    "template-env-two-sources": (
        setting(training__podTemplate={"env": [{"name": "X", "valueFrom": {}}]}),
        "spec.training.podTemplate.env[0].valueFrom",
        "exactly one of secretKeyRef, configMapKeyRef, fieldRef",
    ),
    "template-volume-reserved": (
        setting(training__podTemplate={"volumes": [{"name": "tmp", "emptyDir": {}}]}),
        "spec.training.podTemplate.volumes[0].name",
        "volume name tmp is used by the operator",
    ),
    "template-volume-no-source": (
        setting(training__podTemplate={"volumes": [{"name": "data"}]}),
        "spec.training.podTemplate.volumes[0]",
        "exactly one of configMap, secret, emptyDir, persistentVolumeClaim",
    ),
    "template-mount-unknown-volume": (
        setting(training__podTemplate={"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        "spec.training.podTemplate.volumeMounts",
        "must name one of podTemplate.volumes",
    ),
    "template-mount-over-tmp": (
        setting(
            training__podTemplate={
                "volumes": [{"name": "data", "emptyDir": {}}],
                "volumeMounts": [{"name": "data", "mountPath": "/tmp/data"}],
            }
        ),
        "spec.training.podTemplate.volumeMounts[0].mountPath",
        "inside a volume the operator mounts",
    ),
    "template-label-reserved": (
        setting(training__podTemplate={"labels": {"modelloop.dev/version": "v9"}}),
        "spec.training.podTemplate.labels",
        "select the pods",
    ),
    "template-label-job-controller": (
        setting(training__podTemplate={"labels": {"batch.kubernetes.io/job-name": "x"}}),
        "spec.training.podTemplate.labels",
        "select the pods",
    ),
    "template-label-bad-key": (
        setting(training__podTemplate={"labels": {"-team": "x"}}),
        "spec.training.podTemplate.labels",
        "label keys are [prefix/]name",
    ),
    "template-annotation-reserved": (
        setting(training__podTemplate={"annotations": {"modelloop.dev/serving-version": "v1"}}),
        "spec.training.podTemplate.annotations",
        "reserved for the operator",
    ),
    "template-affinity-bad-operator": (
        setting(
            training__podTemplate={
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "gpu", "operator": "Is", "values": ["a"]}]}
                            ]
                        }
                    }
                }
            }
        ),
        "spec.training.podTemplate.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator",
        "should match",
    ),
    "template-affinity-in-without-values": (
        setting(
            training__podTemplate={
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In"}]}]
                        }
                    }
                }
            }
        ),
        "spec.training.podTemplate.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].values",
        "need values",
    ),
    "template-priority-class-not-a-name": (
        setting(training__podTemplate={"priorityClassName": "High Priority"}),
        "spec.training.podTemplate.priorityClassName",
        "should match",
    ),
    "template-duplicate-pull-secret": (
        setting(training__podTemplate={"imagePullSecrets": [{"name": "r"}, {"name": "r"}]}),
        "spec.training.podTemplate.imagePullSecrets[1]",
        "Duplicate value",
    ),
    "typo-field": (setting(trigger={"feedback": {}}), "", 'unknown field "spec.trigger"'),
    "per-class-gate-without-a-floor": (
        setting(verification__gates__perClass=[{"class": "defect"}]),
        "spec.verification.gates.perClass[0]",
        "needs minRecall, minPrecision or both",
    ),
    "per-class-gate-recall-above-1": (
        setting(verification__gates__perClass=[{"class": "defect", "minRecall": 1.2}]),
        "spec.verification.gates.perClass[0].minRecall",
        "less than or equal to 1",
    ),
    "per-class-gate-twice-for-one-class": (
        setting(
            verification__gates__perClass=[
                {"class": "defect", "minRecall": 0.8},
                {"class": "defect", "minPrecision": 0.8},
            ]
        ),
        "spec.verification.gates.perClass[1]",
        "Duplicate value",
    ),
    "per-class-gate-not-a-class-name": (
        setting(verification__gates__perClass=[{"class": "missed stain", "minRecall": 0.8}]),
        "spec.verification.gates.perClass[0].class",
        "should match",
    ),
    "optimizer-unknown": (
        setting(training__hyperparameters__optimizer="rmsprop"),
        "spec.training.hyperparameters.optimizer",
        "Unsupported value",
    ),
    "momentum-without-sgd": (
        setting(training__hyperparameters__optimizer="adamw", training__hyperparameters__momentum=0.9),
        "spec.training.hyperparameters.momentum",
        "momentum only applies to optimizer: sgd",
    ),
    "schedule-step-params-on-cosine": (
        setting(training__hyperparameters__learningRateSchedule={"type": "cosine", "gamma": 0.5}),
        "spec.training.hyperparameters.learningRateSchedule.gamma",
        "gamma only applies to type: step",
    ),
    "schedule-floor-above-the-rate": (
        setting(
            training__hyperparameters__learningRate=0.001,
            training__hyperparameters__learningRateSchedule={"type": "cosine", "minLearningRate": 0.01},
        ),
        "spec.training.hyperparameters.learningRateSchedule",
        "minLearningRate must be below learningRate",
    ),
    "image-size-too-small": (
        setting(training__hyperparameters__imageSize=16),
        "spec.training.hyperparameters.imageSize",
        "greater than or equal to 32",
    ),
    "frozen-layers-and-freeze-backbone": (
        setting(training__hyperparameters__freezeBackbone=True, training__hyperparameters__frozenLayers=2),
        "spec.training.hyperparameters.frozenLayers",
        "set freezeBackbone or frozenLayers, not both",
    ),
    "weight-decay-negative": (
        setting(training__hyperparameters__weightDecay=-0.1),
        "spec.training.hyperparameters.weightDecay",
        "greater than or equal to 0",
    ),
    "base-weights-outside-the-bucket": (
        setting(training__hyperparameters__baseWeights="/etc/passwd"),
        "spec.training.hyperparameters.baseWeights",
        "should match",
    ),
}


@pytest.mark.parametrize("case", sorted(RP_CASES))
def test_invalid_retrainpolicy_is_refused_at_the_field(case: str, custom: client.CustomObjectsApi) -> None:
    edit, field, words = RP_CASES[case]
    spec = copy.deepcopy(VALID_RP)
    edit(spec)
    message, fields = refusal(lambda: dry_run_create(custom, RETRAINPOLICY_PLURAL, body("RetrainPolicy", case, spec)))
    assert fields == ({field} if field else set()), message
    assert words in message


@pytest.mark.parametrize(
    "schedule",
    ["0 3 * * 1", "*/15 0-6,22-23 * * *", "0-59/20 * * * *", "5/15 * * * *", "0 0 1,15 * *", "0 0 L * *",
     "0 12 ? * MON-FRI", "0 0 * jan-mar sun", "0 0 * * 5#2", "59 23 31 12 7", "@daily"],
)  # fmt: skip
def test_valid_schedules_are_accepted(schedule: str, custom: client.CustomObjectsApi) -> None:
    spec = copy.deepcopy(VALID_RP)
    put(spec, "triggers.schedule", schedule)
    created = as_dict(dry_run_create(custom, RETRAINPOLICY_PLURAL, body("RetrainPolicy", "schedule", spec)))
    assert created["spec"]["triggers"]["schedule"] == schedule


@pytest.mark.parametrize(
    "image",
    ["trainer:1", "modelloop-trainer:dev", "ghcr.io/modelloop/trainer:0.1.0", "localhost:5000/team/trainer",
     "registry.example.com:443/a/b/c:v1.2-rc_3@sha256:" + "0f" * 32, "trainer@sha256:" + "a" * 64],
)  # fmt: skip
def test_valid_images_are_accepted(image: str, custom: client.CustomObjectsApi) -> None:
    spec = copy.deepcopy(VALID_RP)
    put(spec, "training.image", image)
    created = as_dict(dry_run_create(custom, RETRAINPOLICY_PLURAL, body("RetrainPolicy", "image", spec)))
    assert created["spec"]["training"]["image"] == image


def dry_run_create(custom: client.CustomObjectsApi, plural: str, obj: dict[str, Any]) -> object:
    """Full validation, nothing stored: the cases share one namespace (a fresh one each costs seconds)."""
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", plural, obj, dry_run="All", field_validation="Strict"
    )


MV_CASES: dict[str, tuple[Edit, str, str]] = {
    "parent-is-itself": (setting(parentVersion="v2"), "spec.parentVersion", "must be an earlier version than v2"),
    "parent-is-later": (setting(parentVersion="v7"), "spec.parentVersion", "parentVersion v7 must be an earlier"),
    "version-not-vN": (setting(version="2"), "spec.version", "should match"),
    "version-zero": (setting(version="v0", parentVersion=None), "spec.version", "should match"),
    "policy-missing": (lambda spec: drop(spec, "policy"), "spec.policy", "Required value"),
    "retry-of-a-first-attempt": (setting(attempt=1, retryOf="v1"), "spec.retryOf", "it needs attempt >= 2"),
    "attempt-zero": (setting(attempt=0), "spec.attempt", "greater than or equal to 1"),
}


@pytest.mark.parametrize("case", sorted(MV_CASES))
def test_invalid_modelversion_is_refused_at_the_field(case: str, custom: client.CustomObjectsApi) -> None:
    edit, field, words = MV_CASES[case]
    spec = copy.deepcopy(VALID_MV)
    edit(spec)
    message, fields = refusal(lambda: dry_run_create(custom, MODELVERSION_PLURAL, body("ModelVersion", case, spec)))
    assert fields == {field}, message
    assert words in message


def test_policy_model_is_immutable_but_the_rest_of_the_spec_is_not(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, body("RetrainPolicy", "p", copy.deepcopy(VALID_RP))
    )
    patched = as_dict(
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, "p", {"spec": {"suspend": True}}
        )
    )
    assert patched["spec"]["suspend"] is True
    message, fields = refusal(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, "p", {"spec": {"model": "other"}}
        )
    )
    assert fields == {"spec.model"}
    assert "spec.model is immutable" in message


def test_modelversion_spec_is_immutable_and_its_status_is_writable(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    spec = copy.deepcopy(VALID_MV) | {"trainingParameters": {"epochs": 20, "nested": {"lr": 0.01}}}
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, MODELVERSION_PLURAL, body("ModelVersion", "mv", spec)
    )
    message, fields = refusal(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, MODELVERSION_PLURAL, "mv", {"spec": {"trainingParameters": {"epochs": 21}}}
        )
    )
    assert fields == {"spec"}
    assert "spec is immutable" in message

    status = ModelVersionStatus.model_validate(
        {
            "phase": "Verified",
            "progress": {"epoch": 20, "epochs": 20, "loss": 0.12, "summary": "epoch 20/20"},
            "metrics": {"holdoutAccuracy": 0.93, "perClassAccuracy": {"0": 0.99, "7": 0.91}},
            "gates": [{"name": "minHoldoutAccuracy", "passed": True, "value": 0.93, "threshold": 0.88}],
            "artifact": {"uri": "s3://models/digits/v2/", "manifestDigest": DIGEST},
            "trainingJob": "digits-v2-train",
            "startTime": NOW,
            "conditions": [Condition(type="Ready", status="True", reason="Verified", last_transition_time=NOW)],
            "kopf": {"progress": {"handler": {"retries": 1}}},
        }
    )
    written = as_dict(
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            MODELVERSION_PLURAL,
            "mv",
            {"status": status.model_dump(by_alias=True, mode="json")},
        )
    )
    assert ModelVersionStatus.model_validate(written["status"]) == status
    assert written["status"]["kopf"] == {"progress": {"handler": {"retries": 1}}}, "kopf bookkeeping pruned"

    message, fields = refusal(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, MODELVERSION_PLURAL, "mv", {"status": {"phase": "Done"}}
        )
    )
    assert fields == {"status.phase"}
    assert all(phase.value in message for phase in Phase)


def test_policy_status_round_trips_and_bad_status_is_refused(custom: client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, body("RetrainPolicy", "p", copy.deepcopy(VALID_RP))
    )
    status = RetrainPolicyStatus.model_validate(
        {
            "observedGeneration": 1,
            "activeVersion": "v3",
            "previousVersion": "v2",
            "desired": {
                "version": "v3",
                "artifactURI": "s3://models/digits/v3/",
                "manifestDigest": DIGEST,
                "since": NOW,
            },
            "rollout": {"updated": 1, "total": 2, "summary": "1/2", "startedAt": NOW},
            "candidate": {
                "version": "v4",
                "artifactURI": "s3://models/digits/v4/",
                "manifestDigest": DIGEST,
                "canaryPercent": 10,
            },
            "canary": {
                "version": "v4",
                "activeVersion": "v3",
                "step": 0,
                "percent": 10,
                "stepStartedAt": NOW,
                "candidateReviews": 12,
                "candidateCorrect": 11,
                "activeReviews": 100,
                "activeCorrect": 95,
                "verdict": "Collect",
                "reason": "CollectingReviews",
                "message": "100 reviews of each version needed",
            },
            "feedback": {"cursor": "digits/feedback/x.jsonl", "pendingCorrections": 42},
            "lastTrainingTime": NOW,
            "conditions": [
                Condition(
                    type="Ready", status="True", reason="Serving", last_transition_time=NOW, observed_generation=1
                ),
                Condition(type="RolloutComplete", status="False", reason="Progressing", last_transition_time=NOW),
            ],
            "kopf": {"dummy": "x"},
        }
    )
    written = as_dict(
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            RETRAINPOLICY_PLURAL,
            "p",
            {"status": status.model_dump(by_alias=True, mode="json")},
        )
    )
    assert RetrainPolicyStatus.model_validate(written["status"]) == status

    bad_digest = {"status": {"desired": {"version": "v3", "artifactURI": "s3://m/d/v3/", "manifestDigest": "md5:00"}}}
    message, fields = refusal(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, "p", bad_digest
        )
    )
    assert fields == {"status.desired.manifestDigest"}, message

    twice = [c.model_dump(by_alias=True, mode="json") for c in status.conditions[:1]] * 2
    message, fields = refusal(
        lambda: custom.replace_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            RETRAINPOLICY_PLURAL,
            "p",
            as_dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, "p"))
            | {"status": {"conditions": twice}},
        )
    )
    assert fields == {"status.conditions[1]"}
    assert "Duplicate value" in message


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted_and_match_the_models(
    path: Path, custom: client.CustomObjectsApi, namespace: str
) -> None:
    example = yaml.safe_load(path.read_text())
    created = as_dict(
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, example, field_validation="Strict"
        )
    )
    stored = RetrainPolicySpec.model_validate(created["spec"])
    assert stored == RetrainPolicySpec.model_validate(example["spec"]), "server defaults differ from the models'"


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
