"""Training through Kueue on the real node: queued, admitted, preempted and resumed from its checkpoint.

Kueue's real controller manager (built from sigs.k8s.io/kueue by hack/kueue.sh) runs beside the
cluster; a ClusterQueue has CPU quota for exactly one training Job. Three policies submit their
v1 through one LocalQueue:

1. ``kq-first`` (priority low) is admitted and trains; ``kq-second`` (low) waits, its ModelVersion
   showing ``Queued=True`` and a ``Queued`` Event, its Job suspended;
2. when ``kq-first``'s training ends, ``kq-second`` is admitted and trains;
3. ``kq-urgent`` (priority high) arrives and preempts it (ClusterQueue preemption
   withinClusterQueue: LowerPriority): Kueue suspends the Job, the pod gets SIGTERM, the trainer
   checkpoints the epoch it was in and exits; ``kq-second`` shows ``Queued`` reason ``Preempted``
   and a Warning Event, never Failed;
4. ``kq-urgent`` trains and verifies; ``kq-second`` is admitted again, resumes from the checkpoint
   with no epoch lost beyond it, and publishes one version.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from cluster_harness import NAMESPACE, VERSION_TIMEOUT_S, Installed, diagnostics

from modelloop.api import constants as c
from modelloop_dev.demo import PolicyView, wait_for
from modelloop_dev.kueue import Kueue

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3600)]

QUEUE = "training"
# One training Job's request: two do not fit the ClusterQueue's 150m.
TRAIN_REQUESTS = {"cpu": "100m", "memory": "512Mi"}
SECOND_EPOCHS = 150


def kueue_objects() -> list[dict[str, Any]]:
    kq = "kueue.x-k8s.io/v1beta2"
    return [
        {"apiVersion": kq, "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {
            "apiVersion": kq,
            "kind": "ClusterQueue",
            "metadata": {"name": QUEUE},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": "default",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "150m"},
                                    {"name": "memory", "nominalQuota": "4Gi"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": kq,
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": NAMESPACE},
            "spec": {"clusterQueue": QUEUE},
        },
        {"apiVersion": kq, "kind": "WorkloadPriorityClass", "metadata": {"name": "low"}, "value": 100},
        {"apiVersion": kq, "kind": "WorkloadPriorityClass", "metadata": {"name": "high"}, "value": 1000},
    ]


def policy(installed: Installed, name: str, priority: str, epochs: int) -> dict[str, Any]:
    base = installed.kubectl_json("-n", NAMESPACE, "get", "rp", "digits")
    return {
        "apiVersion": base["apiVersion"],
        "kind": "RetrainPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": name,
            "storage": base["spec"]["storage"],
            "dataset": base["spec"]["dataset"],
            "training": {
                "image": base["spec"]["training"]["image"],
                "queueName": QUEUE,
                "workloadPriorityClass": priority,
                "resources": {"requests": TRAIN_REQUESTS, "limits": {"memory": "2Gi"}},
                "hyperparameters": {
                    "epochs": epochs,
                    "batchSize": 64,
                    "checkpointInterval": 4,
                    "earlyStoppingPatience": 0,
                },
            },
            # This test is about admission; the example's gates are for what serves.
            "verification": {"gates": {"minValidationAccuracy": 0.5, "minHoldoutAccuracy": 0.5}},
        },
    }


def condition(mv: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((mv or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def event_reasons(installed: Installed, name: str) -> list[str]:
    events = installed.kubectl_json("-n", NAMESPACE, "get", "events", "--field-selector", f"involvedObject.name={name}")
    return [e["reason"] for e in events["items"]]


def test_queued_admitted_preempted_and_resumed_through_kueue(
    installed: Installed, kueue: Kueue, report: dict[str, Any]
) -> None:
    cluster = installed.cluster
    kube = installed.view.kube

    def check(ok: bool, what: str) -> None:
        if not ok:
            pytest.fail(f"{what}\n{diagnostics(cluster)}\n$ kueue log\n{kueue.log_tail()}")

    cluster.kubectl("apply", "--server-side", "-f", "-", input="\n".join(json.dumps(o) for o in kueue_objects()))
    first, second, urgent = (PolicyView(kube, NAMESPACE, n, "") for n in ("kq-first", "kq-second", "kq-urgent"))
    t0 = time.monotonic()

    # 1. First admitted, second queued behind it.
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy(installed, "kq-first", "low", 4)))
    wait_for(
        "kq-first's v1 to be admitted",
        lambda: condition(first.mvs().get("v1"), "Queued").get("reason") == "Admitted",
        VERSION_TIMEOUT_S,
    )
    # Long enough that the preemption lands mid-training: in the first run 12 epochs (about 1 s each
    # on the node) were all done before the urgent policy's Job had been created and admitted.
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy(installed, "kq-second", "low", SECOND_EPOCHS)))
    queued = wait_for(
        "kq-second's v1 to show Queued=True",
        lambda: (lambda mv: mv if condition(mv, "Queued").get("status") == "True" else None)(second.mvs().get("v1")),
        VERSION_TIMEOUT_S,
    )
    report["kueue_queued_message"] = condition(queued, "Queued")["message"]
    check(condition(queued, "Ready").get("reason") == "Queued", "Ready does not say Queued while the Job waits")
    job = installed.kubectl_json("-n", NAMESPACE, "get", "job", "kq-second-v1-train")
    check(job["spec"]["suspend"] is True, "the queued Job is not suspended")
    check(job["metadata"]["labels"].get(c.KUEUE_LABEL_QUEUE_NAME) == QUEUE, "the Job lacks Kueue's queue label")
    check(
        first.mvs()["v1"]["status"]["phase"] in {"Training", "Verifying", "Verified", "Active"},
        "kq-first's v1 is not the one training",
    )

    # 2. Second admitted once first's training has left the quota.
    def second_at_epoch_2() -> int | None:
        mv = second.mvs().get("v1") or {}
        epoch = int(((mv.get("status") or {}).get("progress") or {}).get("epoch") or 0)
        return epoch if epoch >= 2 and condition(mv, "Queued").get("reason") == "Admitted" else None

    wait_for("kq-second's v1 to be admitted and train two epochs", second_at_epoch_2, VERSION_TIMEOUT_S, every_s=1)
    report["kueue_second_admitted_s"] = round(time.monotonic() - t0, 1)

    # 3. Urgent preempts second.
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy(installed, "kq-urgent", "high", 3)))
    preempted = wait_for(
        "kq-second's v1 to be preempted",
        lambda: (lambda mv: mv if condition(mv, "Queued").get("reason") == "Preempted" else None)(
            second.mvs().get("v1")
        ),
        VERSION_TIMEOUT_S,
    )
    epoch_at_preemption = int(preempted["status"]["progress"].get("epoch") or 0)
    report["kueue_preempted_at_epoch"] = epoch_at_preemption
    check(epoch_at_preemption < SECOND_EPOCHS, "kq-second finished training before the preemption: nothing to resume")
    check(preempted["status"]["phase"] == "Training", f"a preempted version is {preempted['status']['phase']}")

    # 4. Urgent done; second resumes from its checkpoint and publishes one version.
    urgent.wait_phase("v1", {"Verified", "Active"}, VERSION_TIMEOUT_S)
    first.wait_phase("v1", {"Verified", "Active"}, VERSION_TIMEOUT_S)
    v1 = second.wait_phase("v1", {"Verified", "Active"}, VERSION_TIMEOUT_S)
    report["kueue_all_three_s"] = round(time.monotonic() - t0, 1)

    pods = installed.kubectl_json("-n", NAMESPACE, "get", "pods", "-l", "job-name=kq-second-v1-train")["items"]
    done = [p for p in pods if p["status"]["phase"] == "Succeeded"]
    check(len(done) == 1, f"expected one pod to finish kq-second's training: {[p['metadata']['name'] for p in pods]}")
    log = cluster.kubectl("-n", NAMESPACE, "logs", done[0]["metadata"]["name"]).stdout
    resumed = re.search(r"resuming from checkpoint \S+: epochs 1\.\.(\d+) are done", log)
    check(resumed is not None, f"the re-admitted training did not resume from a checkpoint:\n{log[-3000:]}")
    assert resumed is not None
    report["kueue_resumed_after_epoch"] = int(resumed.group(1))
    check(
        int(resumed.group(1)) >= epoch_at_preemption,
        f"resumed after epoch {resumed.group(1)}, but epoch {epoch_at_preemption} was done before the preemption",
    )
    check(sorted(second.mvs()) == ["v1"], f"the preemption started another version: {sorted(second.mvs())}")
    check(bool(v1["status"]["artifact"]["manifestDigest"]), "no manifest")
    train_job = installed.kubectl_json("-n", NAMESPACE, "get", "job", "kq-second-v1-train")
    failed = [x for x in train_job["status"].get("conditions") or [] if x["type"] == "Failed" and x["status"] == "True"]
    check(not failed, f"the preemption failed the training Job: {failed}")
    report["kueue_preempted_job_failed_pods"] = train_job["status"].get("failed", 0)

    mv_name = v1["metadata"]["name"]
    reasons = event_reasons(installed, mv_name)
    for expected in ("Queued", "Admitted", "Preempted"):
        check(expected in reasons, f"no {expected} Event on ModelVersion {mv_name}: {reasons}")
    verify = installed.kubectl_json("-n", NAMESPACE, "get", "job", "kq-second-v1-verify")
    check(verify["metadata"]["labels"].get(c.KUEUE_LABEL_QUEUE_NAME) == QUEUE, "verification bypassed the queue")
    workloads = installed.kubectl_json("-n", NAMESPACE, "get", "workloads.kueue.x-k8s.io")["items"]
    check(len(workloads) >= 6, f"expected a Workload per training and verification Job: {len(workloads)}")


DDP_QUEUE = "training-ddp"
# Per worker: two of them (one Workload, one pod set of count 2) fit the ClusterQueue's 150m together.
DDP_REQUESTS = {"cpu": "50m", "memory": "512Mi"}


def test_two_workers_are_admitted_as_one_workload_and_rendezvous(
    installed: Installed, kueue: Kueue, report: dict[str, Any]
) -> None:
    """A distributed policy (``workers: 2``) with ``queueName``: its Indexed Job is created suspended
    and waits while its LocalQueue holds; once the queue admits, Kueue admits the Job as one Workload
    whose pod set counts both workers, unsuspends it, and the two pods rendezvous through the headless
    Service's DNS (gloo on CPU) and publish one manifest: one version, verified through the queue too."""
    cluster = installed.cluster
    kube = installed.view.kube
    name, job = "kq-ddp", "kq-ddp-v1-train"

    def check(ok: bool, what: str) -> None:
        if not ok:
            pytest.fail(f"{what}\n{diagnostics(cluster)}\n$ kueue log\n{kueue.log_tail()}")

    held = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": DDP_QUEUE, "namespace": NAMESPACE},
        "spec": {"clusterQueue": QUEUE, "stopPolicy": "Hold"},
    }
    objects = [*kueue_objects(), held]
    cluster.kubectl("apply", "--server-side", "-f", "-", input="\n".join(json.dumps(o) for o in objects))
    body = policy(installed, name, "low", 4)
    training = body["spec"]["training"]
    training.update(queueName=DDP_QUEUE, workers=2, backoffLimit=2, resources={**training["resources"]})
    training["resources"]["requests"] = DDP_REQUESTS
    del training["workloadPriorityClass"]
    training["hyperparameters"]["checkpointInterval"] = 1
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    view = PolicyView(kube, NAMESPACE, name, "")
    t0 = time.monotonic()

    # Held: the Job exists, suspended, and no worker pod has started.
    wait_for(
        f"{name}'s v1 to show Queued=True while {DDP_QUEUE} holds",
        lambda: condition(view.mvs().get("v1"), "Queued").get("status") == "True",
        VERSION_TIMEOUT_S,
    )
    indexed = installed.kubectl_json("-n", NAMESPACE, "get", "job", job)
    check(indexed["spec"]["suspend"] is True, "the queued Indexed Job is not suspended")
    check(indexed["spec"].get("completionMode") == "Indexed", f"not an Indexed Job: {indexed['spec']}")
    check(indexed["spec"]["parallelism"] == indexed["spec"]["completions"] == 2, "not one Job for both workers")
    check(indexed["metadata"]["labels"].get(c.KUEUE_LABEL_QUEUE_NAME) == DDP_QUEUE, "no queue label on the Job")
    pods = installed.kubectl_json("-n", NAMESPACE, "get", "pods", "-l", f"job-name={job}")["items"]
    check(not pods, f"worker pods started before admission: {[p['metadata']['name'] for p in pods]}")

    # Released: admitted as one Workload for both pods.
    cluster.kubectl(
        "-n", NAMESPACE, "patch", "localqueue", DDP_QUEUE, "--type=merge", "-p", '{"spec":{"stopPolicy":"None"}}'
    )
    released = time.monotonic()

    def admitted() -> bool:
        mv = view.mvs().get("v1") or {}
        phase = (mv.get("status") or {}).get("phase")
        return condition(mv, "Queued").get("reason") in {"Admitted", "Finished"} or phase in {"Verified", "Active"}

    wait_for(f"{name}'s v1 to be admitted", admitted, VERSION_TIMEOUT_S)
    report["kueue_ddp_admitted_s"] = round(time.monotonic() - released, 1)
    v1 = view.wait_phase("v1", {"Verified", "Active"}, VERSION_TIMEOUT_S)
    report["kueue_ddp_verified_s"] = round(time.monotonic() - t0, 1)

    uid = installed.kubectl_json("-n", NAMESPACE, "get", "job", job)["metadata"]["uid"]
    workloads = installed.kubectl_json(
        "-n", NAMESPACE, "get", "workloads.kueue.x-k8s.io", "-l", f"kueue.x-k8s.io/job-uid={uid}"
    )["items"]
    check(
        len(workloads) == 1, f"expected one Workload for the Indexed Job: {[w['metadata']['name'] for w in workloads]}"
    )
    pod_sets = workloads[0]["spec"]["podSets"]
    check([p["count"] for p in pod_sets] == [2], f"the Workload does not admit both workers together: {pod_sets}")
    admission = workloads[0]["status"].get("admission") or {}
    check(admission.get("clusterQueue") == QUEUE, f"not admitted by ClusterQueue {QUEUE}: {admission}")
    reserved = [x for x in workloads[0]["status"]["conditions"] if x["type"] == "QuotaReserved"]
    check(bool(reserved), f"the Workload never reserved quota: {workloads[0]['status']}")
    admitted_at = reserved[0]["lastTransitionTime"]

    pods = installed.kubectl_json("-n", NAMESPACE, "get", "pods", "-l", f"job-name={job}")["items"]
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    check(indexes == ["0", "1"], f"expected exactly one pod per worker index: {indexes}")
    check(
        all(p["status"]["phase"] == "Succeeded" for p in pods),
        f"{[(p['metadata']['name'], p['status']['phase']) for p in pods]}",
    )
    check(
        all(p["metadata"]["creationTimestamp"] >= admitted_at for p in pods),
        f"a worker pod was created before the Workload was admitted at {admitted_at}",
    )
    rank0 = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
    log = cluster.kubectl("-n", NAMESPACE, "logs", rank0["metadata"]["name"]).stdout
    check("joined the gloo process group" in log, f"rank 0 did not rendezvous:\n{log[-3000:]}")
    check(sorted(view.mvs()) == ["v1"], f"expected one version: {sorted(view.mvs())}")
    check(bool(v1["status"]["artifact"]["manifestDigest"]), "v1 has no manifest")
    verify = installed.kubectl_json("-n", NAMESPACE, "get", "job", "kq-ddp-v1-verify")
    check(verify["metadata"]["labels"].get(c.KUEUE_LABEL_QUEUE_NAME) == DDP_QUEUE, "verification bypassed the queue")
    reasons = event_reasons(installed, v1["metadata"]["name"])
    for expected in ("Queued", "Admitted"):
        check(expected in reasons, f"no {expected} Event on ModelVersion {v1['metadata']['name']}: {reasons}")
