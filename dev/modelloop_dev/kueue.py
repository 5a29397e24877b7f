"""Kueue's controller manager (sigs.k8s.io/kueue, built by ``hack/kueue.sh``) run beside a cluster.

As a process on the host, not a Pod: no image registry serves Kueue to these machines, and the
manager only talks to the API server. Without its webhooks (never registered with the API server
here) two things a webhook would do are done by their users instead: Jobs are created with
``suspend: true`` and the ``kueue.x-k8s.io/queue-name`` label (the operator's build_job does both),
and nothing defaults or validates Kueue's own objects beyond their CRD schemas.

Kueue reads its metrics serving certificate from the fixed path ``/etc/kueue/metrics/certs`` when
its internal certificate management is off; a throwaway certificate is written there (the cluster
tier runs as root and owns the machine's fixed node paths anyway), and one for the webhook server,
which still listens though nothing calls it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from modelloop_dev.cluster import Cluster
from modelloop_dev.controlplane import apply_crds
from modelloop_dev.pki import TestCA
from modelloop_dev.processes import ManagedProcess, ProcessFailed, free_port, hack_script_output, http_get, wait_for

NAMESPACE = "kueue-system"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


def locate_kueue(repo_root: Path) -> Path:
    """Kueue's cache directory (``bin/kueue``, ``crds/``): ``MODELLOOP_KUEUE_DIR`` or ``hack/kueue.sh``."""
    override = os.environ.get("MODELLOOP_KUEUE_DIR")
    root = Path(override) if override else hack_script_output(repo_root / "hack" / "kueue.sh").parent
    if not (root / "bin" / "kueue").is_file() or not list((root / "crds").glob("*.yaml")):
        raise ProcessFailed(f"{root} lacks bin/kueue or crds/*.yaml; run `bash hack/kueue.sh`")
    return root


class Kueue:
    """Kueue's CRDs applied to ``cluster`` and its manager running, managing batch/v1 Jobs that name a queue."""

    def __init__(self, root: Path, cluster: Cluster, workdir: Path, start_timeout: float = 180.0) -> None:
        self.root = root
        self.cluster = cluster
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.process: ManagedProcess | None = None

    def start(self) -> Kueue:
        self.workdir.mkdir(parents=True, exist_ok=True)
        apply_crds(self.cluster.kubectl, sorted((self.root / "crds").glob("*.yaml")))
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)

        ca = TestCA("kueue-test-ca")
        served = ca.server()
        webhook_certs = self.workdir / "webhook-certs"
        for d in (webhook_certs, METRICS_CERT_DIR):
            d.mkdir(parents=True, exist_ok=True)
            (d / "tls.crt").write_bytes(served.crt)
            (d / "tls.key").write_bytes(served.key)
        health = free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(webhook_certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
        }
        path = self.workdir / "kueue-config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        self.process = ManagedProcess(
            "kueue",
            [
                self.root / "bin" / "kueue",
                f"--config={path}",
                # The visibility API is an aggregated API server nobody registers here.
                "--feature-gates=VisibilityOnDemand=false",
                f"--visibility-server-port={free_port()}",
            ],
            self.workdir / "kueue.log",
            env=env,
        ).start()
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{health}/readyz") is not None,
            self.start_timeout,
            "Kueue's manager to be ready",
            self.process,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""
