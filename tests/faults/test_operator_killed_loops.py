"""The operator is SIGKILLed at random points across 20 retrain loops: nothing is duplicated or lost.

Issue 8: "Operator SIGKILLed at random points across 20 loops: no duplicate Jobs or versions, every
loop ends Active or Rejected." The real ``modelloop-operator`` runs against the real API server and
MinIO; the test plays the kubelet (it publishes real artifacts and completes the train and verify
Jobs) and the sidecars (it annotates the serving Pods). Every loop is killed at least once, at
one of six points drawn per loop: at a random delay after the step that makes the operator act
(Pending: the trigger; Training, Verifying: the Job completed; Rollout: the Pods report the new
digest), so the kill lands while it reacts; or, from a watch, the instant the API server reports
one of the operator's own writes (Created: the ModelVersion; Promoting: the version marked
Promoting), so the kill lands between that write and the policy status write that goes with it.
The plan comes from one seed, printed (and settable with ``MODELLOOP_FAULT_SEED``) so a failure
can be replayed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from operator_harness import (
    MODEL,
    Operator,
    annotate_policy,
    annotate_serving_pods,
    complete_job,
    create_fixtures,
    create_policy,
    desired_version,
    fake_training,
    job_env,
    job_exists,
    jobs,
    phase,
    policy_body,
    policy_status,
    published_manifests,
    serving_pods,
    versions,
    write_verification,
)

from modelloop.api import constants as c
from modelloop.api.feedback import FeedbackRecord, batch_key, encode_batch
from modelloop.api.modelversion import Phase
from modelloop.clients.objectstore import ObjectStore
from modelloop.decide.versions import version_phase
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

LOOPS = 20
PHASES = ("Pending", "Created", "Training", "Verifying", "Promoting", "Rollout")
ON_WRITE = frozenset({"Created", "Promoting"})
"""Kill points reached by a watch on the operator's own writes; the others are timed."""
EXTRA_KILL_CHANCE = 0.05
MAX_KILL_DELAY_S = 1.2  # a little more than the 1 s reconcile interval: kills land before, during and after a pass
WAIT_S = 120.0  # generous: every wait may include an operator restart on a loaded 2-core machine


@dataclass(frozen=True)
class LoopPlan:
    n: int
    trigger: str
    """Bootstrap (v1), RetrainNow (annotation) or Feedback (corrections in the bucket)."""
    rejected: bool
    kills: dict[str, float]
    """Kill point -> seconds after its step at which the operator is SIGKILLed (0 for ``ON_WRITE``)."""

    @property
    def version(self) -> str:
        return f"v{self.n}"


def make_plan(rng: random.Random) -> list[LoopPlan]:
    rejected = set(rng.sample(range(1, LOOPS + 1), k=rng.randint(4, 6)))
    kill_sets: list[set[str]] = []
    for n in range(1, LOOPS + 1):
        applicable = PHASES[:4] if n in rejected else PHASES
        kill_sets.append({rng.choice(applicable)} | {p for p in applicable if rng.random() < EXTRA_KILL_CHANCE})
    for p in PHASES:  # every phase at least once, whatever the draw
        if not any(p in k for k in kill_sets):
            kill_sets[rng.choice([n - 1 for n in range(1, LOOPS + 1) if n not in rejected])].add(p)
    plan = []
    promoted_before = False
    for n, kill_set in enumerate(kill_sets, start=1):
        # feedback is counted against the serving version, so it needs one
        feedback = n > 1 and promoted_before and rng.random() < 0.3
        trigger = "Bootstrap" if n == 1 else "Feedback" if feedback else "RetrainNow"  # Bootstrap: policy created
        kills = {
            p: 0.0 if p in ON_WRITE else round(rng.uniform(0, MAX_KILL_DELAY_S), 3) for p in PHASES if p in kill_set
        }
        plan.append(LoopPlan(n, trigger, n in rejected, kills))
        promoted_before = promoted_before or n not in rejected
    return plan


def holdout(n: int) -> float:
    """Each promoted version measures better than any before it, so beatsActive passes on merit."""
    return round(0.88 + 0.005 * n, 4)


class Tripwire:
    """SIGKILLs the operator from a watch thread the moment a matching ModelVersion event arrives.

    The operator writes the policy status a few milliseconds after the ModelVersion write it goes
    with; a test that polls would nearly always kill after both. The watch delivers the event as
    soon as the API server has stored it, so the kill lands between the two writes (often, not
    always: whichever it hits, the loop must end the same). Only the kill happens in the thread;
    the restart stays in the main thread, which the operator's PDEATHSIG is tied to.
    """

    def __init__(self, cp: ControlPlane, ns: str, operator: Operator) -> None:
        self.ns, self.operator = ns, operator
        self.fired = threading.Event()
        self._closed = threading.Event()
        self._armed: Callable[[str, dict[str, Any]], bool] | None = None
        self._lock = threading.Lock()
        self._api = cp.api_client()
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._run, name="tripwire", daemon=True)
        self._thread.start()

    def arm(self, matches: Callable[[str, dict[str, Any]], bool]) -> None:
        with self._lock:
            self.fired.clear()
            self._armed = matches

    def close(self) -> None:
        self._closed.set()
        self._watch.stop()  # type: ignore[no-untyped-call]
        self._api.close()

    def _run(self) -> None:
        custom = client.CustomObjectsApi(self._api)
        while not self._closed.is_set():
            try:
                for event in self._watch.stream(  # type: ignore[no-untyped-call]
                    custom.list_namespaced_custom_object, c.GROUP, c.VERSION, self.ns, c.MODELVERSION_PLURAL
                ):
                    with self._lock:
                        if self._armed is not None and self._armed(event["type"], event["object"]):
                            self.operator.proc.kill_now()
                            self._armed = None
                            self.fired.set()
            except Exception:  # noqa: BLE001 - a broken watch is started again; close() ends the loop
                time.sleep(0.1)


@dataclass
class Driver:
    api: client.ApiClient
    ns: str
    store: ObjectStore
    operator: Operator
    tripwire: Tripwire
    tmp: Path
    policy: dict[str, Any]
    killed: list[tuple[str, str]] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        wait_for(predicate, WAIT_S, what, self.operator.proc)

    def maybe_kill(self, loop: LoopPlan, step: str) -> None:
        delay = loop.kills.get(step)
        if delay is None:
            return
        time.sleep(delay)  # fault injection at a drawn moment, not synchronisation
        self.operator.sigkill_and_restart()
        self.killed.append((loop.version, step))

    def arm(self, loop: LoopPlan, step: str, matches: Callable[[str, dict[str, Any]], bool]) -> None:
        if step in loop.kills:
            self.tripwire.arm(
                lambda kind, mv: (mv.get("spec") or {}).get("version") == loop.version and matches(kind, mv)
            )

    def on_write_kill(self, loop: LoopPlan, step: str) -> None:
        if step not in loop.kills:
            return
        self.wait(self.tripwire.fired.is_set, f"the operator's {step} write for {loop.version}")
        self.operator.sigkill_and_restart()  # already dead: this reaps it and starts the next one
        self.killed.append((loop.version, step))

    def trigger(self, loop: LoopPlan) -> None:
        if loop.trigger == "Bootstrap":
            create_policy(self.api, self.policy, self.ns)
        elif loop.trigger == "RetrainNow":
            annotate_policy(self.api, self.ns, c.ANNOTATION_RETRAIN_NOW, f"loop-{loop.n}")
        elif loop.trigger == "Feedback":
            now = datetime.now(UTC)
            recs = [
                FeedbackRecord(
                    id=f"{loop.n}-{i}", version=self.promoted[-1], input=[0.0], predicted=1, label=2, reviewed_at=now
                )
                for i in range(3)
            ]
            self.store.put_bytes(batch_key(MODEL), encode_batch(recs))

    def run(self, loop: LoopPlan) -> None:
        v = loop.version
        parent = self.promoted[-1] if self.promoted else None
        train, verify = f"digits-{v}-train", f"digits-{v}-verify"
        self.arm(loop, "Created", lambda kind, _: kind == "ADDED")
        self.trigger(loop)
        self.maybe_kill(loop, "Pending")
        self.on_write_kill(loop, "Created")
        self.wait(lambda: job_exists(self.api, self.ns, train), f"training Job {train} ({loop.trigger})")

        digest = fake_training(self.store, v, parent, self.tmp)
        complete_job(self.api, self.ns, train)
        self.maybe_kill(loop, "Training")
        self.wait(lambda: job_exists(self.api, self.ns, verify), f"verification Job {verify}")

        baseline = job_env(self.api, self.ns, verify, c.ENV_ACTIVE_VERSION) or None
        assert baseline == parent, f"{verify} was told to beat {baseline}, but {parent} is active"
        base_acc = holdout(int(parent[1:])) if parent else None
        worst_class = 0.5 if loop.rejected else 0.95  # minClassAccuracy is 0.9
        write_verification(self.store, v, digest, holdout(loop.n), parent, base_acc, worst_class)
        # The policy pass's own write that marks it Promoting: the decision on the version's metadata.
        self.arm(loop, "Promoting", lambda _, mv: version_phase(mv) == Phase.PROMOTING)
        complete_job(self.api, self.ns, verify)
        self.maybe_kill(loop, "Verifying")
        if loop.rejected:
            self.wait(lambda: phase(self.api, self.ns, v) == "Rejected", f"{v} Rejected")
            return

        self.on_write_kill(loop, "Promoting")
        self.wait(lambda: desired_version(self.api, self.ns) == v, f"desired {v}")
        assert annotate_serving_pods(self.api, self.ns, digest) == 2
        self.maybe_kill(loop, "Rollout")
        self.wait(
            lambda: (
                policy_status(self.api, self.ns).get("activeVersion") == v and phase(self.api, self.ns, v) == "Active"
            ),
            f"{v} Active",
        )
        self.promoted.append(v)


def test_operator_sigkilled_at_random_points_across_20_loops(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, api: client.ApiClient, tmp_path: Path
) -> None:
    seed = int(os.environ.get("MODELLOOP_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (replay: MODELLOOP_FAULT_SEED={seed})")
    plan = make_plan(random.Random(seed))
    for loop in plan:
        print(
            f"  {loop.version}: {loop.trigger:<10} {'Rejected' if loop.rejected else 'promoted':<9} kill {loop.kills}"
        )

    ns = namespace
    store = minio.store(bucket)
    create_fixtures(api, minio, ns)
    body = policy_body(
        minio,
        bucket,
        verification={"gates": {"minClassAccuracy": 0.9, "beatMargin": 0.002}},
        retention={"keepVersions": 2 * LOOPS},
        retry={"maxAttempts": 1},  # every loop is one planned version; retries are tested in test_operator_loop
    )
    op = Operator(control_plane, ns, tmp_path / "operator.log").start()
    tripwire = Tripwire(control_plane, ns, op)
    try:
        driver = Driver(api, ns, store, op, tripwire, tmp_path, body)
        wait_for(lambda: len(serving_pods(api, ns)) == 2, WAIT_S, "the Deployment's 2 Pods")
        started = time.monotonic()
        for loop in plan:
            t0 = time.monotonic()
            driver.run(loop)
            print(f"  {loop.version} done in {time.monotonic() - t0:.1f}s")
        # A pass after the last loop that starts nothing: a consumed trigger is never replayed.
        driver.wait(
            lambda: (
                {x["type"]: x for x in policy_status(api, ns).get("conditions", [])}["Training"]["status"] == "False"
            ),
            "the policy to settle with nothing in flight",
        )
        print(f"{LOOPS} loops, {op.kills} kills in {time.monotonic() - started:.0f}s")
        promoted = [p.version for p in plan if not p.rejected]
        settled = {p.version: "Rejected" if p.rejected else "Superseded" for p in plan} | (
            {promoted[-1]: "Active"} if promoted else {}
        )
        driver.wait(
            lambda: {v: mv["status"]["phase"] for v, mv in versions(api, ns).items()} == settled,
            "every version's status to say what the policy decided (the ModelVersion handler copies it)",
        )
    finally:
        tripwire.close()
        op.proc.stop()
    log = op.proc.log_path.read_text()
    print(
        "kills that landed between a ModelVersion write and the policy status write that goes with it: "
        f"{log.count('status write of the pass that created it was lost')} after a creation, "
        f"{log.count('status.desired never named it')} after marking a version Promoting"
    )

    expected = [p.version for p in plan]
    promoted = [p.version for p in plan if not p.rejected]
    mvs = versions(api, ns)
    assert sorted(mvs, key=lambda v: int(v[1:])) == expected, "versions v1..v20, no gaps, no extras"
    assert jobs(api, ns) == sorted(f"digits-{v}-{verb}" for v in expected for verb in ("train", "verify"))
    phases = {v: mv["status"]["phase"] for v, mv in mvs.items()}
    assert phases == {
        v: "Rejected" if v not in promoted else ("Active" if v == promoted[-1] else "Superseded") for v in expected
    }
    parents: dict[str, str | None] = {}
    last: str | None = None
    for p in plan:
        parents[p.version] = last
        last = last if p.rejected else p.version
    assert {v: mv["spec"].get("parentVersion") for v, mv in mvs.items()} == parents, "each trained from the active one"
    assert published_manifests(store) == expected, "exactly the published versions' manifests are in the bucket"

    st = policy_status(api, ns)
    assert (st["activeVersion"], st["desired"]["version"]) == (promoted[-1], promoted[-1])
    assert st["desired"]["manifestDigest"] == mvs[promoted[-1]]["status"]["artifact"]["manifestDigest"]
    assert st.get("previousVersion") == (promoted[-2] if len(promoted) > 1 else None)
    assert st["latestVersion"] == expected[-1]
    assert st.get("trainingVersion") is None
    retrain_now = [p for p in plan if p.trigger == "RetrainNow"]
    assert st["handled"].get("retrainNow") == (f"loop-{retrain_now[-1].n}" if retrain_now else None)

    assert op.kills == len(driver.killed) >= LOOPS, f"only {op.kills} kills"
    assert {step for _, step in driver.killed} == set(PHASES), f"kills landed in {driver.killed}"
