"""Live reviews decide promotion, end to end (issue 16): real operator, model server, sidecar, API server
and MinIO; nothing in the review path is written by the test.

The versions are real digits networks trained here on the bundled dataset: v1 briefly (a mediocre
active version), v2 on shuffled labels (deliberately worse; it passes the offline gates only because
the policy's gates are tolerant), v3 properly (better). Each candidate is scored in the shadow by the
real server; the test sends real requests and posts each answer's true label by its prediction id to
the server's review endpoint; the server joins the review to its receipt and shadow pair and uploads
it; the operator tallies the paired reviews and decides. The worse candidate is rejected without ever
answering a client; the better one is promoted and served.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import torch
from kubernetes import client
from operator_harness import (
    MODEL,
    Operator,
    annotate_policy,
    complete_job,
    create_fixtures,
    create_policy,
    job_exists,
    phase,
    policy_body,
    policy_conditions,
    policy_status,
    serving_pods,
    versions,
    write_verification,
)
from test_server_support import PLUGIN, Replica, control, serving_kubeconfig
from torch.nn import functional as F

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.synthetic import publish_weights
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.plugin import Split

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REVIEWER, REVIEWER_TOKEN = "rita", "rita-static-token"
WAIT_S = 120
MIN_REVIEWS = 40
REQUESTS = 80
NO_SHADOW = {"enabled": False}
"""The canary tests turn the shadow stage (on by default) off: the canary stage alone is what they test."""


def _train(train: Split, epochs: int, shuffled: bool) -> dict[str, torch.Tensor]:
    """A DigitsNet fitted full-batch on 600 training images (labels permuted when ``shuffled``)."""
    torch.manual_seed(16)
    net = DigitsPlugin().build()
    x, y = train.x[:600], train.y[:600]
    if shuffled:
        y = y[torch.randperm(len(y))]
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _accuracy(weights: dict[str, torch.Tensor], holdout: Split) -> float:
    net = DigitsPlugin().build()
    net.load_state_dict(weights)
    with torch.no_grad():
        return float((net(holdout.x).argmax(1) == holdout.y).float().mean())


class Loop:
    """The operator, ``replicas`` serving replicas (server + sidecar for each of the Deployment's Pods) and the
    test as trainer, verifier, client and reviewer. ``replica`` is the first; the shadow and review helpers use it."""

    def __init__(
        self,
        cp: ControlPlane,
        minio: MinioServer,
        bucket: str,
        ns: str,
        api: client.ApiClient,
        tmp: Path,
        rollout: dict[str, object],
        replicas: int = 1,
    ) -> None:
        self.api, self.ns, self.minio, self.bucket = api, ns, minio, bucket
        self.store = minio.store(bucket)
        create_fixtures(api, minio, ns, replicas=replicas)
        create_policy(
            api,
            policy_body(
                minio,
                bucket,
                triggers={"checkIntervalSeconds": 5, "feedback": {"minSamples": 1_000_000}},
                training={"image": "modelloop/trainer:dev", "plugin": PLUGIN, "backoffLimit": 1},
                # tolerant offline gates: only the live reviews stand between v2 and the clients
                verification={"gates": {"minHoldoutAccuracy": 0.05, "mustBeatActive": False}},
                rollout=rollout,
                retry={"maxAttempts": 1},
            ),
            ns,
        )
        self.operator = Operator(cp, ns, tmp / "operator.log").start()
        wait_for(lambda: len(serving_pods(api, ns)) == replicas, WAIT_S, "the Deployment's Pods")
        tokens = tmp / "reviewer-tokens"
        tokens.mkdir()
        (tokens / REVIEWER).write_text(REVIEWER_TOKEN)
        kubeconfig = serving_kubeconfig(cp, ns, tmp)
        self.replicas: list[Replica] = []
        for pod in sorted(p.metadata.name for p in serving_pods(api, ns)):
            replica = Replica(
                tmp,
                pod,
                ns,
                minio.env(bucket),
                kubeconfig,
                sidecar_env={"MODELLOOP_REVIEWER_TOKENS_DIR": str(tokens)},
                MODELLOOP_FEEDBACK_FLUSH_SECONDS="0.5",
                # one reviewer posts every review here, as fast as the machine runs: the per-reviewer limit
                # (tests/integration/test_review_auth.py proves it) would measure the machine, not the decisions
                MODELLOOP_REVIEW_RATE_PER_MINUTE="100000",
                MODELLOOP_REVIEW_BURST="10000",
            )
            self.replicas.append(replica)
            replica.start()
        self.replica = self.replicas[0]

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.operator.proc.stop()

    def ship(self, version: str, weights: dict[str, torch.Tensor], holdout: float, baseline: str | None) -> str:
        """Play the trainer (publish the weights) and the verifier (the offline record) for ``version``."""
        proc = self.operator.proc
        wait_for(lambda: job_exists(self.api, self.ns, f"{MODEL}-{version}-train"), WAIT_S, f"{version} training", proc)
        digest = publish_weights(self.store, weights, PLUGIN, MODEL, version)
        complete_job(self.api, self.ns, f"{MODEL}-{version}-train")
        wait_for(lambda: job_exists(self.api, self.ns, f"{MODEL}-{version}-verify"), WAIT_S, f"{version} verify", proc)
        write_verification(self.store, version, digest, holdout, baseline, 0.5 if baseline else None, worst_class=0.05)
        complete_job(self.api, self.ns, f"{MODEL}-{version}-verify")
        return digest

    def status(self) -> dict[str, Any]:
        return policy_status(self.api, self.ns)

    def shadow(self, replica: Replica | None = None) -> str | None:
        body = control((replica or self.replica).model_dir, "GET", "/v1/shadow").json()
        return str(body["shadow"]["version"]) if body["shadow"] else None

    def review(self, http: httpx.Client, holdout: Split, rows: range, answers: list[httpx.Response]) -> None:
        """Each answer's true label, posted by its prediction id to the server's review endpoint."""
        headers = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}
        for i, a in zip(rows, answers, strict=True):
            review = {"id": a.json()["id"], "label": int(holdout.y[i % len(holdout.y)])}
            posted = http.post("/v1/feedback", json=review, headers=headers)
            assert posted.status_code == 202, posted.text

    def predict(self, http: httpx.Client, holdout: Split, rows: range) -> list[httpx.Response]:
        answers = [http.post("/v1/predict", json={"input": holdout.x[i % len(holdout.y)].tolist()}) for i in rows]
        assert [a.status_code for a in answers] == [200] * len(rows), "a request failed"
        return answers

    def canary(self, replica: Replica | None = None) -> dict[str, object] | None:
        found: dict[str, object] | None = control((replica or self.replica).model_dir, "GET", "/v1/canary").json()[
            "canary"
        ]
        return found

    def predict_and_review(self, holdout: Split, start: int, candidate: str) -> list[httpx.Response]:
        """``REQUESTS`` real predictions, then each answer's true label posted by its id once the shadow has
        scored them all (the review joins the shadow pair on this replica)."""
        base, r = self.replica.base, self.replica
        scored_before = r.metric("modelloop_server_shadow_scored_requests_total", {"candidate": candidate})
        rows = range(start, start + REQUESTS)
        with httpx.Client(base_url=base, timeout=30) as http:
            answers = self.predict(http, holdout, rows)
            wait_for(
                lambda: r.metric("modelloop_server_shadow_scored_requests_total", {"candidate": candidate})
                == scored_before + REQUESTS,
                60, f"{candidate} to score every request in the shadow", r.server,
            )  # fmt: skip
            self.review(http, holdout, rows, answers)
        return answers


class MakeLoop(Protocol):
    def __call__(self, rollout: dict[str, object], replicas: int = 1) -> Loop: ...


class Traffic:
    """Clients sending requests round-robin to every replica until stopped; every status and version kept."""

    def __init__(self, replicas: list[Replica], holdout: Split) -> None:
        self.replicas, self.holdout = replicas, holdout
        self.answers: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        clients = [httpx.Client(base_url=r.base, timeout=30) for r in self.replicas]
        i = 0
        try:
            while not self._stop.is_set():
                x = self.holdout.x[i % len(self.holdout.y)].tolist()
                try:
                    a = clients[i % len(clients)].post("/v1/predict", json={"input": x})
                    self.answers.append((a.status_code, a.headers.get("X-Model-Version")))
                except httpx.HTTPError as e:  # a refused or reset connection is a failed request too
                    self.errors.append(repr(e))
                i += 1
                self._stop.wait(0.005)  # pacing, not synchronisation: leave the two cores to the servers
        finally:
            for cl in clients:
                cl.close()

    def count(self) -> int:
        return len(self.answers)

    def failed(self) -> list[object]:
        return [*self.errors, *(code for code, _ in self.answers if code != 200)]


@pytest.fixture
def make_loop(
    control_plane: ControlPlane, minio: MinioServer, bucket: str, namespace: str, api: client.ApiClient, tmp_path: Path
) -> Iterator[MakeLoop]:
    made: list[Loop] = []

    def make(rollout: dict[str, object], replicas: int = 1) -> Loop:
        made.append(Loop(control_plane, minio, bucket, namespace, api, tmp_path, rollout, replicas))
        return made[-1]

    yield make
    for loop in made:
        loop.stop()


def test_live_reviews_reject_a_worse_candidate_unseen_and_promote_a_better_one(
    make_loop: MakeLoop,
) -> None:
    loop = make_loop({"shadow": {"enabled": True, "minReviews": MIN_REVIEWS, "margin": 0.02, "maxDuration": "1d"}})
    train, holdout = DigitsPlugin().base_dataset()
    v1, v2, v3 = _train(train, 5, False), _train(train, 5, True), _train(train, 30, False)
    acc = {"v1": _accuracy(v1, holdout), "v2": _accuracy(v2, holdout), "v3": _accuracy(v3, holdout)}
    assert acc["v2"] < acc["v1"] - 0.3 and acc["v3"] > acc["v1"] + 0.15, f"the premise: {acc}"
    op = loop.operator.proc

    digest1 = loop.ship("v1", v1, acc["v1"], None)
    wait_for(lambda: loop.status().get("activeVersion") == "v1", WAIT_S, "v1 active (served by the replica)", op)
    loop.replica.wait_serving("v1")

    # v2, worse: verified by tolerant gates, held in the shadow stage, scored beside v1, rejected by reviews
    annotate_policy(loop.api, loop.ns, c.ANNOTATION_RETRAIN_NOW, "worse")
    loop.ship("v2", v2, acc["v2"], "v1")
    wait_for(lambda: loop.shadow() == "v2", WAIT_S, "v2 scored in the shadow on the replica", loop.replica.sidecar)
    wait_for(lambda: phase(loop.api, loop.ns, "v2") == "Verified", WAIT_S, "v2 through the tolerant gates", op)
    wait_for(
        lambda: policy_conditions(loop.api, loop.ns).get("ShadowStage", {}).get("status") == "True",
        WAIT_S, "v2 held in the shadow stage", op,
    )  # fmt: skip
    answers = loop.predict_and_review(holdout, 0, "v2")
    wait_for(lambda: phase(loop.api, loop.ns, "v2") == "Rejected", WAIT_S, "v2 rejected by the live reviews", op)
    wait_for(lambda: (loop.status().get("shadow") or {}).get("verdict") == "Reject", WAIT_S, "the verdict", op)
    assert {a.json()["version"] for a in answers} == {"v1"}, "the worse candidate answered a client"
    assert {a.headers["X-Model-Version"] for a in answers} == {"v1"}
    st = loop.status()
    shadow = st["shadow"]
    assert isinstance(shadow, dict) and shadow["version"] == "v2" and shadow["verdict"] == "Reject", shadow
    assert shadow["onlyActive"] > shadow["onlyCandidate"], shadow
    assert policy_conditions(loop.api, loop.ns)["ShadowStage"]["reason"] == "Worse"
    assert (st["activeVersion"], (st["desired"] or {})["version"]) == ("v1", "v1")
    wait_for(lambda: loop.shadow() is None, WAIT_S, "the rejected v2 unloaded", loop.replica.sidecar)
    assert loop.replica.metric("modelloop_server_requests_total", {"code": "200", "version": "v2"}) == 0

    # v3, better: scored in the shadow, promoted by its reviews, served without a second load
    annotate_policy(loop.api, loop.ns, c.ANNOTATION_RETRAIN_NOW, "better")
    digest3 = loop.ship("v3", v3, acc["v3"], "v1")
    wait_for(lambda: loop.shadow() == "v3", WAIT_S, "v3 scored in the shadow", loop.replica.sidecar)
    answers = loop.predict_and_review(holdout, REQUESTS, "v3")
    assert {a.json()["version"] for a in answers} == {"v1"}, "the candidate answered before it was promoted"
    wait_for(lambda: loop.status().get("activeVersion") == "v3", WAIT_S, "v3 promoted and served", op)
    loop.replica.wait_serving("v3")
    shadow = loop.status()["shadow"]
    assert isinstance(shadow, dict) and shadow["version"] == "v3" and shadow["verdict"] == "Promote", shadow
    assert shadow["onlyCandidate"] > shadow["onlyActive"], shadow
    assert loop.replica.metric("modelloop_server_swaps_total", {"result": "shadow"}) == 1, "v3 was loaded twice"
    assert digest1 != digest3
    with httpx.Client(base_url=loop.replica.base, timeout=30) as http:
        served = [http.post("/v1/predict", json={"input": holdout.x[i].tolist()}) for i in range(20)]
    assert {a.json()["version"] for a in served} == {"v3"}


def test_the_canary_steps_up_and_promotes_a_better_candidate_and_rolls_back_a_worse_one(
    make_loop: MakeLoop,
) -> None:
    canary = {"enabled": True, "steps": [20, 50], "minReviewsPerStep": 20, "maxStepDuration": "1d"}
    loop = make_loop({"shadow": NO_SHADOW, "canary": canary})
    train, holdout = DigitsPlugin().base_dataset()
    v1, v2, v3 = _train(train, 5, False), _train(train, 30, False), _train(train, 5, True)
    acc = {"v1": _accuracy(v1, holdout), "v2": _accuracy(v2, holdout), "v3": _accuracy(v3, holdout)}
    assert acc["v2"] > acc["v1"] + 0.15 and acc["v3"] < acc["v2"] - 0.5, f"the premise: {acc}"
    op = loop.operator.proc
    loop.ship("v1", v1, acc["v1"], None)
    wait_for(lambda: loop.status().get("activeVersion") == "v1", WAIT_S, "v1 active (served by the replica)", op)
    loop.replica.wait_serving("v1")

    def step(candidate: str, percent: int, rows: range) -> Counter[str]:
        """Wait for the replica to split ``percent`` % to ``candidate``; serve ``rows`` and review every answer."""
        want = {"version": candidate, "percent": percent}
        wait_for(lambda: loop.canary() == want, WAIT_S, f"{candidate} answering {percent}%", loop.replica.sidecar)
        with httpx.Client(base_url=loop.replica.base, timeout=30) as http:
            answers = loop.predict(http, holdout, rows)
            loop.review(http, holdout, rows, answers)
        return Counter(a.json()["version"] for a in answers)

    # v2, better: 20% then 50% of requests, each step passed on its own reviews, then promoted
    annotate_policy(loop.api, loop.ns, c.ANNOTATION_RETRAIN_NOW, "better")
    loop.ship("v2", v2, acc["v2"], "v1")
    first = step("v2", 20, range(0, 200))
    assert set(first) == {"v1", "v2"} and 0.1 < first["v2"] / 200 < 0.3, first
    wait_for(lambda: (loop.status().get("canary") or {}).get("step") == 1, WAIT_S, "the step to 50%", op)
    second = step("v2", 50, range(200, 400))
    assert 0.35 < second["v2"] / 200 < 0.65, second
    wait_for(lambda: loop.status().get("activeVersion") == "v2", WAIT_S, "v2 promoted after the last step", op)
    loop.replica.wait_serving("v2")
    canary = loop.status()["canary"]
    assert isinstance(canary, dict) and (canary["version"], canary["verdict"], canary["percent"]) == (
        "v2",
        "Promote",
        0,
    )
    assert canary["candidateReviews"] >= 20 and canary["activeReviews"] >= 20, canary
    assert loop.canary() is None

    # v3, worse: answers its 20% share, is rolled back on the reviews of those answers, answers nobody after
    annotate_policy(loop.api, loop.ns, c.ANNOTATION_RETRAIN_NOW, "worse")
    loop.ship("v3", v3, acc["v3"], "v2")
    served = step("v3", 20, range(0, 200))
    assert served["v3"] > 0, served
    wait_for(lambda: phase(loop.api, loop.ns, "v3") == "Rejected", WAIT_S, "v3 rolled back by the canary", op)
    # the ModelVersion is marked during the pass, the policy's status at its end
    wait_for(lambda: (loop.status().get("canary") or {}).get("verdict") == "Reject", WAIT_S, "the verdict", op)
    canary = loop.status()["canary"]
    assert isinstance(canary, dict) and (canary["version"], canary["verdict"], canary["reason"]) == (
        "v3", "Reject", "Worse"
    ), canary  # fmt: skip
    cond = policy_conditions(loop.api, loop.ns)["CanaryStage"]
    assert (cond["status"], cond["reason"]) == ("False", "Worse"), cond
    events = client.CoreV1Api(loop.api).list_namespaced_event(loop.ns).items
    assert any(e.reason == "CanaryRejected" and "v3 vs v2" in (e.message or "") for e in events)
    wait_for(lambda: loop.canary() is None, WAIT_S, "the split ended on the replica", loop.replica.sidecar)
    with httpx.Client(base_url=loop.replica.base, timeout=30) as http:
        after = loop.predict(http, holdout, range(100))
    assert {a.json()["version"] for a in after} == {"v2"}
    assert loop.status()["activeVersion"] == "v2"


def test_rollback_to_the_active_version_mid_canary_ends_the_split_on_every_replica(make_loop: MakeLoop) -> None:
    """The on-call's `kubectl annotate rp ... rollback-to=<active>` while a candidate answers its canary share:
    the split ends on every replica, only the active version answers, the candidate is RolledBack (never offered
    again), and clients sending requests throughout see no failure."""
    canary = {"enabled": True, "steps": [30, 60], "minReviewsPerStep": 100_000, "maxStepDuration": "1d"}
    loop = make_loop({"shadow": NO_SHADOW, "canary": canary}, replicas=2)
    train, holdout = DigitsPlugin().base_dataset()
    v1, v2 = _train(train, 5, False), _train(train, 30, False)
    op = loop.operator.proc
    loop.ship("v1", v1, _accuracy(v1, holdout), None)
    wait_for(lambda: loop.status().get("activeVersion") == "v1", WAIT_S, "v1 active on both replicas", op)
    for r in loop.replicas:
        r.wait_serving("v1")

    annotate_policy(loop.api, loop.ns, c.ANNOTATION_RETRAIN_NOW, "canary")
    loop.ship("v2", v2, _accuracy(v2, holdout), "v1")
    want = {"version": "v2", "percent": 30}
    for r in loop.replicas:
        wait_for(lambda r=r: loop.canary(r) == want, WAIT_S, f"v2 answering 30% on {r.server.name}", r.sidecar)
    with Traffic(loop.replicas, holdout) as traffic:
        wait_for(lambda: traffic.count() >= 200, WAIT_S, "200 requests during the canary")
        during = Counter(version for _, version in traffic.answers)
        assert during["v2"] > 0 and during["v1"] > 0, f"v2 was not serving its share: {during}"

        annotate_policy(loop.api, loop.ns, c.ANNOTATION_ROLLBACK_TO, "v1")
        for r in loop.replicas:
            wait_for(lambda r=r: loop.canary(r) is None, WAIT_S, f"the split ended on {r.server.name}", r.sidecar)
        ended_at = traffic.count() + 1  # one request at a time: the one in flight may have been split before the end
        wait_for(lambda: traffic.count() >= ended_at + 200, WAIT_S, "200 requests after the split ended")
    assert traffic.failed() == [], "a request failed during the canary or its rollback"
    after_rollback = Counter(version for _, version in traffic.answers[ended_at:])
    assert set(after_rollback) == {"v1"}, f"the candidate answered after the split ended: {after_rollback}"
    for r in loop.replicas:
        with httpx.Client(base_url=r.base, timeout=30) as http:
            assert {a.json()["version"] for a in loop.predict(http, holdout, range(50))} == {"v1"}

    wait_for(lambda: phase(loop.api, loop.ns, "v2") == "RolledBack", WAIT_S, "v2 marked RolledBack", op)
    wait_for(lambda: (loop.status().get("canary") or {}).get("reason") == "Rollback", WAIT_S, "the canary ended", op)
    st = loop.status()
    assert (st["activeVersion"], st["desired"]["version"], st["handled"]["rollbackTo"]) == ("v1", "v1", "v1")
    assert (st["canary"]["version"], st["canary"]["verdict"], st["canary"]["percent"]) == ("v2", "Reject", 0)
    assert st.get("candidate") is None, "the rolled-back v2 is offered to the sidecars again"
    conds = policy_conditions(loop.api, loop.ns)
    assert (conds["CanaryStage"]["status"], conds["CanaryStage"]["reason"]) == ("False", "Rollback")
    assert "canary ended at 30% of requests" in conds["CanaryStage"]["message"]
    assert (conds["RolledBack"]["status"], conds["RolledBack"]["reason"]) == ("True", "Rollback")
    assert "ending the canary of v2: only v1 answers" in conds["RolledBack"]["message"]
    mv = versions(loop.api, loop.ns)["v2"]["status"]
    assert "canary ended at 30% of requests: Rollback to v1" in mv["message"]
    events = client.CoreV1Api(loop.api).list_namespaced_event(loop.ns).items
    assert [e.reason for e in events if e.reason in ("RolledBack", "RollbackRejected")] == ["RolledBack"]
    for r in loop.replicas:
        wait_for(lambda r=r: loop.shadow(r) is None, WAIT_S, f"v2 unloaded on {r.server.name}", r.sidecar)
