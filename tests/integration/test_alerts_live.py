"""The shipped alerts, evaluated by a real Prometheus over the real operator and model servers.

promtool proves the rules over series written by hand (tests/promtool); here the series are the
ones the processes really export. Prometheus (the ``prometheus`` fixture) runs the chart's
PrometheusRule with ``for:`` shortened (``operator_harness.ALERTS_FOR``) and scrapes the
``modelloop-operator`` process and each serving replica (server + sidecar) with the labels the
chart's ServiceMonitor and PodMonitor give them. As in the operator tests no kubelet runs: the test
plays the trainer and the verifier; the replicas are local processes for the Deployment's Pods.

Issue 18: the stalled-rollout alert fired after every operator restart (the active version was only
exported by the pass that promoted it) and the live-accuracy alert kept firing after a rollback (the
retired version's series stayed at its last value).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from operator_harness import (
    ALERTS_FOR,
    MODEL,
    POLICY,
    Operator,
    annotate_policy,
    complete_job,
    create_policy,
    create_s3_secret,
    job_exists,
    policy_body,
    policy_status,
    write_verification,
)
from test_server_support import PLUGIN, Replica, publish_versions, serving_kubeconfig

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import free_port, wait_for
from modelloop_dev.prometheus import ChartPrometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STALLED, LIVE_LOW = "ModelloopRolloutStalled", "ModelloopLiveAccuracyLow"
REVIEWER, REVIEWER_TOKEN = "alice", "alice-static-token"  # a static reviewer token the sidecar accepts
HOLDOUT = {"v1": 0.93, "v2": 0.95, "v3": 0.97}  # each verified version beats the last by the beatMargin


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def _active_for(alert: dict[str, Any]) -> float:
    """Seconds since the alert went pending (its ``activeAt``, nanoseconds cut to what Python parses)."""
    at = re.sub(r"(\.\d{6})\d*", r"\1", alert["activeAt"]).replace("Z", "+00:00")
    return time.time() - datetime.fromisoformat(at).timestamp()


class Loop:
    """One policy run by the real operator and served by real replicas, all scraped by ``prometheus``.

    The Deployment's Pods are created by the controller manager and never run; each gets a
    ``Replica`` (server + sidecar as local processes) under its name, so the sidecar annotates the
    real Pod and the operator's rollout tracking sees it.
    """

    def __init__(
        self,
        cp: ControlPlane,
        minio: MinioServer,
        bucket: str,
        ns: str,
        api: client.ApiClient,
        prometheus: ChartPrometheus,
        tmp: Path,
        replicas: int,
    ) -> None:
        self.cp, self.minio, self.bucket, self.ns, self.api, self.prom, self.tmp = (
            cp, minio, bucket, ns, api, prometheus, tmp,
        )  # fmt: skip
        self.addresses: list[str] = []
        self.replicas: dict[str, Replica] = {}
        create_s3_secret(api, minio, ns)
        body = policy_body(
            minio,
            bucket,
            triggers={"checkIntervalSeconds": 5, "feedback": {"minSamples": 1_000_000}},
            training={"image": "modelloop/trainer:dev", "plugin": PLUGIN, "backoffLimit": 1},
            serving={"deployment": MODEL, "rolloutTimeout": "10m"},
        )
        create_policy(api, body, ns)
        labels = {"app.kubernetes.io/name": MODEL, "app.kubernetes.io/component": "model-server"}
        client.AppsV1Api(api).create_namespaced_deployment(
            ns,
            {
                "metadata": {"name": MODEL},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "server", "image": "modelloop/server:dev"}]},
                    },
                },
            },
        )
        self.operator = Operator(cp, ns, tmp / "operator.log", metrics_port=free_port())

    def start(self, replicas: int) -> Loop:
        self.operator.start()
        self.addresses.append(self.prom.scrape_operator(self.operator.metrics_port))
        core = client.CoreV1Api(self.api)
        selector = f"app.kubernetes.io/name={MODEL}"

        def pods() -> list[str]:
            return sorted(p.metadata.name for p in core.list_namespaced_pod(self.ns, label_selector=selector).items)

        wait_for(lambda: len(pods()) == replicas, 60, f"{replicas} serving Pods from the controller manager")
        kubeconfig = serving_kubeconfig(self.cp, self.ns, self.tmp)
        tokens = self.tmp / "reviewer-tokens"
        tokens.mkdir()
        (tokens / REVIEWER).write_text(REVIEWER_TOKEN)
        for pod in pods():
            r = Replica(
                self.tmp,
                pod,
                self.ns,
                self.minio.env(self.bucket),
                kubeconfig,
                sidecar_env={"MODELLOOP_REVIEWER_TOKENS_DIR": str(tokens)},
                MODELLOOP_FEEDBACK_FLUSH_SECONDS="0.5",
            )
            self.replicas[pod] = r.start()
            self.addresses.append(self.prom.scrape_serving(r.port, self.ns, pod))
        return self

    def stop(self) -> None:
        for address in self.addresses:
            self.prom.unscrape(address)
        for r in self.replicas.values():
            r.stop()
        self.operator.proc.stop()

    def status(self) -> dict[str, Any]:
        return policy_status(self.api, self.ns)

    def ship(self, version: str, parent: str | None) -> str:
        """Play the trainer and the verifier for ``version``; its digest, once the operator made it desired."""
        proc = self.operator.proc
        wait_for(
            lambda: job_exists(self.api, self.ns, f"{MODEL}-{version}-train"), 90, f"{version}'s training Job", proc
        )
        digest = publish_versions(self.minio, self.bucket, [version])[version]
        complete_job(self.api, self.ns, f"{MODEL}-{version}-train")
        wait_for(
            lambda: job_exists(self.api, self.ns, f"{MODEL}-{version}-verify"), 60, f"{version}'s verify Job", proc
        )
        baseline = HOLDOUT.get(parent) if parent else None
        write_verification(self.minio.store(self.bucket), version, digest, HOLDOUT[version], parent, baseline)
        complete_job(self.api, self.ns, f"{MODEL}-{version}-verify")
        wait_for(
            lambda: (self.status().get("desired") or {}).get("version") == version,
            60, f"{version} desired", proc,
        )  # fmt: skip
        return digest

    def wait_active(self, version: str, timeout: float = 90) -> None:
        wait_for(
            lambda: self.status().get("activeVersion") == version, timeout, f"{version} active", self.operator.proc
        )

    def retrain(self, token: str) -> None:
        annotate_policy(self.api, self.ns, c.ANNOTATION_RETRAIN_NOW, token)

    def scraped_active_digest(self) -> str | None:
        """The digest of ``modelloop_active_version_info`` for this namespace, as Prometheus has it now."""
        found = self.prom.query(f'modelloop_active_version_info{{namespace="{self.ns}"}}')
        return found[0]["metric"]["digest"] if len(found) == 1 else None

    def scraped_serving(self) -> dict[str, str]:
        """pod -> digest of each replica's ``modelloop_server_model_info`` as Prometheus has it now."""
        found = self.prom.query(f'modelloop_server_model_info{{namespace="{self.ns}"}} == 1')
        return {s["metric"]["pod"]: s["metric"]["digest"] for s in found}


@pytest.fixture
def make_loop(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: str,
    namespace: str,
    api: client.ApiClient,
    prometheus: ChartPrometheus,
    tmp_path: Path,
) -> Iterator[Callable[[int], Loop]]:
    made: list[Loop] = []

    def make(replicas: int) -> Loop:
        loop = Loop(control_plane, minio, bucket, namespace, api, prometheus, tmp_path, replicas)
        made.append(loop)
        return loop.start(replicas)

    yield make
    for loop in made:
        loop.stop()


def test_rollout_stalled_fires_on_a_stuck_replica_resolves_and_stays_quiet_across_an_operator_restart(
    make_loop: Callable[[int], Loop], prometheus: ChartPrometheus
) -> None:
    stalled_for = _seconds(ALERTS_FOR[STALLED])
    loop = make_loop(2)
    ns = loop.ns
    digest1 = loop.ship("v1", None)
    loop.wait_active("v1")
    wait_for(
        lambda: loop.scraped_active_digest() == digest1 and set(loop.scraped_serving().values()) == {digest1}
        and len(loop.scraped_serving()) == 2,
        30, "Prometheus to scrape v1 active and both replicas serving it",
    )  # fmt: skip
    prometheus.wait_alert(STALLED, None, 15, "pending only while v1 rolled out", namespace=ns)
    # The operator's target carries the job label the operator alerts match (the chart's Service name).
    assert prometheus.query('up{job=~".*modelloop-operator.*"} == 1')
    assert (
        prometheus.alert_state("ModelloopOperatorDown") is None and prometheus.alert_state("ModelloopNoLeader") is None
    )

    # (b) An operator restart with everything healthy. While it is down its series are stale, so
    # the rule is pending; the restarted operator must export the active version again at once.
    started = f'process_start_time_seconds{{job="{prometheus.monitors.operator.relabel_job}"}}'
    (before,) = prometheus.query(started)
    killed = time.time()
    loop.operator.sigkill_and_restart()

    seen: list[object] = []

    def settled() -> bool:
        """Firing (the bug), or quiet on what the restarted process exports (not the dead one's last scrape)."""
        state = prometheus.alert_state(STALLED, namespace=ns)
        restarted = bool(prometheus.query(f"{started} > {before['value'][1]}"))
        seen[:] = [state, restarted, loop.scraped_active_digest()]
        return state == "firing" or seen == [None, True, digest1]

    try:
        wait_for(settled, stalled_for + 60, f"{STALLED} to settle after the operator restart")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last seen (alert state, restarted operator scraped, active digest): {seen}") from e
    back_after = time.time() - killed
    assert prometheus.alert_state(STALLED, namespace=ns) is None, (
        f"{STALLED} fired after an operator restart with both replicas on the active version "
        f"(active version series after restart: {loop.scraped_active_digest()})"
    )
    window = int(time.time() - killed) + 2
    fired = prometheus.query(f'ALERTS{{alertname="{STALLED}",namespace="{ns}",alertstate="firing"}}[{window}s]')
    assert not fired, f"{STALLED} fired at some point since the restart: {fired}"
    assert back_after < stalled_for, f"the restart took {back_after:.0f}s, longer than the test's for: {stalled_for}s"

    # (a) A replica that does not reach the desired version: its sidecar is down during v2's rollout.
    first, second = sorted(loop.replicas)
    stuck = loop.replicas[second]
    stuck.sidecar.stop()
    loop.retrain("v2")
    digest2 = loop.ship("v2", "v1")
    loop.replicas[first].wait_serving("v2")
    prometheus.wait_alert(STALLED, "firing", stalled_for + 30, "v2 on one replica, v1 active", namespace=ns)
    (alert,) = prometheus.alerts(STALLED, namespace=ns)
    assert prometheus.rule(STALLED)["duration"] == stalled_for, "the chart's for: override is what Prometheus runs"
    assert _active_for(alert) >= stalled_for, "pending for its whole for: before firing"
    assert (alert["labels"]["version"], float(alert["value"])) == ("v2", 1.0)
    assert alert["labels"]["severity"] == "warning" and "runbook_url" in alert["annotations"]

    stuck.sidecar.start()  # the stuck replica catches up: the rollout completes and v2 is active
    loop.wait_active("v2")
    prometheus.wait_alert(STALLED, None, 30, "after v2's rollout completed", namespace=ns)
    assert loop.scraped_active_digest() == digest2

    # ... and again for v3, this time resolved by rolling back while it is stuck. Pending is enough
    # here (the rule matches; firing is only its for: later, shown above) and saves a for: of waiting.
    stuck.sidecar.stop()
    loop.retrain("v3")
    loop.ship("v3", "v2")
    loop.replicas[first].wait_serving("v3")
    prometheus.wait_alert(STALLED, "pending", 30, "v3 on one replica, v2 active", namespace=ns)
    (alert,) = prometheus.alerts(STALLED, namespace=ns)
    assert alert["labels"]["version"] == "v3"
    annotate_policy(loop.api, ns, c.ANNOTATION_ROLLBACK_TO, c.ROLLBACK_PREVIOUS)
    loop.replicas[first].wait_serving("v2")
    prometheus.wait_alert(STALLED, None, 30, "after rolling back to v2", namespace=ns)
    assert loop.status().get("activeVersion") == "v2"
    assert set(loop.scraped_serving().values()) == {digest2} == {loop.scraped_active_digest()}


def test_live_accuracy_fires_on_corrected_reviews_resolves_after_a_rollback_and_the_series_go_with_the_policy(
    make_loop: Callable[[int], Loop], prometheus: ChartPrometheus
) -> None:
    live_for = _seconds(ALERTS_FOR[LIVE_LOW])
    loop = make_loop(1)
    ns = loop.ns
    (replica,) = loop.replicas.values()
    loop.ship("v1", None)
    loop.wait_active("v1")
    loop.retrain("v2")
    loop.ship("v2", "v1")
    loop.wait_active("v2")

    # Reviewers correct 8 of v2's 10 answers: live accuracy 0.2, below the alert's 0.85.
    for i in range(10):
        x = [float((i * 7 + k) % 17) for k in range(64)]
        answer = httpx.post(f"{replica.base}/v1/predict", json={"input": x}, timeout=30).json()
        assert answer["version"] == "v2"
        wrong = i < 8
        review = {"id": answer["id"], "label": (answer["predicted"] + 1) % 10 if wrong else answer["predicted"]}
        headers = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}
        assert httpx.post(f"{replica.base}/v1/feedback", json=review, headers=headers, timeout=30).status_code == 202
    prometheus.wait_alert(LIVE_LOW, "firing", live_for + 60, "8 of 10 reviews of v2 corrected", namespace=ns)
    (alert,) = prometheus.alerts(LIVE_LOW, namespace=ns)
    assert prometheus.rule(LIVE_LOW)["duration"] == live_for, "the chart's for: override is what Prometheus runs"
    assert _active_for(alert) >= live_for, "pending for its whole for: before firing"
    assert (alert["labels"]["policy"], alert["labels"]["version"]) == ("digits", "v2")
    assert float(alert["value"]) == pytest.approx(0.2)
    assert alert["labels"]["severity"] == "critical"

    annotate_policy(loop.api, ns, c.ANNOTATION_ROLLBACK_TO, c.ROLLBACK_PREVIOUS)
    loop.wait_active("v1")
    prometheus.wait_alert(LIVE_LOW, None, 30, "after rolling back to v1", namespace=ns)
    left = prometheus.query(f'modelloop_live_accuracy{{namespace="{ns}"}}')
    assert not left, f"the retired version's live accuracy is still exported: {left}"

    # The policy's state series go with the policy, rather than alerting on an object that is gone.
    per_policy = f'{{__name__=~"modelloop_(active_version_info|feedback_pending_.+|live_accuracy)",namespace="{ns}"}}'
    names = {s["metric"]["__name__"] for s in prometheus.query(per_policy)}
    assert names == {
        "modelloop_active_version_info",
        *(f"modelloop_feedback_pending_{k}" for k in ("corrections", "reviews")),
    }
    client.CustomObjectsApi(loop.api).delete_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.RETRAINPOLICY_PLURAL, POLICY
    )
    wait_for(lambda: not prometheus.query(per_policy), 60, "the deleted policy's series gone", loop.operator.proc)
