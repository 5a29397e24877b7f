"""The development node against a real kube-apiserver and kube-controller-manager.

The real Job and Deployment controllers must accept what it reports exactly as they accept a
kubelet's reports; these tests assert on what those controllers conclude, not on the node itself.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3

from modelloop_dev.devnode import DevNodeProcess, Json, Kube, KubeError, load_kubeconfig

pytestmark = pytest.mark.integration

T = TypeVar("T")
TIMEOUT_S = 120.0


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = TIMEOUT_S) -> T:
    """Polls ``probe`` until it returns something truthy; fails naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}")


@pytest.fixture
def kube(control_plane: Any, tmp_path: Path) -> Kube:
    return Kube(load_kubeconfig(Path(control_plane.kubeconfig)), tmp_path / "creds")


@pytest.fixture
def devnode(control_plane: Any, namespace: str, tmp_path: Path, kube: Kube) -> Iterator[DevNodeProcess]:
    node = DevNodeProcess(
        Path(control_plane.kubeconfig), tmp_path / "devnode", name=f"devnode-{namespace}", namespaces=[namespace]
    )
    with node:
        yield node
    try:
        kube.request("DELETE", f"/api/v1/nodes/{node.name}")
    except KubeError as e:
        if e.status != 404:
            raise


def job(name: str, code: str, *, backoff_limit: int = 0, restart: str = "Never", **container: Any) -> Json:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": restart,
                    "containers": [
                        {"name": "main", "image": "ignored:latest", "command": ["python", "-c", code], **container}
                    ],
                }
            },
        },
    }


def job_condition(kube: Kube, ns: str, name: str) -> tuple[str, str] | None:
    status = kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}").get("status") or {}
    for cond in status.get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return cond["type"], cond.get("reason", "")
    return None


def pods(kube: Kube, ns: str, selector: str) -> list[Json]:
    items: list[Json] = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"]
    return items


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_job_completes_with_env_from_secret_configmap_and_downward_api(
    kube: Kube, namespace: str, devnode: DevNodeProcess
) -> None:
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"accessKey": "AKIA-TEST"}},
    )
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": "fast"}},
    )
    code = "import json, os; print(json.dumps({k: os.environ[k] for k in ('KEY', 'MODE', 'POD', 'NS', 'IP')}))"
    env = [
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "accessKey"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    spec = job("hello", code, env=env, resources={"limits": {"nvidia.com/gpu": 1}})
    spec["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", spec)

    assert (
        wait_for("the Job controller to mark the Job finished", lambda: job_condition(kube, namespace, "hello"))[0]
        == "Complete"
    )
    (pod,) = pods(kube, namespace, "job-name=hello")
    assert pod["spec"]["nodeName"] == devnode.name
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    log = (devnode.workdir / f"{namespace}_{pod['metadata']['name']}" / "main.log").read_text()
    printed = json.loads(log.strip().splitlines()[-1])
    assert printed == {
        "KEY": "AKIA-TEST",
        "MODE": "fast",
        "POD": pod["metadata"]["name"],
        "NS": namespace,
        "IP": pod["status"]["podIP"],
    }
    assert printed["IP"].startswith("127.0.")


def test_failing_job_exhausts_backoff_limit_with_termination_message(
    kube: Kube, namespace: str, devnode: DevNodeProcess
) -> None:
    code = textwrap.dedent(
        """
        import os, sys
        open(os.environ["MODELLOOP_TERMINATION_LOG"], "w").write("holdout accuracy 0.41 < 0.88")
        sys.exit(3)
        """
    )
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job("fails", code, backoff_limit=1))

    verdict = wait_for("the Job controller to mark the Job finished", lambda: job_condition(kube, namespace, "fails"))
    assert verdict == ("Failed", "BackoffLimitExceeded")
    failed = pods(kube, namespace, "job-name=fails")
    assert len(failed) == 2
    for pod in failed:
        assert pod["status"]["phase"] == "Failed"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
        assert terminated["message"] == "holdout accuracy 0.41 < 0.88"


def test_on_failure_restarts_in_place_and_falls_back_to_logs(
    kube: Kube, namespace: str, devnode: DevNodeProcess
) -> None:
    """An emptyDir survives container restarts (its path reaches the container through env)."""
    code = textwrap.dedent(
        """
        import os, pathlib, sys
        marker = pathlib.Path(os.environ["SCRATCH"]) / "attempted"
        if not marker.exists():
            marker.write_text("1")
            print("first attempt: simulated preemption", flush=True)
            sys.exit(1)
        print("second attempt: done")
        """
    )
    spec = job(
        "retries",
        code,
        backoff_limit=2,
        restart="OnFailure",
        env=[{"name": "SCRATCH", "value": "/scratch"}],
        terminationMessagePolicy="FallbackToLogsOnError",
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", spec)

    assert wait_for("the Job to finish", lambda: job_condition(kube, namespace, "retries"))[0] == "Complete"
    (pod,) = pods(kube, namespace, "job-name=retries")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["lastState"]["terminated"]["message"] == "first attempt: simulated preemption"
    assert status["state"]["terminated"]["exitCode"] == 0


def deployment(name: str, marker: str) -> Json:
    server = textwrap.dedent(
        f"""
        # {marker}
        import http.server, os
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = os.environ["HOSTNAME"].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        http.server.ThreadingHTTPServer((os.environ["MODELLOOP_BIND_HOST"], 8080), Handler).serve_forever()
        """
    )
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "web",
                            "image": "ignored:latest",
                            "command": ["python", "-c", server],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }


def test_deployment_becomes_available_and_deleting_it_stops_the_processes(
    kube: Kube, namespace: str, devnode: DevNodeProcess
) -> None:
    marker = f"devnode-test-marker-{namespace}"
    kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("web", marker))

    def available() -> bool:
        dep = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
        conds = {c["type"]: c["status"] for c in (dep.get("status") or {}).get("conditions") or []}
        return conds.get("Available") == "True" and dep["status"].get("readyReplicas") == 2

    wait_for("the Deployment controller to report 2 ready replicas", available)
    running = pods(kube, namespace, "app=web")
    assert len(running) == 2
    ips = {p["status"]["podIP"] for p in running}
    assert len(ips) == 2, f"pods share an address: {ips}"
    http = urllib3.PoolManager(retries=False)
    for p in running:
        ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert ready["Ready"] == "True"
        answer = http.request("GET", f"http://{p['status']['podIP']}:8080/", timeout=5)
        assert answer.data.decode() == p["metadata"]["name"]
    assert len(processes_with(marker)) == 2

    kube.request(
        "DELETE",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/web",
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"},
    )
    wait_for("the garbage collector and the node to remove every pod", lambda: not pods(kube, namespace, "app=web"))
    assert processes_with(marker) == []


def test_pod_acts_as_its_service_account(kube: Kube, namespace: str, devnode: DevNodeProcess) -> None:
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
    )
    code = textwrap.dedent(
        """
        import json, os, pathlib
        from modelloop_dev.devnode import Kube, KubeError, load_kubeconfig
        kube = Kube(load_kubeconfig(pathlib.Path(os.environ["KUBECONFIG"])), pathlib.Path("creds"))
        review = kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        try:
            kube.get(f"/api/v1/namespaces/{os.environ['NS']}/secrets")
            secrets = "allowed"
        except KubeError as e:
            secrets = e.status
        print(json.dumps({"user": review["status"]["userInfo"], "secrets": secrets}))
        """
    )
    spec = job("whoami", code, env=[{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}])
    spec["spec"]["template"]["spec"]["serviceAccountName"] = "reader"
    kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", spec)

    assert wait_for("the Job to finish", lambda: job_condition(kube, namespace, "whoami"))[0] == "Complete"
    (pod,) = pods(kube, namespace, "job-name=whoami")
    log = (devnode.workdir / f"{namespace}_{pod['metadata']['name']}" / "main.log").read_text()
    seen = json.loads(log.strip().splitlines()[-1])
    assert seen["user"]["username"] == f"system:serviceaccount:{namespace}:reader"
    assert seen["user"]["extra"]["authentication.kubernetes.io/pod-name"] == [pod["metadata"]["name"]]
    assert seen["secrets"] == 403, "the ServiceAccount has no RBAC grant: listing Secrets must be forbidden"


def test_node_is_ready_and_advertises_a_gpu(kube: Kube, devnode: DevNodeProcess) -> None:
    node = kube.get(f"/api/v1/nodes/{devnode.name}")
    assert node["metadata"]["labels"]["modelloop.dev/development-node"] == "true"
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{devnode.name}")
    first = lease["spec"]["renewTime"]
    wait_for(
        "the node to renew its Lease",
        lambda: (
            kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{devnode.name}")["spec"][
                "renewTime"
            ]
            != first
        ),
        timeout_s=30,
    )
