"""Promotion latency: from the desired version changing to every replica answering with it.

Three serving replicas (``modelloop-server`` + ``modelloop-sidecar`` pairs as local processes,
each with its own Pod object and loopback address) run against the real control plane and
MinIO, serving a 50 MB model. Each round does two promotions, each to a version no replica has
served:

- prefetched (the headline): ``status.candidate`` names the version first (what the operator
  writes while verification runs); once every replica's Pod carries
  ``modelloop.dev/prefetched-digest`` (that wait is reported too), ``status.desired`` moves to it
  and the candidate is cleared, as the operator does when verification passes. The clock starts
  at that write and stops when all three replicas answer ``/v1/predict`` with the new version.
- cold: ``status.desired`` moves to a version that was never a candidate, so the download is
  part of the latency. Reported as its own measurement so nothing is hidden.

Baseline: a published design deploys a new model in 45 s; the target is p95 < 2 s. (Rollback
latency is measured by a separate bench that imports the replica helpers here.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import urllib3
from safetensors.torch import save_file
from torch import Tensor, nn

from bench import report
from bench.bench_operator_scale import control_plane_and_minio, install_crds, wait_until
from modelloop.api import constants as c
from modelloop.api.artifacts import Manifest, artifact_uri, version_prefix
from modelloop.clients.artifactstore import publish_version
from modelloop.clients.objectstore import ObjectStore
from modelloop_trainer.examples.digits import MAX_PIXEL, DigitsPlugin

BASELINE_DEPLOY_S = 45.0
REPO = Path(__file__).resolve().parent.parent
TARGET_P95_S = 2.0
NAMESPACE = "promotion"
POLICY = "wide-digits"
MODEL = "wide-digits"
BUCKET = "promotion-bench"
REPLICAS = 3
PLUGIN = "bench.bench_promotion_latency:WideDigitsPlugin"


class WideDigitsNet(nn.Module):
    """The digits task with a ~50 MB network (12.5 M float32 parameters): a realistic artifact size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 3000), nn.ReLU(), nn.Linear(3000, 10))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x.reshape(-1, 64) / MAX_PIXEL)
        return out


class WideDigitsPlugin(DigitsPlugin):
    """``MODELLOOP_PLUGIN`` of the bench's servers."""

    def build(self) -> nn.Module:
        return WideDigitsNet()


# --- artifacts and objects ----------------------------------------------------------------------


def publish(store: ObjectStore, version: str, seed: int, workdir: Path) -> str:
    torch.manual_seed(seed)
    out = workdir / version
    out.mkdir()
    net = WideDigitsPlugin().build()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    (out / "metrics.json").write_text(json.dumps({"validationAccuracy": 0.0, "note": "benchmark weights"}))
    manifest = Manifest(model=MODEL, version=version, created_at=datetime.now(UTC), files=[], plugin=PLUGIN)
    return publish_version(store, manifest, out)


def candidate(version: str, digest: str) -> dict[str, Any]:
    """``status.candidate`` as the operator writes it while the version is being verified."""
    return {"version": version, "artifactURI": artifact_uri(BUCKET, MODEL, version), "manifestDigest": digest}


def desired(version: str, digest: str, reason: str) -> dict[str, Any]:
    return {**candidate(version, digest), "since": datetime.now(UTC).isoformat(), "reason": reason}


def policy_body(endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": {
            "model": MODEL,
            "storage": {
                "endpoint": endpoint,
                "bucket": BUCKET,
                "trainerCredentials": {"secretName": "s3"},
                "tls": {"enabled": False},  # the bench's MinIO serves plain HTTP
            },
            "dataset": {"path": "datasets/digits"},
            "triggers": {"feedback": {"minSamples": 10_000_000}},
            "training": {"image": "modelloop/trainer:dev", "plugin": PLUGIN},
            # a Verified version is promoted at once: these benches time the swap, not the reviews that
            # would decide the shadow stage (on by default; bench_review_decision_latency times that)
            "rollout": {"shadow": {"enabled": False}},
        },
    }


def pod_body(name: str) -> dict[str, Any]:
    """The Pod object a replica's sidecar annotates; the processes themselves run here, not on a node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": MODEL}},
        "spec": {"containers": [{"name": "server", "image": "modelloop/server:dev"}]},
    }


# --- serving replicas ---------------------------------------------------------------------------


class Replica:
    """One serving pod's two containers as local processes, sharing a model directory."""

    def __init__(self, index: int, workdir: Path, base_env: dict[str, str]) -> None:
        self.name = f"{MODEL}-{index}"
        self.host = f"127.0.1.{index + 1}"
        self.port = 8080
        self.base = f"http://{self.host}:{self.port}"
        self.dir = workdir / self.name
        (self.dir / "models").mkdir(parents=True)
        env = {
            **base_env,
            c.ENV_MODEL: MODEL,
            c.ENV_PLUGIN: PLUGIN,
            "MODELLOOP_MODEL_DIR": str(self.dir / "models"),
            "MODELLOOP_BIND_HOST": self.host,
            "MODELLOOP_PORT": str(self.port),
            "MODELLOOP_POLICY": POLICY,
            "POD_NAME": self.name,
            "POD_NAMESPACE": NAMESPACE,
        }
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        bindir = Path(sys.executable).parent
        for what in ("server", "sidecar"):
            log = (self.dir / f"{what}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [str(bindir / f"modelloop-{what}")], env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
            )
            log.close()

    def check_alive(self) -> None:
        for p, what in zip(self.procs, ("server", "sidecar"), strict=True):
            if p.poll() is not None:
                tail = (self.dir / f"{what}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{self.name} {what} exited with status {p.returncode}:\n" + "\n".join(tail))

    def tail(self, what: str, lines: int = 12) -> str:
        return "\n".join((self.dir / f"{what}.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def version(self, pool: urllib3.PoolManager) -> str | None:
        """The version that answers a prediction right now (None while no model is loaded)."""
        try:
            resp = pool.request(
                "POST",
                f"{self.base}/v1/predict",
                body=json.dumps({"input": [0.0] * 64}).encode(),
                headers={"Content-Type": "application/json"},
                timeout=5.0,
            )
        except urllib3.exceptions.HTTPError:
            return None
        if resp.status != 200:
            return None
        header = resp.headers.get("X-Model-Version")
        if header:
            return str(header)
        body = json.loads(resp.data)
        return str(body["version"]) if "version" in body else None


@contextlib.contextmanager
def replicas(workdir: Path, base_env: dict[str, str]) -> Iterator[list[Replica]]:
    reps = [Replica(i, workdir, base_env) for i in range(REPLICAS)]
    try:
        for r in reps:
            r.start()
        yield reps
    finally:
        for r in reps:
            r.stop()


def time_until_all_serve(reps: list[Replica], version: str, pool: urllib3.PoolManager, timeout: float) -> float:
    t0 = time.monotonic()

    def all_serve() -> bool:
        for r in reps:
            r.check_alive()
        return all(r.version(pool) == version for r in reps)

    try:
        wait_until(f"all {len(reps)} replicas answering with {version}", all_serve, timeout, every=0.01)
    except TimeoutError as e:
        tails = "\n".join(f"--- {r.name} {w}.log:\n{r.tail(w)}" for r in reps for w in ("sidecar", "server"))
        raise RuntimeError(f"{e}; answering now: {[r.version(pool) for r in reps]}\n{tails}") from e
    return time.monotonic() - t0


# --- the run ------------------------------------------------------------------------------------


def time_until_all_prefetched(core: Any, digest: str, timeout: float) -> float:
    """Seconds until every replica's Pod reports ``digest`` in ``modelloop.dev/prefetched-digest``."""
    t0 = time.monotonic()

    def all_prefetched() -> bool:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app={MODEL}").items
        have = [(p.metadata.annotations or {}).get(c.ANNOTATION_PREFETCHED_DIGEST) for p in pods]
        return len(have) == REPLICAS and all(h == digest for h in have)

    wait_until(f"all {REPLICAS} replicas reporting {digest[:19]}… prefetched", all_prefetched, timeout, every=0.02)
    return time.monotonic() - t0


def p95_measurement(name: str, samples: list[float], label: str, extra: dict[str, Any]) -> report.Measurement:
    p95 = report.percentile(samples, 95)
    return report.Measurement(
        name=name,
        unit="s",
        baseline=BASELINE_DEPLOY_S,
        figure=p95,
        baseline_label="published design: new model deployed in 45 s",
        figure_label=label,
        target=f"p95 < {TARGET_P95_S:g} s",
        passed=p95 < TARGET_P95_S,
        details={**report.summary(samples), "samples": samples, **extra},
    )


@contextlib.contextmanager
def serving_cluster(prefix: str) -> Iterator[tuple[Path, Any, Any]]:
    """(workdir, control plane, MinIO): the CRDs installed, the bench namespace with its S3 Secret."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_s, control_plane_and_minio(Path(tmp_s)) as (cp, s3):
        install_crds(cp, REPO / "crds")
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl(
            "-n", NAMESPACE, "create", "secret", "generic", "s3",
            f"--from-literal=accessKey={s3.access_key}", f"--from-literal=secretKey={s3.secret_key}",
        )  # fmt: skip
        yield Path(tmp_s), cp, s3


def start_pods(cp: Any, s3: Any) -> dict[str, str]:
    """Create the serving Pod objects; the environment their server + sidecar processes run with."""
    pods = {"apiVersion": "v1", "kind": "List", "items": [pod_body(f"{MODEL}-{i}") for i in range(REPLICAS)]}
    cp.kubectl("create", "-f", "-", input=json.dumps(pods))
    return {**os.environ, **s3.env(BUCKET), "KUBECONFIG": str(cp.kubeconfig), "PYTHONPATH": str(REPO)}


def run(rounds: int, timeout: float) -> list[report.Measurement]:
    from kubernetes import client as k8s

    with serving_cluster("bench-promotion-") as (tmp, cp, s3):
        store = s3.store(BUCKET)
        digests: dict[str, str] = {}

        def new_version(n: int) -> str:
            """Published before its round's clock starts; older versions leave the bucket (disk stays bounded)."""
            version = f"v{n}"
            digests[version] = publish(store, version, n, tmp)
            if n > 1:
                shutil.rmtree(tmp / version)
            if n > 3:
                store.remove_prefix(version_prefix(MODEL, f"v{n - 3}"))
            return version

        new_version(1)
        size_mb = (tmp / "v1" / "model.safetensors").stat().st_size / 1e6
        api_client = cp.api_client()
        crd = k8s.CustomObjectsApi(api_client)
        core = k8s.CoreV1Api(api_client)
        crd.create_namespaced_custom_object(
            c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, policy_body(s3.endpoint)
        )

        def set_status(status: dict[str, Any]) -> None:
            crd.patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY, {"status": status}
            )

        set_status({"desired": desired("v1", digests["v1"], "Promotion")})
        base_env = start_pods(cp, s3)
        pool = urllib3.PoolManager(retries=False, maxsize=REPLICAS)
        prefetched: list[float] = []
        prefetch_waits: list[float] = []
        cold: list[float] = []
        with replicas(tmp / "replicas", base_env) as reps:
            first = time_until_all_serve(reps, "v1", pool, timeout)
            print(f"{REPLICAS} replicas serving v1 after {first:.1f} s (cold start)", flush=True)
            n = 1
            for _ in range(rounds):
                n += 1
                v = new_version(n)
                set_status({"candidate": candidate(v, digests[v])})  # verification of v starts
                prefetch_waits.append(time_until_all_prefetched(core, digests[v], timeout))
                set_status({"desired": desired(v, digests[v], "Promotion"), "candidate": None})  # the clock starts
                prefetched.append(time_until_all_serve(reps, v, pool, timeout))
                n += 1
                v = new_version(n)
                set_status({"desired": desired(v, digests[v], "Promotion")})  # never a candidate: cold
                cold.append(time_until_all_serve(reps, v, pool, timeout))
            print(f"prefetched promotion seconds: {[round(x, 3) for x in prefetched]}", flush=True)
            print(f"candidate prefetch seconds (before promotion): {[round(x, 3) for x in prefetch_waits]}", flush=True)
            print(f"cold promotion seconds: {[round(x, 3) for x in cold]}", flush=True)

    where = f"{REPLICAS} replicas, {size_mb:.0f} MB model"
    return [
        p95_measurement(
            f"promotion latency p95 ({where}, candidate prefetched)",
            prefetched,
            "status.desired changed -> all replicas answer with it (candidate prefetched during verification)",
            {
                "prefetchSeconds": prefetch_waits,
                "prefetchP95": report.percentile(prefetch_waits, 95),
                "coldP95": report.percentile(cold, 95),
            },
        ),
        p95_measurement(
            f"cold promotion p95 ({where}, no candidate published)",
            cold,
            "status.desired changed -> all replicas answer with it (download included)",
            {},
        ),
    ]


def main() -> None:
    report.rounds_main(
        __doc__ or "",
        run,
        "rounds, each one prefetched and one cold promotion",
        "seconds allowed for one promotion or prefetch",
    )


if __name__ == "__main__":
    main()
