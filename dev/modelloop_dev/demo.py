"""``make demo``: the whole retraining loop on one machine, no Docker, and the stack the e2e test drives.

Starts a real control plane (etcd, kube-apiserver, kube-controller-manager) and MinIO, the
development node (which runs the Pods as local processes), the operator, and the example serving
Deployment (model server + reload sidecar, 2 replicas); seeds the base dataset, applies a
RetrainPolicy, and then plays production: a load generator calls both replicas throughout while
reviewers post feedback. The base set lacks almost every 8 (:mod:`modelloop_dev.demodata`), so v1
gets production's 8s wrong; the operator bootstraps v1, the reviewers' corrections trigger v2, which
learns the 8s from them and must beat v1 on the holdout to pass verification. Verified, v2 enters the
shadow stage (the default first stage of a rollout): both replicas score it beside v1 on live requests,
answering nobody, while reviewers go on reviewing; each review labels both models, and the paired
tally (both right, only v1 right, only v2 right, both wrong) is printed as it grows until the
operator's paired test promotes v2, which is then hot-swapped into both replicas; a last round of
reviews measures v2 live. Progress (epochs, gates, shadow tally, rollout n/m) and timings are printed
as they happen, then a summary with both versions' live accuracy and the kubectl commands to look around.

:class:`LoopStack` is the part shared with ``tests/e2e``: everything above the control plane and
MinIO, which the tests get from their fixtures and the demo starts itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from modelloop.api import constants as c
from modelloop_dev import demodata
from modelloop_dev.devnode import DevNodeProcess, Json, Kube, KubeError, load_kubeconfig
from modelloop_dev.loadgen import LoadGenerator, ReviewResult, review
from modelloop_dev.processes import ManagedProcess, free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
SERVING_EXAMPLE = REPO / "examples" / "serving-deployment.yaml"
KubectlFn = Callable[..., "subprocess.CompletedProcess[str]"]


class StackError(RuntimeError):
    """A step of the loop did not happen in time; the message says which and where to look."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, *, hint: str = "", every_s: float = 0.5) -> T:
    """Polls ``probe`` until it returns something truthy; the error names ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise StackError(
                f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}. {hint}".strip()
            )
        time.sleep(every_s)


@dataclass(frozen=True)
class S3Access:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {
            c.ENV_S3_ENDPOINT: self.endpoint,
            c.ENV_S3_SECURE: "false",
            c.ENV_ACCESS_KEY: self.access_key,
            c.ENV_SECRET_KEY: self.secret_key,
            c.ENV_BUCKET: self.bucket,
        }


def policy_spec(
    s3: S3Access,
    *,
    model: str,
    dataset: str,
    deployment: str | None,
    trainer_secret: str,
    epochs: int = 3,
    min_samples: int = 20,
    beat_margin: float = -0.05,
    rollout: Json | None = None,
) -> Json:
    """A RetrainPolicy spec sized for 2 CPU cores: few epochs, gates the small digits net can pass.

    ``beat_margin`` -0.05 (the tests' default) lets a candidate within 5 points of the active version
    through: on the full base set v1 is as good as the corrections make v2, the holdout is small (a few
    hundred digits), and a gate that flips on noise would make those tests flaky. The demo's v1 lacks a
    class, so the demo requires v2 to be better.

    ``rollout``: ``spec.rollout`` when given, else the defaults (the shadow stage on: a verified v2 is
    held until reviews of live answers decide).
    """
    return {
        "model": model,
        "storage": {
            "endpoint": s3.endpoint,
            "tls": {"enabled": False},  # the demo's MinIO serves plain HTTP on loopback
            "bucket": s3.bucket,
            "trainerCredentials": {"secretName": trainer_secret},
        },
        "dataset": {"path": dataset},
        "triggers": {"feedback": {"minSamples": min_samples, "minInterval": "1s"}, "checkIntervalSeconds": 5},
        "training": {
            "image": "modelloop/trainer:dev",
            "gpusPerWorker": 1,
            "backoffLimit": 1,
            "hyperparameters": {"epochs": epochs, "batchSize": 32, "learningRate": 0.01, "checkpointInterval": 1},
        },
        "verification": {
            "gates": {
                "minValidationAccuracy": 0.80,
                "minHoldoutAccuracy": 0.80,
                "mustBeatActive": True,
                "beatMargin": beat_margin,
                "maxLatencyP95Ms": 500,
                "maxMemoryMiB": 4096,
                "minThroughputRps": 10,
            }
        },
        "serving": {"deployment": deployment, "rolloutTimeout": "5m"} if deployment else {},
        **({"rollout": rollout} if rollout is not None else {}),
    }


DEMO_BEAT_MARGIN = 0.0
"""v2 must score at least v1's holdout accuracy: v1 lacks the 8s, so v2 beats it by several points."""

DEMO_SHADOW: Json = {"enabled": True, "minReviews": 100, "margin": 0.02, "alpha": 0.05, "maxDuration": "30m"}
"""The demo's shadow stage: the defaults but ``minReviews`` (200) halved and ``maxDuration`` (7d) cut, to fit a
demo; the margin and the error rate are the product's."""


class PolicyView:
    """One RetrainPolicy as a user sees it through the API: its versions, Jobs and serving Pods.

    Shared by the development stack below and the cluster tier, which drives a real node instead.
    """

    def __init__(self, kube: Kube, namespace: str, policy: str, deployment: str) -> None:
        self.kube, self.ns, self.policy, self.deployment = kube, namespace, policy, deployment

    def check_alive(self) -> None:
        """Raises when something the waits depend on has died (nothing to check here)."""

    def hint(self) -> str:
        """Where to look when a wait times out."""
        return ""

    def patch_policy_spec(self, patch: Json) -> None:
        self.kube.request(
            "PATCH",
            f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{self.ns}/{c.RETRAINPOLICY_PLURAL}/{self.policy}",
            {"spec": patch},
            content_type="application/merge-patch+json",
        )

    def annotate_policy(self, key: str, value: str) -> None:
        self.kube.request(
            "PATCH",
            f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{self.ns}/{c.RETRAINPOLICY_PLURAL}/{self.policy}",
            {"metadata": {"annotations": {key: value}}},
            content_type="application/merge-patch+json",
        )

    # -- observation
    def rp(self) -> Json:
        return self.kube.get(f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{self.ns}/{c.RETRAINPOLICY_PLURAL}/{self.policy}")

    def mvs(self) -> dict[str, Json]:
        items = self.kube.get(
            f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{self.ns}/{c.MODELVERSION_PLURAL}",
            labelSelector=f"{c.LABEL_POLICY}={self.policy}",
        )["items"]
        return {str(mv["spec"]["version"]): mv for mv in items}

    def mv_phase(self, version: str) -> str | None:
        mv = self.mvs().get(version)
        return None if mv is None else (mv.get("status") or {}).get("phase")

    def jobs(self) -> list[Json]:
        items: list[Json] = self.kube.get(f"/apis/batch/v1/namespaces/{self.ns}/jobs")["items"]
        return items

    def serving_pods(self) -> list[Json]:
        dep = self.kube.get(f"/apis/apps/v1/namespaces/{self.ns}/deployments/{self.deployment}")
        selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
        pods: list[Json] = self.kube.get(f"/api/v1/namespaces/{self.ns}/pods", labelSelector=selector)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def serving_targets(self) -> list[str]:
        targets = []
        for p in self.serving_pods():
            ready = {x["type"]: x["status"] for x in (p.get("status") or {}).get("conditions") or []}
            if ready.get("Ready") == "True" and p["status"].get("podIP"):
                targets.append(f"http://{p['status']['podIP']}:8080")
        return targets

    def serving_digests(self) -> dict[str, str | None]:
        return {
            p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(c.ANNOTATION_SERVING_DIGEST)
            for p in self.serving_pods()
        }

    def wait_active(self, version: str, timeout_s: float) -> Json:
        """Waits until the policy's status names ``version`` active and returns that status.

        The operator marks the ModelVersion Active before kopf writes the policy's status, so a
        reader who saw the version Active can still, for a moment, read the policy's older status.
        """

        def probe() -> Json | None:
            status: Json = self.rp().get("status") or {}
            return status if status.get("activeVersion") == version else None

        return wait_for(f"{self.policy} status.activeVersion to be {version}", probe, timeout_s)

    def wait_phase(
        self, version: str, phases: set[str], timeout_s: float, on_tick: Callable[[], None] | None = None
    ) -> Json:
        """Waits until ModelVersion ``version`` reaches one of ``phases``; fails fast if it fails or is rejected."""
        terminal = {"Failed", "Rejected"}

        def probe() -> Json | None:
            if on_tick is not None:
                on_tick()
            self.check_alive()
            mv = self.mvs().get(version)
            phase = None if mv is None else (mv.get("status") or {}).get("phase")
            if phase in phases:
                return mv
            if phase in terminal - phases:
                status = (mv or {}).get("status") or {}
                raise StackError(
                    f"{self.policy}-{version} ended {phase}, not {sorted(phases)}: {status.get('message')}"
                )
            return None

        return wait_for(
            f"ModelVersion {version} to reach {sorted(phases)}",
            probe,
            timeout_s,
            hint=self.hint(),
        )

    def wait_serving(self, digest: str, timeout_s: float) -> dict[str, str | None]:
        def probe() -> dict[str, str | None] | None:
            digests = self.serving_digests()
            return digests if digests and all(d == digest for d in digests.values()) else None

        return wait_for(f"every serving replica to report {digest[:19]}…", probe, timeout_s)


def reviewer_service_account(docs: list[Json]) -> str:
    """The ServiceAccount the serving example lets review: bound to the Role that grants retrainpolicies/feedback."""
    roles = {
        d["metadata"]["name"]
        for d in docs
        if d.get("kind") == "Role"
        and any("retrainpolicies/feedback" in (r.get("resources") or []) for r in d.get("rules") or [])
    }
    for d in docs:
        if d.get("kind") == "RoleBinding" and d["roleRef"]["name"] in roles:
            for subject in d.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    return str(subject["name"])
    raise StackError(f"{SERVING_EXAMPLE} binds no ServiceAccount to a Role granting create on retrainpolicies/feedback")


class LoopStack(PolicyView):
    """Everything above a control plane and MinIO: devnode, operator, serving, dataset, policy."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        kubectl: KubectlFn,
        s3: S3Access,
        namespace: str,
        workdir: Path,
        model: str = "digits",
        policy: str = "digits",
        dataset: str = "datasets/digits",
        devnode_name: str | None = None,
    ) -> None:
        self.kubeconfig, self.kubectl, self.s3 = Path(kubeconfig), kubectl, s3
        self.ns, self.workdir = namespace, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model, self.policy, self.dataset = model, policy, dataset
        super().__init__(
            Kube(load_kubeconfig(self.kubeconfig), self.workdir / ".creds"), namespace, policy, "digits-server"
        )
        self.devnode = DevNodeProcess(
            self.kubeconfig,
            self.workdir / "devnode",
            name=devnode_name or f"devnode-{namespace}",
            namespaces=[namespace],
        )
        self.operator: ManagedProcess | None = None
        self.trainer_secret = "modelloop-trainer-s3"
        self.serving_secret = "modelloop-serving-s3"

    def hint(self) -> str:
        return f"operator log: {self.workdir / 'operator.log'}; pod logs: {self.devnode.workdir}"

    def check_alive(self) -> None:
        if self.operator is not None and not self.operator.alive():
            raise StackError(f"the operator exited ({self.operator.returncode()}):\n{self.operator.log_tail()}")

    # -- processes
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def start_devnode(self) -> None:
        self.devnode.start()

    def start_operator(self) -> ManagedProcess:
        env = self.base_env() | {
            "MODELLOOP_METRICS_PORT": str(free_port()),
            "MODELLOOP_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
        }
        argv = [str(Path(sys.executable).parent / "modelloop-operator"), "--standalone", "--namespace", self.ns]
        self.operator = ManagedProcess("operator", argv, self.workdir / "operator.log", env=env).start()
        return self.operator

    def kill_operator(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would: no shutdown handler runs."""
        if self.operator is not None:
            self.operator.kill_now()
            self.operator.stop()

    def close(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.devnode.stop()
        with contextlib.suppress(KubeError):
            self.kube.request("DELETE", f"/api/v1/nodes/{self.devnode.name}")

    # -- setup
    def create_secrets(self) -> None:
        """Trainer (read-write) and serving credentials. In this dev setup both are MinIO's root keys."""
        for name in (self.trainer_secret, self.serving_secret):
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": self.ns},
                "data": {
                    "accessKey": base64.b64encode(self.s3.access_key.encode()).decode(),
                    "secretKey": base64.b64encode(self.s3.secret_key.encode()).decode(),
                },
            }
            with contextlib.suppress(KubeError):
                self.kube.request("DELETE", f"/api/v1/namespaces/{self.ns}/secrets/{name}")
            self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/secrets", body)

    def seed_dataset(self, plugin: str | None = None) -> float:
        """Uploads the base dataset; ``plugin`` (``module:Class``) chooses whose, the example's by default."""
        started = time.monotonic()
        env = self.base_env() | self.s3.env() | {c.ENV_DATASET: self.dataset, c.ENV_MODEL: self.model}
        trainer = str(Path(sys.executable).parent / "modelloop-trainer")
        result = subprocess.run(
            [trainer, "seed-dataset", "--dataset", self.dataset, *(["--plugin", plugin] if plugin else [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"modelloop-trainer seed-dataset failed ({result.returncode}): {result.stderr[-2000:]}")
        return time.monotonic() - started

    def serving_manifests(self) -> list[Json]:
        """The example serving Deployment, pointed at this namespace, bucket, policy and Secret."""
        docs = [d for d in yaml.safe_load_all(SERVING_EXAMPLE.read_text()) if d]
        overrides = {
            c.ENV_S3_ENDPOINT: self.s3.endpoint,
            c.ENV_S3_SECURE: "false",
            c.ENV_BUCKET: self.s3.bucket,
            c.ENV_MODEL: self.model,
            "MODELLOOP_POLICY": self.policy,
        }
        for doc in docs:
            if doc.get("kind") == "ClusterRoleBinding":
                # cluster-scoped: one per stack, or a second stack would take the first one's binding
                doc["metadata"]["name"] = f"{self.ns}-{doc['metadata']['name']}"
                for subject in doc.get("subjects") or []:
                    subject["namespace"] = self.ns
                continue
            doc.setdefault("metadata", {})["namespace"] = self.ns
            if doc.get("kind") == "Deployment":
                self.deployment = doc["metadata"]["name"]
                pod = doc["spec"]["template"]["spec"]
                for container in [*pod.get("initContainers", []), *pod["containers"]]:
                    for var in container.get("env") or []:
                        if var["name"] in overrides:
                            var.pop("valueFrom", None)
                            var["value"] = overrides[var["name"]]
                        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                        if ref is not None:
                            ref["name"] = self.serving_secret
                            ref["key"] = "secretKey" if var["name"] == c.ENV_SECRET_KEY else "accessKey"
            if doc.get("kind") == "RoleBinding":
                for subject in doc.get("subjects") or []:
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = self.ns
            if doc.get("kind") == "Role":
                for rule in doc.get("rules") or []:
                    resources = rule.get("resources") or []
                    if any(r.split("/")[0] == "retrainpolicies" for r in resources) and rule.get("resourceNames"):
                        rule["resourceNames"] = [self.policy]
        return docs

    def apply(self, docs: list[Json]) -> None:
        text = yaml.safe_dump_all(docs)
        result = self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-n", self.ns, "-f", "-", input=text, check=False
        )
        if result.returncode != 0:
            raise StackError(f"kubectl apply failed: {result.stderr.strip()}")

    def deploy_serving(self) -> None:
        self.apply(self.serving_manifests())

    def apply_policy(self, spec: Json) -> None:
        self.apply(
            [
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.RETRAINPOLICY_KIND,
                    "metadata": {"name": self.policy, "namespace": self.ns},
                    "spec": spec,
                }
            ]
        )

    def reviewer_token(self) -> str:
        """A token of the example's review application, minted for the audience reviews need."""
        docs = [d for d in yaml.safe_load_all(SERVING_EXAMPLE.read_text()) if d]
        sa = reviewer_service_account(docs)
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [c.REVIEW_AUDIENCE]},
        }
        answer = self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        return str(answer["status"]["token"])

    def review(self, n: int, seed: int = 3) -> ReviewResult:
        targets = wait_for("a ready serving replica", self.serving_targets, 120)
        return review(targets, n, seed=seed, token=self.reviewer_token())

    def load(self, concurrency: int = 4) -> LoadGenerator:
        return LoadGenerator(self.serving_targets, concurrency=concurrency).start()


# ---------------------------------------------------------------------------------------------
# make demo


class Progress:
    """Prints what changed in the policy and its versions since the last look (epochs, gates, rollout)."""

    def __init__(self, stack: LoopStack, started: float) -> None:
        self.stack, self.started = stack, started
        self.seen: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def tick(self) -> None:
        try:
            mvs = self.stack.mvs()
            rp = self.stack.rp()
        except KubeError:
            return
        for version, mv in sorted(mvs.items(), key=lambda kv: int(kv[0][1:])):
            st = mv.get("status") or {}
            self._once(
                f"{version}/phase", st.get("phase"), f"{version}: {st.get('phase')} {st.get('message') or ''}".rstrip()
            )
            prog = st.get("progress") or {}
            if prog.get("epoch"):
                acc = prog.get("validationAccuracy")
                acc_s = f", validation accuracy {acc:.3f}" if isinstance(acc, int | float) else ""
                loss = prog.get("loss")
                loss_s = f", loss {loss:.3f}" if isinstance(loss, int | float) else ""
                self._once(
                    f"{version}/epoch",
                    prog.get("epoch"),
                    f"{version}: training epoch {prog.get('epoch')}/{prog.get('epochs')}{loss_s}{acc_s}",
                )
            gates = st.get("gates") or []
            if gates:
                lines = ", ".join(
                    f"{g['name']} {'ok' if g['passed'] else 'FAILED'} ({g.get('message') or g.get('value')})"
                    for g in gates
                )
                self._once(
                    f"{version}/gates", json.dumps(gates, sort_keys=True), f"{version}: verification gates: {lines}"
                )
        rst = rp.get("status") or {}
        shadow = rst.get("shadow") or {}
        if shadow.get("version") and shadow_reviews(shadow):
            cells = [shadow.get(cell) for cell in SHADOW_CELLS]
            self._once(
                "shadow", json.dumps([shadow.get("version"), *cells, shadow.get("verdict")]), describe_shadow(shadow)
            )
        for cond in rst.get("conditions") or []:
            if cond.get("type") in ("ShadowStage", "CanaryStage") and cond.get("status") == "False":
                self._once(
                    f"{cond['type']}/decided",
                    f"{cond.get('reason')} {cond.get('message')}",
                    f"{cond['type']} decided ({cond.get('reason')}): {cond.get('message')}",
                )
        rollout = rst.get("rollout") or {}
        desired = (rst.get("desired") or {}).get("version")
        if desired:
            self._once(
                "rollout",
                f"{desired} {rollout.get('summary')}",
                f"rollout of {desired}: {rollout.get('summary') or '0/?'} replicas serving it",
            )

    def _once(self, key: str, value: Any, text: str) -> None:
        if value is not None and self.seen.get(key) != value:
            self.seen[key] = value
            self.say(text)


SHADOW_CELLS = ("bothRight", "onlyActive", "onlyCandidate", "bothWrong")


def shadow_reviews(shadow: Json) -> int:
    """Reviews tallied in ``status.shadow`` (each labels both the active version and the candidate)."""
    return sum(int(shadow.get(cell) or 0) for cell in SHADOW_CELLS)


def shadow_accuracies(shadow: Json) -> tuple[float, float] | None:
    """(active, candidate) accuracy on the same reviewed requests, from the paired tally."""
    n = shadow_reviews(shadow)
    if not n:
        return None
    both = int(shadow.get("bothRight") or 0)
    return (both + int(shadow.get("onlyActive") or 0)) / n, (both + int(shadow.get("onlyCandidate") or 0)) / n


def describe_shadow(shadow: Json) -> str:
    """One line: the paired tally by cell, both accuracies on those requests, the verdict."""
    active, candidate = shadow.get("activeVersion") or "active", shadow.get("version")
    cells = {cell: int(shadow.get(cell) or 0) for cell in SHADOW_CELLS}
    acc = shadow_accuracies(shadow)
    accs = f"; accuracy on them: {active} {acc[0]:.3f}, {candidate} {acc[1]:.3f}" if acc else ""
    verdict = shadow.get("verdict") or "Collect"
    return (
        f"shadow tally of {candidate} vs {active} after {shadow_reviews(shadow)} paired reviews: both right"
        f" {cells['bothRight']}, only {active} right {cells['onlyActive']}, only {candidate} right"
        f" {cells['onlyCandidate']}, both wrong {cells['bothWrong']}{accs} -> {verdict}"
    )


def run_shadow_stage(
    stack: LoopStack, progress: Progress, version: str, round_size: int, max_reviews: int, seed: int
) -> tuple[ReviewResult, Json]:
    """Reviewers go on reviewing the active version's live answers while ``version`` is scored in the shadow,
    a round at a time, until the operator's paired test promotes or rejects it; the reviews posted and the
    final tally. Each round's answers are all given before its reviews are posted (:func:`review`), so the
    replica that answered has scored the candidate too and every review labels both."""
    posted = ReviewResult(0, 0, 0)
    rounds = 0
    while True:
        phase = stack.mv_phase(version)
        if phase in ("Promoting", "Active", "Rejected"):
            break
        if posted.reviewed >= max_reviews:
            raise StackError(
                f"{version} still undecided in the shadow stage after {posted.reviewed} reviews; "
                f"status.shadow: {(stack.rp().get('status') or {}).get('shadow')}"
            )
        before = shadow_reviews((stack.rp().get("status") or {}).get("shadow") or {})
        got = stack.review(round_size, seed=seed + rounds)
        rounds += 1
        posted = ReviewResult(
            posted.reviewed + got.reviewed, posted.corrections + got.corrections, posted.failed + got.failed
        )

        def counted(before: int = before) -> bool:
            progress.tick()
            shadow = (stack.rp().get("status") or {}).get("shadow") or {}
            return shadow_reviews(shadow) > before or stack.mv_phase(version) in ("Promoting", "Active", "Rejected")

        wait_for(
            f"the operator to tally round {rounds} of reviews of {version} in the shadow",
            counted,
            90,
            hint=stack.hint(),
        )

    def decided() -> Json | None:
        # the ModelVersion is marked during the operator's pass, the policy's status written at its end
        shadow: Json = (stack.rp().get("status") or {}).get("shadow") or {}
        return shadow if shadow.get("version") == version and shadow.get("verdict") in ("Promote", "Reject") else None

    final = wait_for(f"status.shadow to record the decision on {version}", decided, 60, hint=stack.hint())
    progress.tick()
    return posted, final


def _run_demo(args: argparse.Namespace) -> int:
    from modelloop_dev.controlplane import ControlPlane
    from modelloop_dev.minio import MinioServer
    from modelloop_dev.processes import locate_tools

    t0 = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="modelloop-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {text}", flush=True)

    say(f"modelloop demo: everything runs on this machine as local processes; logs in {workdir}")
    bin_dir = locate_tools(REPO)
    cp = ControlPlane(bin_dir, workdir / "controlplane")
    store_server = MinioServer(bin_dir, workdir / "minio")
    stack: LoopStack | None = None
    load: LoadGenerator | None = None
    try:
        t = time.monotonic()
        cp.start()
        store_server.start()
        timings["control plane + MinIO"] = time.monotonic() - t
        say(
            f"control plane at {cp.server} and MinIO at {store_server.endpoint} ready ({timings['control plane + MinIO']:.1f}s)"
        )
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        ns, bucket = "modelloop-demo", "modelloop-demo"
        cp.kubectl("create", "namespace", ns)
        store_server.store(bucket)
        s3 = S3Access(store_server.endpoint, store_server.access_key, store_server.secret_key, bucket)
        stack = LoopStack(
            kubeconfig=cp.kubeconfig,
            kubectl=cp.kubectl,
            s3=s3,
            namespace=ns,
            workdir=workdir,
            devnode_name="modelloop-devnode",
        )
        stack.start_devnode()
        say("development node registered (it stands in for kubelets: Pods run as local processes)")
        stack.create_secrets()
        timings["seed dataset"] = stack.seed_dataset(demodata.PLUGIN)
        say(
            f"base dataset seeded to s3://{bucket}/{stack.dataset}/ ({timings['seed dataset']:.1f}s): it holds only"
            f" {demodata.KEPT} training samples of the digit {demodata.SCARCE_CLASS}, which production traffic has"
        )
        stack.deploy_serving()
        stack.start_operator()
        say("operator started; serving Deployment applied (2 replicas: model server + reload sidecar)")
        t = time.monotonic()
        stack.apply_policy(
            policy_spec(
                s3,
                model=stack.model,
                dataset=stack.dataset,
                deployment=stack.deployment,
                trainer_secret=stack.trainer_secret,
                epochs=args.epochs,
                min_samples=args.min_corrections,
                beat_margin=DEMO_BEAT_MARGIN,
                rollout={"shadow": DEMO_SHADOW},
            )
        )
        progress = Progress(stack, t0)
        say(f"RetrainPolicy {stack.policy} applied: the operator bootstraps v1 from the base dataset")
        stack.wait_phase("v1", {"Active"}, args.timeout, on_tick=progress.tick)
        timings["v1 active"] = time.monotonic() - t
        say(f"v1 is Active on every replica ({timings['v1 active']:.1f}s after the policy was applied)")
        load = stack.load(concurrency=4)
        say("load generator started: 4 clients calling both replicas for the rest of the demo")
        t = time.monotonic()
        result = stack.review(args.reviews)
        live = {"v1": result}
        say(
            f"reviewers posted {result.reviewed} reviews of v1's live answers, {result.corrections} of them corrections"
            f" (v1 live accuracy {_live(result)})"
        )
        t_feedback = time.monotonic()
        stack.wait_phase(
            "v2", {"Training", "Verifying", "Verified", "Promoting", "Active"}, args.timeout, on_tick=progress.tick
        )
        # Reviews flushed after v2's feedback snapshot would start v3 right after; one round is the demo.
        stack.patch_policy_spec({"triggers": {"feedback": {"minInterval": "24h"}}})
        stack.wait_phase("v2", {"Verified", "Promoting", "Active"}, args.timeout, on_tick=progress.tick)
        timings["feedback → v2 verified"] = time.monotonic() - t_feedback
        say(
            "v2 passed verification and is held in the shadow stage: both replicas score it beside v1 on every live"
            " request, answering nobody; reviewers keep reviewing v1's answers, and each review labels both models"
        )
        t = time.monotonic()
        in_shadow, shadow = run_shadow_stage(
            stack, progress, "v2", args.shadow_round, args.shadow_max_reviews, seed=101
        )
        timings["shadow stage (reviews → decision)"] = time.monotonic() - t
        live["v1"] = ReviewResult(
            result.reviewed + in_shadow.reviewed,
            result.corrections + in_shadow.corrections,
            result.failed + in_shadow.failed,
        )
        say(
            f"the paired test decided {shadow.get('verdict')} after {in_shadow.reviewed} more reviews:"
            f" {shadow.get('message')}"
        )
        stack.wait_phase("v2", {"Active"}, args.timeout, on_tick=progress.tick)
        timings["feedback → v2 active"] = time.monotonic() - t_feedback
        tally = load.stop()
        load = None
        say(f"v2 is Active on every replica ({timings['feedback → v2 active']:.1f}s after the feedback)")
        live["v2"] = stack.review(args.reviews // 2, seed=11)
        counted = wait_for(
            "the operator to count the reviews of v2",
            lambda: _counted_live(stack.rp(), "v2", live["v2"].reviewed),
            60,
        )
        say(
            f"reviewers posted {live['v2'].reviewed} reviews of v2's answers to new inputs: v2 live accuracy"
            f" {_live(live['v2'])} (the operator's count: {_fmt(counted.get('accuracy'))} over {counted.get('reviews')})"
        )
        mvs = stack.mvs()
        paired: dict[str, str] = {}
        accs = shadow_accuracies(shadow)
        if accs is not None:
            n = shadow_reviews(shadow)
            paired["v1"] = f"on the {n} requests both scored in the shadow {accs[0]:.3f}"
            paired["v2"] = f"on the same {n} requests {accs[1]:.3f} (shadow verdict {shadow.get('verdict')})"
        print("\nSummary")
        for version, mv in sorted(mvs.items(), key=lambda kv: int(kv[0][1:])):
            metrics = (mv.get("status") or {}).get("metrics") or {}
            phase = (mv.get("status") or {}).get("phase") or "?"
            reviews = f", live accuracy {_live(live[version])}" if version in live else ""
            if version in paired:
                reviews += f", {paired[version]}"
            print(
                f"  {version}: {phase:<11} holdout accuracy {_fmt(metrics.get('holdoutAccuracy'))},"
                f" validation accuracy {_fmt(metrics.get('validationAccuracy'))}{reviews}"
            )
        print(f"  requests served during the demo: {tally.ok} ({dict(tally.by_version)}), failed: {tally.failed}")
        if tally.failures:
            print(f"  first failures: {tally.failures[:3]}")
        p95 = tally.p95_ms()
        if p95 is not None:
            print(f"  client-side p95 latency: {p95:.1f} ms")
        for name, secs in timings.items():
            print(f"  {name}: {secs:.1f}s")
        print(f"  total: {time.monotonic() - t0:.1f}s")
        print("\nLook around" + (":" if args.keep else " (run `make demo ARGS=--keep` to keep it up; it stops now):"))
        print(f"  export KUBECONFIG={cp.kubeconfig}")
        print(f"  kubectl -n {ns} get rp,mv")
        print(f"  kubectl -n {ns} describe mv {stack.policy}-v2")
        print(f"  kubectl -n {ns} annotate rp {stack.policy} {c.ANNOTATION_ROLLBACK_TO}=previous   # roll back to v1")
        print(f"  pod logs: {stack.devnode.workdir}; operator log: {workdir / 'operator.log'}")
        if args.keep:
            print("\n--keep: everything stays up until Ctrl-C")
            stopped = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stopped.set())
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            stopped.wait()
        return 0 if tally.failed == 0 else 1
    except StackError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        if stack is not None and stack.operator is not None:
            print(f"--- operator log (tail) ---\n{stack.operator.log_tail(40)}", file=sys.stderr)
        return 1
    finally:
        say("tearing down")
        if load is not None:
            load.stop()
        if stack is not None:
            stack.close()
        store_server.stop()
        cp.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelloop_dev.demo", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and data here (default: a temp dir, removed at the end)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per version (default: %(default)s)")
    parser.add_argument(
        "--reviews", type=int, default=300, help="reviews posted after v1 is live (default: %(default)s)"
    )
    parser.add_argument(
        "--min-corrections", type=int, default=10, help="corrections that trigger a retrain (default: %(default)s)"
    )
    parser.add_argument(
        "--shadow-round",
        type=int,
        default=50,
        help="reviews per round while v2 is in the shadow stage (default: %(default)s)",
    )
    parser.add_argument(
        "--shadow-max-reviews",
        type=int,
        default=1000,
        help="give up when the shadow stage is still undecided after this many reviews (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=480.0, help="seconds allowed per version (default: %(default)s)"
    )
    return _run_demo(parser.parse_args(argv))


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _live(result: ReviewResult) -> str:
    """The share of reviewed answers the reviewers confirmed, as the client saw it."""
    if not result.reviewed:
        return "n/a"
    return f"{1 - result.corrections / result.reviewed:.3f} ({result.reviewed} reviews)"


def _counted_live(rp: Json, version: str, reviews: int) -> Json | None:
    """``status.liveAccuracy`` once the operator has counted ``reviews`` reviews of ``version``."""
    live = (rp.get("status") or {}).get("liveAccuracy") or {}
    return live if live.get("version") == version and int(live.get("reviews") or 0) >= reviews else None


if __name__ == "__main__":
    sys.exit(main())
