"""Leader election between real ``modelloop-operator`` processes against the real API server.

Two replicas are started as the chart starts them (no ``--standalone``; POD_NAME and POD_NAMESPACE
set, one Lease) with the production timings: lease 15 s, renew deadline 10 s, retry 2 s. Exactly
one holds the Lease and handles RetrainPolicies, the other is a standby whose liveness endpoint
answers. SIGKILL of the leader: the standby takes over once the lease has gone a lease duration
without renewal, and not before. SIGTERM of the leader (a rolling update, a drain): the leader
stops its handlers and releases the lease, and the standby takes over within a retry period.
A leader that finds another holder of its lease exits at once with status 3.

What a replica handles is observed through the cheapest effect of a reconcile pass: a new
RetrainPolicy gets a status (its storage Secret does not exist, so the pass records that in a
condition and touches nothing else).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.processes import ManagedProcess, free_port, http_get, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LEASE = "modelloop"
LEASE_DURATION = 15.0  # the operator's default, which these tests do not override
RETRY_PERIOD = 2.0
LOST_LEASE_EXIT_CODE = 3


class Replica:
    """One ``modelloop-operator`` as the chart runs it: leader election on, its own metrics and liveness ports."""

    def __init__(self, cp: ControlPlane, namespace: str, pod_name: str, tmp_path: Path) -> None:
        self.pod_name = pod_name
        self.metrics_port, self.liveness_port = free_port(), free_port()
        exe = Path(sys.executable).parent / "modelloop-operator"
        argv = [
            exe, "--namespace", namespace, "--lease-name", LEASE,
            "--metrics-port", str(self.metrics_port),
            "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
        ]  # fmt: skip
        env = {**os.environ, **cp.env, "POD_NAME": pod_name, "POD_NAMESPACE": namespace}
        for timing in ("MODELLOOP_LEASE_DURATION", "MODELLOOP_LEASE_RENEW_DEADLINE", "MODELLOOP_LEASE_RETRY_PERIOD"):
            env.pop(timing, None)
        self.proc = ManagedProcess(pod_name, argv, tmp_path / f"{pod_name}.log", env=env)

    def start(self) -> Replica:
        self.proc.start()
        return self

    def owns(self, holder: str) -> bool:
        """Identities are the pod name plus a random suffix (a restarted container is a new identity)."""
        return holder.startswith(self.pod_name + "-")

    def leader_gauge(self) -> float:
        text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics").decode()
        (value,) = [line.split()[1] for line in text.splitlines() if line.startswith("modelloop_operator_leader ")]
        return float(value)

    def liveness(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(http_get(f"http://127.0.0.1:{self.liveness_port}/healthz"))
        return state

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")


@pytest.fixture
def replicas(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    pair = (Replica(control_plane, namespace, "op-a", tmp_path), Replica(control_plane, namespace, "op-b", tmp_path))
    for r in pair:
        r.start()
    try:
        yield pair
    finally:
        for r in pair:
            r.proc.stop()


def lease(api: client.ApiClient, ns: str) -> client.V1LeaseSpec | None:
    try:
        spec: client.V1LeaseSpec = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, ns).spec
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return spec


def holder(api: client.ApiClient, ns: str) -> str:
    spec = lease(api, ns)
    return (spec.holder_identity or "") if spec else ""


def wait_for_leader(api: client.ApiClient, ns: str, pair: tuple[Replica, ...], timeout: float) -> tuple[Replica, str]:
    """The replica that holds the lease, once it also says so on its metrics endpoint."""
    found: list[tuple[Replica, str]] = []

    def elected() -> bool:
        h = holder(api, ns)
        found[:] = [(r, h) for r in pair if h and r.owns(h)]
        return bool(found) and found[0][0].leader_gauge() == 1

    wait_for(elected, timeout, f"one of {[r.pod_name for r in pair]} to hold lease {ns}/{LEASE}")
    return found[0]


def create_policy(api: client.ApiClient, ns: str, name: str) -> None:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "metadata": {"name": name},
        "spec": {
            "model": name,
            "storage": {"endpoint": "127.0.0.1:9", "bucket": "models", "trainerCredentials": {"secretName": "absent"}},
            "dataset": {"path": "datasets/digits"},
            "training": {"image": "modelloop-trainer:dev"},
            "triggers": {"feedback": {"minSamples": 3}},
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, body)


def wait_handled(api: client.ApiClient, ns: str, name: str, by: Replica) -> None:
    """The operator wrote the policy's status (its first reconcile pass ran)."""

    def reconciled() -> bool:
        obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, name
        )
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(cond["type"] == "FeedbackReadable" for cond in conditions)

    wait_for(reconciled, 60, f"policy {name} reconciled by {by.pod_name}", by.proc)


def handled_anything(r: Replica) -> bool:
    """Whether kopf ran a handler in this replica (its per-object log lines come from kopf.objects)."""
    return " kopf.objects " in r.log()


def test_one_leader_acts_and_the_standby_takes_over_after_a_sigkill(
    api: client.ApiClient, namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    ns = namespace
    leader, identity = wait_for_leader(api, ns, replicas, 60)
    (standby,) = [r for r in replicas if r is not leader]
    wait_for(lambda: standby.liveness()["role"] == "standby", 30, "the standby's liveness endpoint", standby.proc)
    assert standby.leader_gauge() == 0
    assert leader.liveness() == {"role": "leader", "identity": identity, "lease": f"{ns}/{LEASE}"}
    assert f"became leader of lease {ns}/{LEASE} after " in leader.log()
    held = f"standby: lease {ns}/{LEASE} is held by {identity}"
    wait_for(lambda: held in standby.log(), 30, "the standby to log who holds the lease", standby.proc)

    create_policy(api, ns, "first")
    wait_handled(api, ns, "first", leader)
    assert not handled_anything(standby), "the standby must not run handlers:\n" + standby.log()
    spec = lease(api, ns)
    assert spec is not None and spec.lease_duration_seconds == LEASE_DURATION

    # The leader dies without a word (node lost, OOM): nobody releases the lease.
    leader.proc.kill_now()
    killed = time.monotonic()
    wait_for(lambda: not leader.proc.alive(), 30, "the leader to die of SIGKILL")
    wait_for(lambda: standby.owns(holder(api, ns)), LEASE_DURATION + 20, "the standby to take the lease", standby.proc)
    takeover = time.monotonic() - killed
    print(f"\nSIGKILL of the leader -> standby holds the lease after {takeover:.1f} s (lease {LEASE_DURATION:g} s)")
    # Not before the lease could have expired (the last renewal was at most a retry period before the
    # kill), and within a lease duration plus a retry period and some slack for a loaded machine.
    assert LEASE_DURATION - RETRY_PERIOD - 1 <= takeover <= LEASE_DURATION + 2 * RETRY_PERIOD + 5
    wait_for(lambda: standby.leader_gauge() == 1, 10, "the new leader's gauge", standby.proc)
    new_spec = lease(api, ns)
    assert new_spec is not None and new_spec.lease_transitions == spec.lease_transitions + 1
    assert f"became leader of lease {ns}/{LEASE} after " in standby.log()
    assert "has not renewed the lease for" in standby.log()

    create_policy(api, ns, "second")
    wait_handled(api, ns, "second", standby)


def test_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(
    api: client.ApiClient, namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    """Also a single replica's rolling update: the new pod waits as a standby until the old one has stopped."""
    ns = namespace
    leader, _ = wait_for_leader(api, ns, replicas, 60)
    (standby,) = [r for r in replicas if r is not leader]
    create_policy(api, ns, "first")
    wait_handled(api, ns, "first", leader)
    assert standby.liveness()["role"] == "standby"

    assert leader.proc.pid is not None
    os.kill(leader.proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    wait_for(lambda: standby.owns(holder(api, ns)), LEASE_DURATION, "the standby to take the lease", standby.proc)
    handover = time.monotonic() - sent
    wait_for(lambda: not leader.proc.alive(), 30, "the old leader to exit after SIGTERM")
    stopped = time.monotonic() - sent
    print(f"\nSIGTERM of the leader -> standby holds the lease after {handover:.1f} s (old leader exited after {stopped:.1f} s)")  # fmt: skip
    assert leader.proc.returncode() == 0, leader.proc.log_tail()
    log = leader.log()
    assert f"received SIGTERM: stopping the handlers, then releasing lease {ns}/{LEASE}" in log
    assert f"released lease {ns}/{LEASE} after leading for " in log
    assert log.index("received SIGTERM") < log.index("released lease"), "the handlers stop before the release"
    assert handover < LEASE_DURATION / 2, "a released lease is taken within a retry period, not after it expires"
    assert "the previous holder released it" in standby.log()

    create_policy(api, ns, "second")
    wait_handled(api, ns, "second", standby)


def test_a_leader_that_finds_another_holder_exits_at_once(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Split-brain protection: whatever made another replica the holder, this one stops acting."""
    ns = namespace
    only = Replica(control_plane, ns, "op-a", tmp_path).start()
    try:
        wait_for_leader(api, ns, (only,), 60)
        coordination = client.CoordinationV1Api(api)
        current = coordination.read_namespaced_lease(LEASE, ns)
        now = datetime.now(UTC)
        current.spec.holder_identity = "intruder"
        current.spec.acquire_time = current.spec.renew_time = now
        coordination.replace_namespaced_lease(LEASE, ns, current)
        taken = time.monotonic()
        wait_for(lambda: not only.proc.alive(), 20, "the old leader to exit")
        print(f"\nanother holder in the lease -> the old leader exited after {time.monotonic() - taken:.1f} s")
        assert only.proc.returncode() == LOST_LEASE_EXIT_CODE, only.proc.log_tail()
        assert (
            f"lost lease {ns}/{LEASE}: another replica (intruder) holds it; exiting so that only one replica acts"
            in only.log()
        )
        assert holder(api, ns) == "intruder", "a replica that lost the lease never writes it again"
    finally:
        only.proc.stop()
