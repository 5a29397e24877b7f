"""The image loop end to end: photos by reference, reviews by class name, retrain, verify, hot swap.

Every part is real: control plane, MinIO, the development node running the trainer and verifier Jobs
and the serving pod (server + sidecar) as processes, the operator. The laundry example (ResNet-18,
64x64 images for CPU speed, frozen backbone, one epoch) is trained by the operator's Job as v1 and
served; predictions name photos in the bucket (``s3://<bucket>/laundry/inputs/...``); reviews carry
only the prediction id, a class name and a reason; the corrections trigger v2, which streams the
reviewed photos from the bucket, passes the per-class gate, and is hot-swapped while requests keep
flowing, none of them failing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save

from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.demo import LoopStack, S3Access
from modelloop_dev.processes import wait_for
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import generate, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

MODEL = "laundry"
DATASET = "datasets/laundry"
BASE = "base/resnet18-64.safetensors"
SIZE = 64
PLUGIN = "modelloop_trainer.examples.laundry:LaundryPlugin"
VERSION_TIMEOUT_S = 600.0
ROLLOUT_TIMEOUT_S = 180.0
REVIEWS = 6
CORRECTIONS = 3


@pytest.fixture
def stack(control_plane: Any, minio: Any, namespace: str, bucket: str, tmp_path: Path) -> Iterator[LoopStack]:
    s3 = S3Access(minio.endpoint, minio.access_key, minio.secret_key, bucket)
    loop = LoopStack(
        kubeconfig=control_plane.kubeconfig,
        kubectl=control_plane.kubectl,
        s3=s3,
        namespace=namespace,
        workdir=tmp_path,
        model=MODEL,
        policy=MODEL,
        dataset=DATASET,
    )
    try:
        loop.start_devnode()
        loop.create_secrets()
        loop.start_operator()
        yield loop
    finally:
        loop.close()


def seed(store: ObjectStore, tmp: Path) -> list[str]:
    """The generated laundry set, "pretrained" base weights, and photos to ask about under laundry/inputs/."""
    generate(tmp / "data", 30, seed=1, size=SIZE)
    upload(store, tmp / "data", DATASET)
    base = LaundryPlugin(image_size=SIZE).build().state_dict()
    store.put_bytes(BASE, save({k: v.contiguous() for k, v in base.items()}))
    generate(tmp / "photos", REVIEWS, seed=9, size=SIZE)
    refs = []
    for i, path in enumerate(sorted((tmp / "photos" / "images").iterdir())):
        key = f"{MODEL}/inputs/TASK-{i}.png"
        store.put_file(key, path, "image/png")
        refs.append(f"s3://{store.bucket}/{key}")
    return refs


def serving(stack: LoopStack) -> list[dict[str, Any]]:
    """The example Deployment serving the laundry plug-in at the trained image size, one replica."""
    docs = stack.serving_manifests()
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        doc["spec"]["replicas"] = 1
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["name"] != "server":
                continue
            env = [e for e in container["env"] if e["name"] != "MODELLOOP_PLUGIN"]
            env += [
                {"name": "MODELLOOP_PLUGIN", "value": PLUGIN},
                {"name": "MODELLOOP_LAUNDRY_IMAGE_SIZE", "value": str(SIZE)},
            ]
            container["env"] = env
    return docs


def policy(stack: LoopStack) -> dict[str, Any]:
    return {
        "model": MODEL,
        "storage": {
            "endpoint": stack.s3.endpoint,
            "tls": {"enabled": False},
            "bucket": stack.s3.bucket,
            "trainerCredentials": {"secretName": stack.trainer_secret},
        },
        "dataset": {"path": DATASET},
        "triggers": {"feedback": {"minSamples": CORRECTIONS, "minInterval": "1s"}, "checkIntervalSeconds": 5},
        "training": {
            "image": "modelloop/trainer:dev",
            "plugin": PLUGIN,
            "backoffLimit": 1,
            "hyperparameters": {
                "epochs": 1,
                "batchSize": 8,
                "learningRate": 0.001,
                "optimizer": "adamw",
                "weightDecay": 0.01,
                "learningRateSchedule": {"type": "cosine"},
                "earlyStoppingPatience": 0,
                "imageSize": SIZE,
                "freezeBackbone": True,
                "baseWeights": BASE,
            },
        },
        "retry": {"maxAttempts": 1},
        # v2 is promoted on verification: this test proves image training, serving and corrections; the shadow
        # stage (on by default) is proven with reviews of live answers in test_review_decisions_live.py
        "rollout": {"shadow": {"enabled": False}},
        "verification": {
            "gates": {
                # Random "pretrained" weights and one epoch: the accuracy gates are the per-class one,
                # which every version of a two-class model passes at 0, and the plumbing is what is proven.
                "minValidationAccuracy": 0.0,
                "minHoldoutAccuracy": 0.0,
                "mustBeatActive": False,
                "perClass": [{"class": "defect", "minRecall": 0.0, "minPrecision": 0.0}],
                "maxLatencyP95Ms": 5000,
                "maxMemoryMiB": 8192,
                "minThroughputRps": 1,
            }
        },
        "serving": {"deployment": stack.deployment, "rolloutTimeout": "5m"},
    }


def infer(client: httpx.Client, target: str, ref: str) -> httpx.Response:
    tensor = {
        "name": "input",
        "datatype": "BYTES",
        "shape": [1],
        "data": [ref],
        "parameters": {"content_type": "reference"},
    }
    return client.post(f"{target}/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, timeout=60)


class Traffic:
    """Predictions by reference in a loop, counting answers by version and every failure."""

    def __init__(self, stack: LoopStack, ref: str) -> None:
        self.stack, self.ref = stack, ref
        self.by_version: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                targets = self.stack.serving_targets()
                if not targets:
                    self.failures.append("no ready serving replica")
                    self._stop.wait(0.5)
                    continue
                try:
                    r = infer(client, targets[0], self.ref)
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code == 200:
                    self.by_version[r.headers["X-Model-Version"]] += 1
                else:
                    self.failures.append(f"{r.status_code}: {r.text[:200]}")
                self._stop.wait(0.2)  # a steady trickle, not a load test: the 2 CPUs also train v2


def predictions_by_class(target: str) -> dict[str, float]:
    text = httpx.get(f"{target}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "modelloop_server_predictions_total":
                out[s.labels["class"]] = out.get(s.labels["class"], 0.0) + s.value
    return out


def test_photos_by_reference_reviewed_by_class_name_retrain_verify_and_hot_swap(
    stack: LoopStack, minio: Any, bucket: str, tmp_path: Path
) -> None:
    store = minio.store(bucket)
    refs = seed(store, tmp_path)
    stack.apply(serving(stack))
    stack.apply_policy(policy(stack))

    v1 = stack.wait_phase("v1", {"Active"}, VERSION_TIMEOUT_S)
    v1_digest = v1["status"]["artifact"]["manifestDigest"]
    assert "recall[defect]" in {g["name"] for g in v1["status"]["gates"]}, v1["status"]["gates"]
    stack.wait_serving(v1_digest, ROLLOUT_TIMEOUT_S)
    wait_for(lambda: len(stack.serving_targets()) == 1, ROLLOUT_TIMEOUT_S, "the serving replica ready")
    [target] = stack.serving_targets()
    token = stack.reviewer_token()

    with Traffic(stack, refs[0]) as traffic, httpx.Client() as client:
        corrections = 0
        for i, ref in enumerate(refs):
            answer = infer(client, target, ref)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            [said] = next(o for o in body["outputs"] if o["name"] == "label")["data"]
            assert said in ("ok", "defect")
            correct = i >= CORRECTIONS
            label = said if correct else ("defect" if said == "ok" else "ok")
            corrections += not correct
            review = client.post(
                f"{target}/v1/feedback",
                json={"id": body["id"], "label": label, "reason": "confirmed" if correct else "missed stain"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert review.status_code == 202, review.text
            assert review.json()["correction"] == (not correct)
        assert corrections == CORRECTIONS

        v2 = stack.wait_phase("v2", {"Active"}, VERSION_TIMEOUT_S)
        v2_digest = v2["status"]["artifact"]["manifestDigest"]
        stack.wait_serving(v2_digest, ROLLOUT_TIMEOUT_S)
        wait_for(lambda: traffic.by_version["v2"] > 0, 60, "a request answered by v2")
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.by_version["v1"] > 0 and traffic.by_version["v2"] > 0, dict(traffic.by_version)

    assert v2["spec"]["parentVersion"] == "v1"
    assert v2["spec"]["feedbackSnapshot"]["corrections"] == CORRECTIONS
    metrics = store.get_json(f"{MODEL}/v2/metrics.json")
    assert (metrics["feedbackSamples"], metrics["feedbackByReference"]) == (REVIEWS, REVIEWS), metrics
    assert metrics["feedbackCorrections"] == CORRECTIONS and metrics["feedbackSkipped"] == {}
    assert metrics["trainSamples"] + metrics["validationSamples"] == 24 + REVIEWS
    gates = {g["name"]: g for g in v2["status"]["gates"]}
    assert gates["recall[defect]"]["passed"] and gates["precision[defect]"]["passed"]
    assert set(v2["status"]["metrics"]["perClassRecall"]) == {"ok", "defect"}, v2["status"]["metrics"]
    by_class = predictions_by_class(target)
    assert set(by_class) <= {"ok", "defect"} and sum(by_class.values()) > REVIEWS
