"""The README's install on the cluster tier's node, shared by its test modules (tests/cluster/conftest.py runs it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop_dev.argocd import ArgoCD, GitRepo, SyncRecorder, doc_yaml
from modelloop_dev.cluster import Cluster
from modelloop_dev.demo import PolicyView
from modelloop_dev.devnode import Kube, load_kubeconfig

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "digits"
SYSTEM_NAMESPACE = "modelloop-system"
VERSION_TIMEOUT_S = 900.0


def readme_install_lines() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- install:begin[^>]*-->\s*```console\n(.*?)```\s*<!-- install:end -->", text, re.S)
    assert found, "README.md has no install block between <!-- install:begin --> and <!-- install:end -->"
    return found.group(1)


@dataclass
class Installed:
    cluster: Cluster
    view: PolicyView
    install_s: float
    env: dict[str, str]

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def patch_policy(self, spec: dict[str, Any]) -> None:
        patch = json.dumps({"spec": spec})
        self.cluster.kubectl("-n", NAMESPACE, "patch", "rp", "digits", "--type=merge", "-p", patch)

    def service_url(self) -> str:
        svc = self.kubectl_json("-n", NAMESPACE, "get", "service", "digits")
        return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def operator_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl_json("-n", SYSTEM_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=modelloop")
        return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]

    def kill_container(self, pod: str) -> None:
        """SIGKILLs the pod's (first) container through containerd, the way the kernel would."""
        status = self.kubectl_json("-n", SYSTEM_NAMESPACE, "get", "pod", pod)["status"]
        container_id = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        self.cluster.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)

    def leader(self) -> str | None:
        """The operator Pod named by the leader-election Lease, if any holds it."""
        pods = {p["metadata"]["name"] for p in self.operator_pods()}
        for lease in self.kubectl_json("-n", SYSTEM_NAMESPACE, "get", "leases")["items"]:
            holder = (lease.get("spec") or {}).get("holderIdentity") or ""
            for pod in pods:
                if holder.startswith(pod):
                    return pod
        return None


def diagnostics(cluster: Cluster) -> str:
    """What an engineer reads first when a step fails: every Pod, recent Events, the operators' logs."""
    out = []
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "rp,mv,jobs", "-A"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ("-n", SYSTEM_NAMESPACE, "logs", "-l", "app.kubernetes.io/name=modelloop", "--tail=60", "--prefix"),
        ("-n", NAMESPACE, "logs", "-l", "app.kubernetes.io/name=digits", "--all-containers", "--tail=30", "--prefix"),
    ):
        done = cluster.kubectl(*args, check=False)
        out.append(f"$ kubectl {' '.join(args)}\n{done.stdout[-6000:]}{done.stderr[-2000:]}")
    return "\n".join(out)


def install(cluster: Cluster, tools_bin: Path, creds_dir: Path) -> Installed:
    """Runs the README's install block verbatim against ``cluster``; fails the test with diagnostics if it fails."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PATH": f"{tools_bin}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-xc", readme_install_lines()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=VERSION_TIMEOUT_S + 900,
        check=False,
    )
    install_s = time.monotonic() - t0
    if done.returncode != 0:
        pytest.fail(
            f"the README's install steps failed ({done.returncode}) after {install_s:.0f}s:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}\n{diagnostics(cluster)}"
        )
    kube = Kube(load_kubeconfig(cluster.kubeconfig), creds_dir)
    print(f"README install: policy applied -> v1 Active in {install_s:.0f}s (all steps)")
    return Installed(cluster, PolicyView(kube, NAMESPACE, "digits", "digits"), install_s, env)


# The files of the example the README applied by hand, as the team keeps them in Git.
GIT_FILES = {
    "digits/retrainpolicy.yaml": "examples/retrainpolicy-digits.yaml",
    "digits/serving.yaml": "examples/serving-deployment.yaml",
}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` merged into ``base`` the way a JSON merge patch would (nested maps merged, the rest replaced)."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@dataclass
class GitOps:
    """The README's example handed to Argo CD: its files in Git, docs/argocd.md's Application syncing them.

    From then on the team changes the policy by committing to Git (``change_policy``), and the
    recorder keeps every state the Application went through.
    """

    argocd: ArgoCD
    repo: GitRepo
    app: str
    recorder: SyncRecorder
    commits: list[str]

    @classmethod
    def hand_over(cls, installed: Installed, argocd: ArgoCD, repo: GitRepo) -> GitOps:
        repo.init()
        commit = repo.commit({rel: (REPO / src).read_text() for rel, src in GIT_FILES.items()}, "digits: the example")
        application = doc_yaml(REPO / "docs" / "argocd.md", "kind: Application")
        application["spec"]["source"]["repoURL"] = repo.url
        name = application["metadata"]["name"]
        recorder = SyncRecorder(argocd.kube, name).start()
        argocd.apply(application)
        gitops = cls(argocd, repo, name, recorder, [commit])
        gitops.wait_synced(commit)
        return gitops

    def wait_synced(self, commit: str) -> dict[str, Any]:
        try:
            return self.argocd.wait_synced(self.app, commit)
        except TimeoutError as e:
            pytest.fail(f"{e}\n{diagnostics(self.argocd.cluster)}")

    def change_policy(self, spec: dict[str, Any], message: str) -> str:
        """Commits ``spec`` merged into the policy's file, asks Argo CD to look now, waits until it applied it."""
        rel = "digits/retrainpolicy.yaml"
        policy = yaml.safe_load(self.repo.read(rel))
        policy["spec"] = merge(policy["spec"], spec)
        commit = self.repo.commit({rel: yaml.safe_dump(policy, sort_keys=False)}, message)
        self.commits.append(commit)
        self.argocd.refresh(self.app)
        self.wait_synced(commit)
        return commit

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        """The Application's view of one resource it manages (sync and health, with Argo CD's health message)."""
        app = self.argocd.application(self.app)
        for r in (app.get("status") or {}).get("resources") or []:
            if r.get("kind") == kind and r.get("name") == name:
                found: dict[str, Any] = r
                return found
        raise AssertionError(f"Application {self.app} does not manage {kind}/{name}")
