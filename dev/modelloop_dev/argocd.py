"""Argo CD (github.com/argoproj/argo-cd/v3, built by ``hack/argocd.sh``) run beside a cluster.

Its application controller and repo-server run as processes on the host, with Debian's
``redis-server`` as their cache, the way Kueue does in ``kueue.py``: no registry serves Argo CD's
image to these machines, and neither component needs to be a Pod to do its job. The controller
manages the "in-cluster" destination through the cluster's kubeconfig (``ARGOCD_FAKE_IN_CLUSTER``,
Argo CD's own switch for running outside a Pod). The Git repository is a local one the repo-server
reads over ``file://``, as Argo CD's own end-to-end tests do. As in a default install, the
repo-server serves gRPC over TLS with a certificate it makes itself and the controller does not
verify it. argocd-server (UI, API, SSO) is not
started: nothing here needs it; the resource actions it would run are run through the same Lua VM
by ``argocd admin settings resource-overrides`` (``tests/integration/test_argocd_lua.py``).

``argocd-cm`` is the block docs/argocd.md tells users to apply, taken from the page verbatim, so
the health checks Argo CD uses here are the ones the page ships.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelloop_dev.cluster import Cluster
from modelloop_dev.controlplane import ControlPlane, apply_crds
from modelloop_dev.devnode import Kube, KubeError, load_kubeconfig
from modelloop_dev.processes import ManagedProcess, ProcessFailed, free_port, hack_script_output, http_get, wait_for

NAMESPACE = "argocd"
APPLICATIONS = f"/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/applications"


def locate_argocd(repo_root: Path) -> Path:
    """Argo CD's cache directory (``bin/argocd``, ``crds/``): ``MODELLOOP_ARGOCD_DIR`` or ``hack/argocd.sh``."""
    override = os.environ.get("MODELLOOP_ARGOCD_DIR")
    root = Path(override) if override else hack_script_output(repo_root / "hack" / "argocd.sh").parent
    if not (root / "bin" / "argocd").is_file() or not (root / "crds" / "application-crd.yaml").is_file():
        raise ProcessFailed(f"{root} lacks bin/argocd or crds/application-crd.yaml; run `bash hack/argocd.sh`")
    return root


def doc_yaml(doc: Path, marker: str) -> dict[str, Any]:
    """The one YAML block of ``doc`` containing ``marker`` (docs carry what users paste; tests use it as written)."""
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
    found = [yaml.safe_load(b) for b in blocks if marker in b]
    if len(found) != 1:
        raise ValueError(f"{doc} has {len(found)} YAML blocks containing {marker!r}, expected 1")
    result: dict[str, Any] = found[0]
    return result


def component_env(name: str, **extra: str) -> dict[str, str]:
    """Argo CD's all-in-one binary runs as the component ``ARGOCD_BINARY_NAME`` names."""
    return {**os.environ, "ARGOCD_BINARY_NAME": name, **extra}


class GitRepo:
    """A local Git repository the team commits to (``file://`` for the repo-server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "digits team",
            "GIT_AUTHOR_EMAIL": "team@example.com",
            "GIT_COMMITTER_NAME": "digits team",
            "GIT_COMMITTER_EMAIL": "team@example.com",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(path.parent),
        }

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise ProcessFailed(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def init(self) -> GitRepo:
        self.path.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", "--initial-branch=main")
        return self

    def commit(self, files: dict[str, str], message: str) -> str:
        """Writes ``files`` (path relative to the repository: text), commits them, returns the commit."""
        for rel, text in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()


def undid_something(self_heal: list[tuple[str, str, str]]) -> bool:
    """Whether a self-heal sync changed a resource (kubectl apply says "unchanged" when it did not)."""
    return any(not message.endswith("unchanged") for _, _, message in self_heal)


@dataclass
class Observation:
    """One state of an Application as a watch delivered it."""

    at: float
    sync: str
    revision: str
    health: str
    message: str
    resources: list[dict[str, Any]] = field(default_factory=list)


class SyncRecorder:
    """Every state of one Application, from a watch, and the moments it drifted.

    OutOfSync at a revision that has not yet been seen Synced is a change in Git on its way to the
    cluster: expected. OutOfSync at a revision already seen Synced means something changed a field
    Git sets after Argo CD had applied it (the operator, a controller, a person): drift, recorded.

    Self-heal syncs are recorded too, with what each did to each resource (``self_heals``). Argo CD
    may start one right after a sync, before it is ever seen Synced, when its cache has not yet
    caught up with its own apply; such a sync finds every resource "unchanged". One that finds a
    resource "configured" undid a change: drift that happened to be repaired before it was seen.
    """

    def __init__(self, kube: Kube, name: str) -> None:
        self.kube = kube
        self.name = name
        self.observations: list[Observation] = []
        self.settled: set[str] = set()
        self.drift: list[Observation] = []
        self.self_heals: dict[str, list[tuple[str, str, str]]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"argocd-watch-{name}", daemon=True)

    def start(self) -> SyncRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.kube.close_watches()
        self._thread.join(timeout=30)

    def _record(self, app: dict[str, Any]) -> None:
        status = app.get("status") or {}
        sync = status.get("sync") or {}
        health = status.get("health") or {}
        seen = Observation(
            at=time.monotonic(),
            sync=sync.get("status") or "",
            revision=sync.get("revision") or "",
            health=health.get("status") or "",
            message=health.get("message") or "",
            resources=list(status.get("resources") or []),
        )
        operation = status.get("operationState") or {}
        healing = ((operation.get("operation") or {}).get("sync") or {}).get("autoHealAttemptsCount") or 0
        done = operation.get("phase") in ("Succeeded", "Failed", "Error")
        with self._lock:
            if healing and done:
                self.self_heals[operation.get("startedAt") or ""] = [
                    (r.get("kind", ""), r.get("name", ""), r.get("message", ""))
                    for r in (operation.get("syncResult") or {}).get("resources") or []
                ]
            self.observations.append(seen)
            if seen.sync == "Synced" and seen.revision:
                self.settled.add(seen.revision)
            elif seen.sync == "OutOfSync" and seen.revision in self.settled:
                self.drift.append(seen)

    def _run(self) -> None:
        selector = {"fieldSelector": f"metadata.name={self.name}"}
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self.kube.get(APPLICATIONS, **selector)
                    for app in listed.get("items") or []:
                        self._record(app)
                    version = listed["metadata"]["resourceVersion"]
                for event in self.kube.watch(
                    APPLICATIONS, {**selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
                ):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = ""  # expired: list again
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._record(obj)
            except KubeError as e:
                if not self._stop.is_set():
                    self.errors.append(str(e))
                    self._stop.wait(1.0)


class ArgoCD:
    """Argo CD's CRDs applied to ``cluster``; redis, the repo-server and the application controller running."""

    def __init__(
        self, root: Path, repo_root: Path, cluster: Cluster | ControlPlane, workdir: Path, start_timeout: float = 180.0
    ) -> None:
        self.root = root
        self.binary = str(root / "bin" / "argocd")
        self.repo_root = repo_root
        self.cluster = cluster
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.processes: dict[str, ManagedProcess] = {}
        self.kube = Kube(load_kubeconfig(cluster.kubeconfig), workdir / "kube-creds")

    def start(self) -> ArgoCD:
        self.workdir.mkdir(parents=True, exist_ok=True)
        apply_crds(
            self.cluster.kubectl, [self.root / "crds" / f for f in ("application-crd.yaml", "appproject-crd.yaml")]
        )
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        self.apply(self.config_map())
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "argocd-secret",
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/part-of": "argocd"},
            },
            "stringData": {"server.secretkey": os.urandom(24).hex()},
        }
        self.apply(secret)
        self.apply(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "AppProject",
                "metadata": {"name": "default", "namespace": NAMESPACE},
                "spec": {
                    "sourceRepos": ["*"],
                    "destinations": [{"server": "*", "namespace": "*"}],
                    "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
                },
            }
        )

        redis_port, repo_port = free_port(), free_port()
        redis = f"127.0.0.1:{redis_port}"
        self._start(
            "redis",
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            os.environ.copy(),
            lambda: (
                subprocess.run(
                    ["redis-cli", "-p", str(redis_port), "ping"], capture_output=True, text=True, check=False
                ).stdout.strip()
                == "PONG"
            ),
        )
        tmp = self.workdir / "repo-server-tmp"
        tmp.mkdir(exist_ok=True)
        repo_metrics = free_port()
        self._start(
            "argocd-repo-server",
            [
                self.binary,
                "--address",
                "127.0.0.1",
                "--port",
                str(repo_port),
                "--redis",
                redis,
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                str(repo_metrics),
                "--logformat",
                "text",
            ],
            component_env(
                "argocd-repo-server",
                TMPDIR=str(tmp),
                ARGOCD_GPG_ENABLED="false",
                ARGOCD_ASK_PASS_SOCK=str(self.workdir / "ask-pass.sock"),
                PATH=f"{self.root / 'bin'}{os.pathsep}{os.environ['PATH']}",
                HOME=str(self.workdir),
            ),
            lambda: http_get(f"http://127.0.0.1:{repo_metrics}/healthz") is not None,
        )
        controller_metrics = free_port()
        self._start(
            "argocd-application-controller",
            [
                self.binary,
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                "--namespace",
                NAMESPACE,
                "--repo-server",
                f"127.0.0.1:{repo_port}",
                "--redis",
                redis,
                "--metrics-port",
                str(controller_metrics),
                "--persist-resource-health",
                "--self-heal-timeout-seconds",
                "2",
                "--logformat",
                "text",
            ],
            component_env(
                "argocd-application-controller",
                ARGOCD_FAKE_IN_CLUSTER="true",
                KUBECONFIG=str(self.cluster.kubeconfig),
                ARGOCD_CONTROLLER_REPLICAS="1",
                ARGOCD_CONTROLLER_SHARD="0",
                HOME=str(self.workdir),
            ),
            lambda: http_get(f"http://127.0.0.1:{controller_metrics}/healthz") is not None,
        )
        return self

    def _start(self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool]) -> None:
        process = ManagedProcess(name, argv, self.workdir / f"{name}.log", env=env, cwd=self.workdir).start()
        self.processes[name] = process
        wait_for(ready, self.start_timeout, f"{name} to be ready", process)

    def config_map(self) -> dict[str, Any]:
        """docs/argocd.md's argocd-cm as written, plus a short Git poll (the test cannot wait the default 3 min)."""
        cm = doc_yaml(self.repo_root / "docs" / "argocd.md", "name: argocd-cm")
        cm.setdefault("data", {})["timeout.reconciliation"] = "15s"
        return cm

    def apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))

    def application(self, name: str) -> dict[str, Any]:
        app: dict[str, Any] = self.kube.get(f"{APPLICATIONS}/{name}")
        return app

    def refresh(self, name: str) -> None:
        """What a Git webhook does: ask the controller to compare with Git now rather than at its next poll."""
        self.cluster.kubectl(
            "-n", NAMESPACE, "annotate", "application", name, "argocd.argoproj.io/refresh=normal", "--overwrite"
        )

    def wait_synced(self, name: str, revision: str, timeout: float = 180.0) -> dict[str, Any]:
        """Until the Application is Synced at ``revision``; returns it (the caller judges its operation state)."""
        seen: dict[str, Any] = {}

        def synced() -> bool:
            seen.update(self.application(name))
            status = seen.get("status") or {}
            sync = status.get("sync") or {}
            return sync.get("status") == "Synced" and sync.get("revision") == revision

        try:
            wait_for(
                synced,
                timeout,
                f"Application {name} Synced at {revision[:12]}",
                self.processes.get("argocd-application-controller"),
            )
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}\nlast status: {yaml.safe_dump(seen.get('status'))[:3000]}\n{self.log_tails()}"
            ) from None
        return seen

    def log_tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- {n}\n{p.log_tail(lines)}" for n, p in self.processes.items())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                process.stop(timeout=10)
