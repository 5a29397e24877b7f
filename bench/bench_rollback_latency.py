"""Rollback latency: from ``kubectl annotate rp X modelloop.dev/rollback-to=...`` to every replica answering.

Three serving replicas (``modelloop-server`` + ``modelloop-sidecar`` pairs as local processes,
from ``bench_promotion_latency``) serve a 50 MB model against the real control plane and MinIO,
and the real ``modelloop-operator`` (default intervals) reconciles the policy. The policy starts
with v1 (Superseded), v2 (Active) and v3 (Verified) ModelVersions, so the operator itself
promotes v3 first; then each round sets the rollback-to annotation, alternating
``previous`` (back to v2) and ``v3`` (forward again), and the clock runs from the annotation
patch until all three replicas answer ``/v1/predict`` with the target. The operator's share,
annotation → ``status.desired`` naming the target, is recorded beside it.

Baseline: a published design promises rollback within a minute (60 s); the target is p95 < 2 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urllib3

from bench import report
from bench.bench_operator_scale import wait_until
from bench.bench_promotion_latency import (
    BUCKET,
    MODEL,
    NAMESPACE,
    POLICY,
    REPLICAS,
    policy_body,
    publish,
    replicas,
    serving_cluster,
    start_pods,
    time_until_all_serve,
)
from bench.servers import standalone_operator
from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri

BASELINE_ROLLBACK_S = 60.0
TARGET_P95_S = 2.0
FORWARD = "v3"
BACK = "v2"


def version_body(version: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.MODELVERSION_KIND,
        "metadata": {
            "name": f"{POLICY}-{version}",
            "namespace": NAMESPACE,
            "labels": {c.LABEL_POLICY: POLICY, c.LABEL_MODEL: MODEL, c.LABEL_VERSION: version},
        },
        "spec": {"model": MODEL, "version": version, "policy": POLICY, "trigger": "bench"},
    }


def seed_versions(crd: Any, digests: dict[str, str]) -> None:
    """v1 Superseded, v2 Active (and desired), v3 Verified: what the operator leaves after two promotions."""
    phases = {"v1": "Superseded", "v2": "Active", "v3": "Verified"}
    for version, phase in phases.items():
        crd.create_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, version_body(version))
        crd.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, f"{POLICY}-{version}",
            {"status": {
                "phase": phase,
                "message": "seeded by the rollback bench",
                "artifact": {"uri": artifact_uri(BUCKET, MODEL, version), "manifestDigest": digests[version]},
            }},
        )  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    crd.patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY,
        {"status": {
            "activeVersion": "v2", "previousVersion": "v1", "latestVersion": "v3",
            "desired": {
                "version": "v2", "artifactURI": artifact_uri(BUCKET, MODEL, "v2"),
                "manifestDigest": digests["v2"], "since": now, "reason": "Promotion",
            },
        }},
    )  # fmt: skip


class DesiredWatch:
    """Polls ``status.desired`` every 50 ms in a thread: when the operator turned the annotation into it."""

    def __init__(self, read: Callable[[], str | None]) -> None:
        self.read = read
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                version = self.read()
            except Exception:  # noqa: BLE001 - a failed poll is a missed sample, not a failed bench
                continue
            if version is not None:
                self.seen.setdefault(version, time.monotonic())

    def expect(self) -> None:
        self.seen.clear()

    def __enter__(self) -> DesiredWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run(rounds: int, timeout: float) -> list[report.Measurement]:
    from kubernetes import client as k8s

    with serving_cluster("bench-rollback-") as (tmp, cp, s3):
        store = s3.store(BUCKET)
        digests = {f"v{n}": publish(store, f"v{n}", n, tmp) for n in (1, 2, 3)}
        size_mb = (tmp / "v1" / "model.safetensors").stat().st_size / 1e6
        crd: Any = k8s.CustomObjectsApi(cp.api_client())
        crd.create_namespaced_custom_object(
            c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, policy_body(s3.endpoint)
        )
        seed_versions(crd, digests)

        def status() -> dict[str, Any]:
            obj: dict[str, Any] = crd.get_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY
            )
            return dict(obj.get("status") or {})

        def active_is(version: str) -> Callable[[], bool]:
            return lambda: status().get("activeVersion") == version

        def annotate(value: str) -> None:
            crd.patch_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY,
                {"metadata": {"annotations": {c.ANNOTATION_ROLLBACK_TO: value}}},
            )  # fmt: skip

        base_env = start_pods(cp, s3)
        pool = urllib3.PoolManager(retries=False, maxsize=REPLICAS)
        operator = standalone_operator(NAMESPACE, tmp / "operator.log", cp.env)
        with replicas(tmp / "replicas", base_env) as reps:
            first = time_until_all_serve(reps, "v2", pool, timeout)
            print(f"{REPLICAS} replicas serving v2 after {first:.1f} s (cold start)", flush=True)
            operator.start()
            try:
                promoted = time_until_all_serve(reps, FORWARD, pool, timeout)
                wait_until(f"operator records {FORWARD} active", active_is(FORWARD), timeout)
                print(
                    f"operator promoted {FORWARD}: all replicas serve it {promoted:.1f} s after its start", flush=True
                )
                samples: list[float] = []
                reactions: list[float] = []
                with DesiredWatch(lambda: (status().get("desired") or {}).get("version")) as watch:
                    for i in range(rounds):
                        value, target = ("previous", BACK) if i % 2 == 0 else (FORWARD, FORWARD)
                        watch.expect()
                        t0 = time.monotonic()
                        annotate(value)  # the clock starts at the user's kubectl annotate
                        time_until_all_serve(reps, target, pool, timeout)
                        samples.append(time.monotonic() - t0)
                        if target in watch.seen:
                            reactions.append(watch.seen[target] - t0)
                        wait_until(f"operator records {target} active", active_is(target), timeout)
                print(f"rollback seconds: {[round(x, 3) for x in samples]}", flush=True)
                print(f"operator reaction seconds: {[round(x, 3) for x in reactions]}", flush=True)
            finally:
                operator.stop()

    p95 = report.percentile(samples, 95)
    return [
        report.Measurement(
            name=f"rollback latency p95 (annotation, {REPLICAS} replicas, {size_mb:.0f} MB model)",
            unit="s",
            baseline=BASELINE_ROLLBACK_S,
            figure=p95,
            baseline_label="published design: rollback within a minute",
            figure_label="rollback-to annotation -> all replicas answer with the target",
            target=f"p95 < {TARGET_P95_S:g} s",
            passed=p95 < TARGET_P95_S,
            details={
                **report.summary(samples),
                "samples": samples,
                "operator_reaction_p95_s": report.percentile(reactions, 95) if reactions else None,
                "operator_reaction_samples": reactions,
            },
        )
    ]


def main() -> None:
    report.rounds_main(__doc__ or "", run, "rollbacks measured", "seconds allowed for one rollback")


if __name__ == "__main__":
    main()
