"""The API server restarts while the operator and a serving sidecar watch: both reconnect, the loop converges.

Issue 8: "API server restarted while the operator and sidecars watch: they reconnect and converge."
The real ``modelloop-operator`` and a real server + sidecar pair (acting for one of the serving
Deployment's two Pods, which no kubelet runs) work against the real API server and MinIO.
kube-apiserver is restarted on the same port and etcd twice: while v1 trains and while v1 rolls
out (one of two replicas updated; the test reports for the other Pod). Neither process is
restarted; the watches must come back by themselves, v1 must become Active and served, and a
second loop (v2, asked for after the outages) must run through too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from operator_harness import (
    MODEL,
    Operator,
    annotate_pod,
    annotate_policy,
    complete_job,
    create_fixtures,
    create_policy,
    desired_version,
    job_exists,
    jobs,
    phase,
    pod_serving_digest,
    policy_body,
    policy_status,
    serving_pods,
    versions,
    write_verification,
)
from test_server_support import PLUGIN, Replica

from modelloop.api import constants as c
from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, wait_for
from modelloop_server.synthetic import publish_synthetic
from modelloop_trainer.examples.digits import DigitsPlugin

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(420)]

WAIT_S = 120.0


def train_and_verify(
    api: client.ApiClient,
    ns: str,
    store: ObjectStore,
    version: str,
    holdout: float,
    baseline: tuple[str, float] | None,
    proc: ManagedProcess,
    during_training: Callable[[], None] = lambda: None,
) -> str:
    """The trainer and verifier's part of one loop, with real loadable weights; returns the digest."""
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-train"), WAIT_S, f"training Job for {version}", proc)
    during_training()
    digest = publish_synthetic(store, DigitsPlugin(), PLUGIN, MODEL, version, seed=int(version[1:]))
    complete_job(api, ns, f"digits-{version}-train")
    wait_for(lambda: job_exists(api, ns, f"digits-{version}-verify"), WAIT_S, f"verification Job for {version}", proc)
    write_verification(store, version, digest, holdout, *(baseline or (None, None)))
    complete_job(api, ns, f"digits-{version}-verify")
    return digest


def test_operator_and_sidecar_ride_out_api_server_restarts(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns, replicas=2)
    wait_for(lambda: len(serving_pods(api, ns)) == 2, WAIT_S, "the Deployment's Pods")
    # One replica is a real server + sidecar; the test reports for the other one, and holds the
    # rollout at 1/2 with it so the second restart lands mid-rollout, not after it.
    pod, other = sorted(p.metadata.name for p in serving_pods(api, ns))
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    replica = Replica(tmp_path, pod, ns, minio.env(bucket), control_plane.kubeconfig)
    replica.start()
    procs = {p.name: p.pid for p in (op.proc, replica.sidecar, replica.server)}

    def active(version: str) -> bool:
        return policy_status(api, ns).get("activeVersion") == version and phase(api, ns, version) == "Active"

    def rolled_out(version: str, digest: str) -> None:
        wait_for(lambda: desired_version(api, ns) == version, WAIT_S, f"desired {version}", op.proc)
        wait_for(
            lambda: pod_serving_digest(api, ns, pod) == digest,
            WAIT_S,
            f"the sidecar to report {version}",
            replica.sidecar,
        )
        wait_for(lambda: policy_status(api, ns)["rollout"]["summary"] == "1/2", WAIT_S, "rollout 1/2", op.proc)

    try:
        create_policy(api, policy_body(minio, bucket), ns)
        digest1 = train_and_verify(
            api, ns, store, "v1", 0.93, None, op.proc, during_training=control_plane.restart_apiserver
        )
        rolled_out("v1", digest1)
        control_plane.restart_apiserver()  # mid-rollout: the operator tracks Pods, the sidecar watches desired
        annotate_pod(api, ns, other, digest1)
        wait_for(lambda: active("v1"), WAIT_S, "v1 Active after two API server restarts", op.proc)
        replica.wait_serving("v1", WAIT_S)

        # Asked for after the outages: both watches must be live again, not just a last resync.
        annotate_policy(api, ns, c.ANNOTATION_RETRAIN_NOW, "after-restarts")
        digest2 = train_and_verify(api, ns, store, "v2", 0.95, ("v1", 0.93), op.proc)
        rolled_out("v2", digest2)
        annotate_pod(api, ns, other, digest2)
        wait_for(lambda: active("v2"), WAIT_S, "v2 Active", op.proc)
        replica.wait_serving("v2", WAIT_S)

        assert all(p.alive() for p in (op.proc, replica.sidecar, replica.server))
        assert {p.name: p.pid for p in (op.proc, replica.sidecar, replica.server)} == procs, "nothing was restarted"
    finally:
        replica.stop()
        op.proc.stop()

    assert sorted(versions(api, ns)) == ["v1", "v2"]
    assert jobs(api, ns) == ["digits-v1-train", "digits-v1-verify", "digits-v2-train", "digits-v2-verify"]
    assert pod_serving_digest(api, ns, pod) == digest2
    st = policy_status(api, ns)
    assert (st["activeVersion"], st["previousVersion"], st["desired"]["version"]) == ("v2", "v1", "v2")
    assert st["desired"]["manifestDigest"] == digest2
    assert (phase(api, ns, "v1"), phase(api, ns, "v2")) == ("Superseded", "Active")
    assert st["rollout"]["summary"] == "2/2"
