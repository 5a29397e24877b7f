"""Argo CD's own application controller syncing the example policy from Git, on a real API server.

The cluster tier (tests/cluster/test_install.py) proves that the operator's retraining, promotion
and rollback never make the Application drift; that proof rests on ``SyncRecorder`` noticing drift
when there is some. This test shows it does, and pins what Argo CD counts as drift for our kind:
a hand edit of a field Git sets is drift (and self-heal puts Git's value back), while what the
operator and the README's users write (status, the ``rollback-to`` annotation) is not. It also shows
the controller judging a live policy's health with docs/argocd.md's Lua as its status changes.
No operator runs here: the test writes the status the operator would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelloop.api import constants as c
from modelloop_dev.argocd import ArgoCD, GitRepo, SyncRecorder, doc_yaml, locate_argocd, undid_something
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.processes import wait_for

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def argocd(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgoCD]:
    started = ArgoCD(locate_argocd(ROOT), ROOT, control_plane, tmp_path_factory.mktemp("argocd"))
    try:
        yield started.start()
    finally:
        started.stop()


def policy_health(argocd: ArgoCD, app: str) -> tuple[str, str]:
    for r in argocd.application(app).get("status", {}).get("resources") or []:
        if r["kind"] == "RetrainPolicy":
            health = r.get("health") or {}
            return health.get("status", ""), health.get("message", "")
    return "", ""


def test_self_heal_undoes_a_hand_edit_while_status_and_annotations_are_not_drift(
    argocd: ArgoCD, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "models").init()
    commit = repo.commit(
        {"digits/retrainpolicy.yaml": (ROOT / "examples/retrainpolicy-digits.yaml").read_text()}, "the example"
    )
    app: dict[str, Any] = doc_yaml(ROOT / "docs/argocd.md", "kind: Application")
    app["spec"]["source"]["repoURL"] = repo.url
    app["spec"]["destination"]["namespace"] = namespace
    name = app["metadata"]["name"]
    recorder = SyncRecorder(argocd.kube, name).start()
    try:
        argocd.apply(app)
        argocd.wait_synced(name, commit, timeout=120)

        def kubectl_rp(*args: str) -> Any:
            return control_plane.kubectl("-n", namespace, *args)

        def min_samples() -> int:
            rp = json.loads(kubectl_rp("get", "rp", "digits", "-o", "json").stdout)
            return int(rp["spec"]["triggers"]["feedback"]["minSamples"])

        # No operator has observed it: the policy's own health check says so, through the controller.
        wait_for(
            lambda: policy_health(argocd, name) == ("Progressing", "Waiting for the operator to observe the policy"),
            60,
            "Argo CD to judge the unobserved policy Progressing with docs/argocd.md's message",
        )

        # What the operator writes: status (its only write to a policy). Healthy, with our Lua's message.
        generation = json.loads(kubectl_rp("get", "rp", "digits", "-o", "json").stdout)["metadata"]["generation"]
        status = {"observedGeneration": generation, "activeVersion": "v1", "latestVersion": "v1"}
        kubectl_rp(
            "patch", "rp", "digits", "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
        )
        # What the README tells people to run: an annotation Git does not set.
        kubectl_rp("annotate", "rp", "digits", f"{c.ANNOTATION_ROLLBACK_TO}={c.ROLLBACK_PREVIOUS}")
        wait_for(
            lambda: policy_health(argocd, name) == ("Healthy", "Serving v1"),
            60,
            "Argo CD to judge the observed policy Healthy with docs/argocd.md's message",
        )
        argocd.refresh(name)
        argocd.wait_synced(name, commit, timeout=60)
        assert not recorder.drift, [(o.sync, o.resources) for o in recorder.drift]
        assert not [h for h in recorder.self_heals.values() if undid_something(h)], recorder.self_heals

        # A hand edit of a field Git sets: drift, and self-heal restores Git's 100.
        assert min_samples() == 100
        kubectl_rp("patch", "rp", "digits", "--type=merge", "-p", '{"spec":{"triggers":{"feedback":{"minSamples":5}}}}')
        wait_for(lambda: min_samples() == 100, 120, "self-heal to put Git's minSamples back")
        wait_for(lambda: bool(recorder.drift), 30, "the recorder to see the drift self-heal undid")
        assert recorder.drift[0].revision == commit
        wait_for(
            lambda: any(undid_something(h) for h in recorder.self_heals.values()),
            30,
            "the recorder to see a self-heal sync that configured the policy",
        )
    finally:
        recorder.stop()
        control_plane.kubectl("-n", "argocd", "delete", "application", name, "--wait=false", check=False)
