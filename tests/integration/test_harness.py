"""The harness itself: real API server semantics, a working controller manager, MinIO, no orphans."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from modelloop.api.artifacts import ArtifactError, Manifest, version_key
from modelloop.clients.artifactstore import fetch_version, publish_version
from modelloop.devenv.controlplane import ControlPlane
from modelloop.devenv.minio import MinioServer
from modelloop.devenv.processes import ManagedProcess, ProcessFailed, wait_for

pytestmark = pytest.mark.integration

PROBE_GROUP = "harness.modelloop.dev"
PROBE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"probes.{PROBE_GROUP}"},
    "spec": {
        "group": PROBE_GROUP,
        "scope": "Namespaced",
        "names": {"plural": "probes", "singular": "probe", "kind": "Probe", "listKind": "ProbeList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    c = control_plane.api_client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def probe_crd(control_plane: ControlPlane) -> str:
    control_plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(PROBE_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/probes.{PROBE_GROUP}")
    return PROBE_GROUP


def _status_event(
    api: client.ApiClient, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Patches ``status`` through the subresource and returns (patched object, the watch event's object)."""
    co = client.CustomObjectsApi(api)
    created = co.get_namespaced_custom_object(group, version, namespace, plural, name)
    patched = co.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": body})
    # watching from the resourceVersion before the patch replays the change: no race, no thread
    w = watch.Watch()
    for event in w.stream(
        co.list_namespaced_custom_object,
        group,
        version,
        namespace,
        plural,
        field_selector=f"metadata.name={name}",
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=30,
    ):
        obj = event["object"]
        if event["type"] == "MODIFIED" and obj.get("status") == body:
            w.stop()
            return patched, obj
    raise AssertionError(f"no MODIFIED event with status {body} for {plural}/{name} within 30s")


def test_custom_resource_status_subresource_and_watch(api: client.ApiClient, probe_crd: str, namespace: str) -> None:
    co = client.CustomObjectsApi(api)
    body = {"apiVersion": f"{probe_crd}/v1", "kind": "Probe", "metadata": {"name": "p"}, "spec": {"size": 3}}
    co.create_namespaced_custom_object(probe_crd, "v1", namespace, "probes", body)

    with pytest.raises(client.ApiException) as invalid:
        co.create_namespaced_custom_object(
            probe_crd, "v1", namespace, "probes", {**body, "metadata": {"name": "bad"}, "spec": {"size": 0}}
        )
    assert invalid.value.status == 422, "the CRD's OpenAPI schema must be enforced by the real API server"

    patched, seen = _status_event(api, probe_crd, "v1", "probes", namespace, "p", {"phase": "Ready"})
    assert seen["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    assert seen["metadata"]["generation"] == 1, "a status write must not bump the generation"

    # the main resource ignores status, as the status subresource promises
    co.patch_namespaced_custom_object(probe_crd, "v1", namespace, "probes", "p", {"status": {"phase": "Hacked"}})
    assert co.get_namespaced_custom_object(probe_crd, "v1", namespace, "probes", "p")["status"] == {"phase": "Ready"}


def test_repository_crds_accept_a_retrainpolicy(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    from modelloop.api import constants as c

    if control_plane.kubectl("get", "crd", f"retrainpolicies.{c.GROUP}", check=False).returncode != 0:
        pytest.skip("crds/ holds no RetrainPolicy CRD yet (generated by `make crds`)")
    from modelloop.api.retrainpolicy import RetrainPolicySpec

    spec = RetrainPolicySpec.model_validate(
        {
            "model": "digits",
            "storage": {"endpoint": "127.0.0.1:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "modelloop/trainer:dev"},
        }
    )
    co = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "RetrainPolicy",
        "metadata": {"name": "digits"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    co.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, "retrainpolicies", body)
    got = co.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, "retrainpolicies", "digits")
    assert RetrainPolicySpec.model_validate(got["spec"]) == spec, (
        "the CRD schema pruned or changed fields of a valid spec"
    )


def test_job_controller_creates_pods(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never", containers=[client.V1Container(name="c", image="busybox", command=["true"])]
                )
            ),
        ),
    )
    created = batch.create_namespaced_job(namespace, job)
    pods: list[client.V1Pod] = []

    def pod_created() -> bool:
        pods[:] = core.list_namespaced_pod(namespace, label_selector="job-name=probe").items
        return bool(pods)

    wait_for(pod_created, 60, "the job controller to create the Job's Pod")
    owner = pods[0].metadata.owner_references[0]
    assert (owner.kind, owner.uid) == ("Job", created.metadata.uid)


def test_garbage_collector_deletes_dependents(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        return not [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == "dependent"]

    wait_for(dependent_gone, 60, "the garbage collector to delete the Pod owned by a deleted ConfigMap")


def test_artifact_round_trip_with_sha256_check(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    store = minio.store(bucket)
    src = tmp_path / "src"
    (src / "checkpoints").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (src / "metrics.json").write_text('{"accuracy": 0.97}')
    (src / "checkpoints" / "meta.json").write_text("{}")
    manifest = Manifest(model="digits", version="v1", created_at=datetime.datetime.now(datetime.UTC), files=[])
    digest = publish_version(store, manifest, src)
    assert digest.startswith("sha256:")

    got = fetch_version(store, "digits", "v1", tmp_path / "dst", expected_digest=digest)
    assert {f.path for f in got.files} == {"model.safetensors", "metrics.json", "checkpoints/meta.json"}
    for f in got.files:
        assert (tmp_path / "dst" / f.path).read_bytes() == (src / f.path).read_bytes()

    store.put_bytes(version_key("digits", "v1", "model.safetensors"), b"tampered")
    with pytest.raises(ArtifactError, match=r"model\.safetensors"):
        fetch_version(store, "digits", "v1", tmp_path / "dst2", expected_digest=digest)
    assert not (tmp_path / "dst2").exists(), "a failed fetch must leave nothing a reader could load"


def test_minio_restart_keeps_port_credentials_and_data(minio: MinioServer, bucket: str) -> None:
    store = minio.store(bucket)
    store.put_bytes("k", b"survives")
    endpoint = minio.endpoint
    minio.stop()
    assert not minio.alive()
    minio.start()
    assert minio.endpoint == endpoint
    assert store.get_bytes("k") == b"survives"


def test_stop_escalates_to_sigkill_and_wait_for_names_the_log(tmp_path: Path) -> None:
    script = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('IGNORING', 'SIGTERM', flush=True); time.sleep(600)"
    p = ManagedProcess("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log").start()
    wait_for(lambda: "IGNORING SIGTERM" in p.log_tail().splitlines(), 30, "the child to ignore SIGTERM")
    t0 = time.monotonic()
    assert p.stop(timeout=1.0) == -signal.SIGKILL
    assert time.monotonic() - t0 < 15

    dying = ManagedProcess(
        "dying", [sys.executable, "-c", "print('disk on fire'); raise SystemExit(3)"], tmp_path / "d.log"
    )
    dying.start()
    with pytest.raises(ProcessFailed, match=r"(?s)dying exited with status 3.*disk on fire"):
        wait_for(lambda: False, 30, "something that never happens", dying)
    dying.stop()


def _processes_mentioning(marker: str, besides: int) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (os.getpid(), besides):
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        if marker in cmdline:
            found.append(f"{d.name}: {cmdline[:200]}")
    return found


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from modelloop.devenv.controlplane import ControlPlane
    from modelloop.devenv.minio import MinioServer
    bin_dir, workdir, with_cp = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    MinioServer(bin_dir, workdir / "minio").start()
    if with_cp:
        ControlPlane(bin_dir, workdir / "cp").start()
    (workdir / "ready").write_text("")
    time.sleep(600)
    """
)


@pytest.mark.parametrize(
    ("sig", "with_control_plane"),
    [(signal.SIGINT, True), (signal.SIGKILL, False)],
    ids=["sigint-controlplane-and-minio", "sigkill-minio"],
)
def test_interrupted_run_leaves_no_processes(
    tools_bin: Path, tmp_path: Path, sig: signal.Signals, with_control_plane: bool
) -> None:
    """SIGINT exercises the safety net; SIGKILL (no Python code runs) exercises PR_SET_PDEATHSIG."""
    workdir = tmp_path / "orphan-check"
    workdir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tools_bin), str(workdir), "1" if with_control_plane else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            if child.poll() is not None:
                out = child.stdout.read().decode() if child.stdout else ""
                raise AssertionError(f"the child exited with {child.returncode} before it was ready:\n{out[-3000:]}")
            return (workdir / "ready").exists()

        wait_for(ready, 180, "the child to start its servers")
        expected = 4 if with_control_plane else 1
        assert len(_processes_mentioning(str(workdir), child.pid)) == expected
        child.send_signal(sig)
        child.wait(60)
        wait_for(
            lambda: not _processes_mentioning(str(workdir), child.pid),
            30,
            f"every server of the child to exit after {sig.name}",
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout:
            child.stdout.close()


def test_apiserver_restart_keeps_state_and_controllers(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before"), data={"k": "v"})
    )
    port = control_plane.port
    control_plane.restart_apiserver()
    assert control_plane.port == port
    assert core.read_namespaced_config_map("before", namespace).data == {"k": "v"}, "etcd state must survive"
    # the controller manager reconnects on its own: a namespace created now still gets its ServiceAccount
    control_plane.kubectl("create", "namespace", f"{namespace}-after")
    try:
        wait_for(
            lambda: core.read_namespaced_service_account("default", f"{namespace}-after") is not None,
            60,
            "the controller manager to serve again after the API server restart",
            control_plane.controller_manager,
        )
    finally:
        control_plane.kubectl("delete", "namespace", f"{namespace}-after", "--wait=false", check=False)
