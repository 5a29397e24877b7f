"""Helpers for the serving tests (no tests here): versions in the bucket, the policy, the Pod
object, the sidecar's own ServiceAccount credentials, and the server + sidecar processes.

The sidecar runs with a token of the ServiceAccount from ``examples/serving-deployment.yaml``
(its Role applied as shipped, narrowed to the test's policy), so the example's RBAC is what the
tests exercise: a missing permission fails them.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client as k8s
from operator_harness import MODEL, POLICY
from operator_harness import policy_body as operator_policy_body

from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, free_port, wait_for
from modelloop_server.control import DEFAULT_SOCKET_NAME, ControlClient
from modelloop_server.synthetic import publish_synthetic, write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.plugin import ModelPlugin

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "serving-deployment.yaml"
PLUGIN = c.DEFAULT_PLUGIN
BIN = Path(sys.executable).parent


def control(model_dir: Path, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    """A request on the server's control socket (the sidecar's channel), as an httpx response for the asserts."""
    data = None if body is None else json.dumps(body).encode()
    status, raw = ControlClient(model_dir / DEFAULT_SOCKET_NAME).request(method, path, data, timeout=60)
    return httpx.Response(status, content=raw)


def reload(model_dir: Path, version: str, path: Path | str | None = None) -> httpx.Response:
    """``POST /v1/reload`` as the sidecar sends it: over the control socket in the model dir."""
    return control(model_dir, "POST", "/v1/reload", {"version": version, "path": str(path or model_dir / version)})


def publish_versions(minio: MinioServer, bucket: str, versions: list[str]) -> dict[str, str]:
    """Synthetic digits versions (seeded differently, so they answer differently); version -> digest."""
    store = minio.store(bucket)
    return {v: publish_synthetic(store, DigitsPlugin(), PLUGIN, MODEL, v, seed=int(v[1:])) for v in versions}


def corrupt_in_place(minio: MinioServer, bucket: str, key: str) -> None:
    """Flip the object's last 16 bytes: same size, different bytes, so only the hash check notices."""
    store = minio.store(bucket)
    good = store.get_bytes(key)
    store.put_bytes(key, good[:-16] + bytes(b ^ 0xFF for b in good[-16:]))


def policy_body(minio: MinioServer, bucket: str) -> dict[str, Any]:
    """The operator tests' policy, set up for serving tests: no operator runs and nothing triggers a training."""
    return operator_policy_body(
        minio,
        bucket,
        triggers={"feedback": {"minSamples": 1_000_000}},
        training={"image": "modelloop/trainer:dev", "plugin": PLUGIN},
        serving={"deployment": MODEL},
    )


class Cluster:
    """The objects of one serving test in its namespace, through the admin client."""

    def __init__(self, cp: ControlPlane, namespace: str, minio: MinioServer, bucket: str) -> None:
        self.cp = cp
        self.ns = namespace
        self.minio = minio
        self.bucket = bucket
        self.api = cp.api_client()
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.RETRAINPOLICY_PLURAL, policy_body(minio, bucket)
        )

    def close(self) -> None:
        self.api.close()

    def ref(self, version: str, digest: str) -> dict[str, str]:
        """A ``status.desired`` / ``status.candidate`` reference to a published version."""
        return {"version": version, "artifactURI": artifact_uri(self.bucket, MODEL, version), "manifestDigest": digest}

    def patch_status(self, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, self.ns, c.RETRAINPOLICY_PLURAL, POLICY, {"status": status}
        )

    def set_desired(self, version: str, digest: str, reason: str = "Promotion") -> None:
        since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.patch_status({"desired": {**self.ref(version, digest), "since": since, "reason": reason}})

    def create_pod(self, name: str, model_dir: Path | None = None, size_limit: str | None = None) -> None:
        """The Pod object the sidecar annotates; no node runs it (the processes run here).

        With ``size_limit``, its sidecar mounts ``model_dir`` (the local path the processes use)
        from an emptyDir of that sizeLimit, which is what the sidecar reads from its Pod spec.
        """
        containers: list[dict[str, Any]] = [{"name": "server", "image": "modelloop/server:dev"}]
        volumes: list[dict[str, Any]] = []
        if size_limit is not None:
            assert model_dir is not None
            mount = {"name": "models", "mountPath": str(model_dir)}
            containers.append({"name": "sidecar", "image": "modelloop/server:dev", "volumeMounts": [mount]})
            volumes.append({"name": "models", "emptyDir": {"sizeLimit": size_limit}})
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": MODEL}},
            "spec": {"containers": containers, "volumes": volumes},
        }
        self.core.create_namespaced_pod(self.ns, body)

    def pod_annotations(self, name: str) -> dict[str, str]:
        pod = self.core.read_namespaced_pod(name, self.ns)
        return dict(pod.metadata.annotations or {})

    def reports(self, pod: str, digest: str) -> bool:
        """Whether the pod's sidecar has reported ``digest`` as served."""
        return self.pod_annotations(pod).get(c.ANNOTATION_SERVING_DIGEST) == digest

    def start_replica(
        self,
        workdir: Path,
        pod: str,
        version: str,
        digest: str,
        size_limit: str | None = None,
        sidecar_env: dict[str, str] | None = None,
        **server_env: str,
    ) -> Replica:
        """A Pod object plus its server + sidecar, returned once the sidecar reports ``version`` served."""
        self.create_pod(pod, replica_model_dir(workdir, pod), size_limit)
        replica = Replica(
            workdir,
            pod,
            self.ns,
            self.minio.env(self.bucket),
            self.serving_kubeconfig(workdir),
            sidecar_env,
            **server_env,
        )
        self.set_desired(version, digest)
        replica.start()
        try:
            wait_for(lambda: self.reports(pod, digest), 90, f"the sidecar to report {version}", replica.sidecar)
        except BaseException:
            replica.stop()
            raise
        return replica

    def events(self, pod: str) -> list[k8s.CoreV1Event]:
        items: list[k8s.CoreV1Event] = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={pod}"
        ).items
        return items

    def serving_kubeconfig(self, workdir: Path) -> Path:
        return serving_kubeconfig(self.cp, self.ns, workdir)


def serving_kubeconfig(cp: ControlPlane, namespace: str, workdir: Path) -> Path:
    """Apply the example's ServiceAccount/Role/RoleBinding here and return a kubeconfig with its token."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRoleBinding")]
    sa = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    for d in rbac:
        if d["kind"] == "ClusterRoleBinding":
            d["metadata"]["name"] = f"{namespace}-{d['metadata']['name']}"
        else:
            d["metadata"]["namespace"] = namespace
        for rule in d.get("rules") or []:
            if rule.get("resourceNames"):
                rule["resourceNames"] = [POLICY]
        for subject in d.get("subjects") or []:
            subject["namespace"] = namespace
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    token = cp.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
        "current-context": sa,
    }
    path = workdir / f"{sa}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def replica_model_dir(workdir: Path, pod: str) -> Path:
    return workdir / pod / "models"


class Replica:
    """A serving Pod's two containers as local processes sharing a model directory."""

    def __init__(
        self,
        workdir: Path,
        pod: str,
        namespace: str,
        s3_env: dict[str, str],
        kubeconfig: Path,
        sidecar_env: dict[str, str] | None = None,
        **server_env: str,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.model_dir = replica_model_dir(workdir, pod)
        self.model_dir.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_", "KUBECONFIG"))}
        common = {
            **env,
            **s3_env,
            c.ENV_MODEL: MODEL,
            c.ENV_PLUGIN: PLUGIN,
            "MODELLOOP_MODEL_DIR": str(self.model_dir),
            "MODELLOOP_BIND_HOST": "127.0.0.1",
        }
        self.server = ManagedProcess(
            f"server-{pod}",
            [BIN / "modelloop-server"],
            workdir / pod / "server.log",
            env={**common, "MODELLOOP_PORT": str(self.port), **server_env},
        )
        self.sidecar = ManagedProcess(
            f"sidecar-{pod}",
            [BIN / "modelloop-sidecar"],
            workdir / pod / "sidecar.log",
            env={
                **common,
                "KUBECONFIG": str(kubeconfig),
                "MODELLOOP_POLICY": POLICY,
                "POD_NAME": pod,
                "POD_NAMESPACE": namespace,
                "MODELLOOP_RETRY_BASE_SECONDS": "0.2",
                "MODELLOOP_RETRY_MAX_SECONDS": "2",
                **(sidecar_env or {}),
            },
        )

    def start(self) -> Replica:
        self.server.start()
        self.sidecar.start()
        return self

    def stop(self) -> None:
        self.sidecar.stop()
        self.server.stop()

    def serving(self) -> str | None:
        """The version /readyz reports (None while not ready)."""
        r = httpx.get(f"{self.base}/readyz", timeout=5)
        return str(r.json()["version"]) if r.status_code == 200 else None

    def wait_serving(self, version: str, timeout: float = 60) -> None:
        wait_for(lambda: self.serving() == version, timeout, f"server answering with {version}", self.server)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of /metrics (0 when absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            have = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and have == want:
                return float(value)
        return 0.0


def start_server(
    tmp: Path,
    host: str = "127.0.0.1",
    current: str | None = None,
    plugin: tuple[ModelPlugin, str] | None = None,
    model: str = "digits",
    **env: str,
) -> tuple[ManagedProcess, str, Path]:
    """A real ``modelloop-server`` over synthetic v1 and v2 on disk (``current`` loaded at start), no sidecar.

    ``plugin`` is (instance, ``package.module:Class``) for a model other than digits; the server is
    told the same reference.
    """
    instance, ref = plugin or (DigitsPlugin(), c.DEFAULT_PLUGIN)
    model_dir = tmp / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    for n in (1, 2):
        write_local_version(instance, ref, model_dir, model, f"v{n}", n)
    if current is not None:
        (model_dir / ".current").write_text(f"{current}\n")
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELLOOP_", "AWS_"))}
    proc = ManagedProcess(
        "server",
        [BIN / "modelloop-server"],
        tmp / "server.log",
        env={
            **base,
            c.ENV_MODEL: model,
            c.ENV_PLUGIN: ref,
            "MODELLOOP_MODEL_DIR": str(model_dir),
            "MODELLOOP_BIND_HOST": host,
            "MODELLOOP_PORT": str(port),
            "MODELLOOP_MAX_BATCH": "8",
            "MODELLOOP_MAX_BODY_BYTES": "65536",
            "MODELLOOP_REVIEW_AUTH": "off",  # no sidecar to ask; reviews are authenticated in test_review_auth.py
            **env,
        },
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, "server ready", proc)
    return proc, url, model_dir


def signing_keys(directory: Path, name: str = "signing") -> tuple[Path, Path]:
    """A fresh EC P-256 key pair as PEM files (private, public), as an operator's Secret would hold them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def require_signature(cluster: Cluster) -> None:
    """Set ``spec.serving.signature`` on the test policy (the sidecar gets the key from its own mount)."""
    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, cluster.ns, c.RETRAINPOLICY_PLURAL, POLICY,
        {"spec": {"serving": {"signature": {"publicKey": {"configMapName": "modelloop-signing"}}}}},
    )  # fmt: skip
