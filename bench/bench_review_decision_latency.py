"""Review-decided promotion latency: from posting the review that completes ``minReviews`` to every replica
serving the candidate, against the promotion of a verified version without the shadow stage, in one run.

Three serving replicas (``modelloop-server`` + ``modelloop-sidecar`` pairs as local processes, from
``bench_promotion_latency``, 50 MB model) and the real ``modelloop-operator`` run against the real control
plane and MinIO. Each round measures, on fresh versions the bench publishes (ModelVersions seeded as the
trainer and verifier leave them, as in ``bench_rollback_latency``, while the operator is stopped):

- baseline: a Verified version held in the shadow stage and loaded as the shadow on every replica; the
  shadow stage is then turned off (``spec.rollout.shadow.enabled: false``): the clock runs from that write
  until all replicas answer ``/v1/predict`` with it (the operator's pass, ``status.desired``, the sidecars'
  swap of the already-loaded model). This is the promotion of a verified, prefetched version without the
  stage, measured from the moment it may be promoted.
- reviews: the shadow stage on (``minReviews`` 20); the Verified version is held (``ShadowStage=True``) and
  loaded as the shadow on every replica. Requests go to the replicas round-robin;
  for 20 of them where the two models disagree, the review labelling the candidate right is posted to
  the replica that answered (its receipt and shadow pair are there). 19 are posted and counted by the
  operator; the clock starts when the 20th is posted and stops when all replicas answer with the
  candidate. The path: the server's feedback flush (``MODELLOOP_FEEDBACK_FLUSH_SECONDS``, default 5 s),
  the operator's feedback count (``checkIntervalSeconds``, 5 s here, the minimum; default 30), the paired
  test, then the same promotion as the baseline.

The ratio (reviews / baseline, p50 and p95) is what the decision by reviews costs on top of a promotion;
both intervals are settings, printed with the figure.
"""

from __future__ import annotations

import json
import os
import random
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
    Replica,
    policy_body,
    publish,
    replicas,
    serving_cluster,
    start_pods,
    time_until_all_serve,
)
from bench.bench_rollback_latency import version_body
from bench.servers import standalone_operator
from modelloop.api import constants as c
from modelloop.api.artifacts import artifact_uri
from modelloop_server.control import DEFAULT_SOCKET_NAME, ControlClient

MIN_REVIEWS = 20
CHECK_INTERVAL_S = 5


def _json(pool: urllib3.PoolManager, method: str, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = pool.request(
        method, url, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, timeout=30.0
    )
    return resp.status, json.loads(resp.data)


def _control(r: Replica, path: str) -> tuple[int, dict[str, Any]]:
    status, raw = ControlClient(r.dir / "models" / DEFAULT_SOCKET_NAME).request("GET", path, timeout=10)
    return status, json.loads(raw)


def run(rounds: int, timeout: float) -> list[report.Measurement]:
    from kubernetes import client as k8s

    rng = random.Random(16)
    with serving_cluster("bench-review-decision-") as (tmp, cp, s3):
        store = s3.store(BUCKET)
        digests = {"v1": publish(store, "v1", 1, tmp)}
        size_mb = (tmp / "v1" / "model.safetensors").stat().st_size / 1e6
        crd: Any = k8s.CustomObjectsApi(cp.api_client())
        body = policy_body(s3.endpoint)
        body["spec"]["triggers"]["checkIntervalSeconds"] = CHECK_INTERVAL_S
        crd.create_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, body)

        def mv_status(version: str, phase: str) -> None:
            crd.patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, f"{POLICY}-{version}",
                {"status": {
                    "phase": phase, "message": "seeded by the review decision bench",
                    "artifact": {"uri": artifact_uri(BUCKET, MODEL, version), "manifestDigest": digests[version]},
                }},
            )  # fmt: skip

        def new_version(n: int, phase: str) -> str:
            version = f"v{n}"
            digests[version] = publish(store, version, n, tmp)
            crd.create_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, version_body(version)
            )
            mv_status(version, phase)
            return version

        def status() -> dict[str, Any]:
            obj = crd.get_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY)
            return dict(obj.get("status") or {})

        def shadow_stage(enabled: bool) -> None:
            crd.patch_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY,
                {"spec": {"rollout": {"shadow": {"enabled": enabled, "minReviews": MIN_REVIEWS, "margin": 0.02}}}},
            )  # fmt: skip

        def active_is(version: str) -> Callable[[], bool]:
            return lambda: status().get("activeVersion") == version

        crd.create_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, version_body("v1"))
        mv_status("v1", "Active")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        crd.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, POLICY,
            {"status": {"activeVersion": "v1", "latestVersion": "v1", "desired": {
                "version": "v1", "artifactURI": artifact_uri(BUCKET, MODEL, "v1"),
                "manifestDigest": digests["v1"], "since": now, "reason": "Promotion",
            }}},
        )  # fmt: skip
        base_env = {**start_pods(cp, s3), "MODELLOOP_REVIEW_AUTH": "off"}
        if os.environ.get("PYTHONPATH"):  # a checkout's own packages over the installed ones, in the replicas too
            base_env["PYTHONPATH"] = os.pathsep.join([base_env["PYTHONPATH"], os.environ["PYTHONPATH"]])
        pool = urllib3.PoolManager(retries=False, maxsize=REPLICAS * 2)
        operator = standalone_operator(NAMESPACE, tmp / "operator.log", cp.env)
        baseline: list[float] = []
        reviewed: list[float] = []
        reactions: list[float] = []
        with replicas(tmp / "replicas", base_env) as reps:
            time_until_all_serve(reps, "v1", pool, timeout)
            operator.start()
            try:
                n = 1

                def held_in_shadow(version: str) -> None:
                    """A new Verified ``version`` (the stage on), held, and loaded as the shadow on every replica."""
                    shadow_stage(True)
                    # created while the operator is down: a version it sees before its status says Verified
                    # (the status is a subresource, written after the create) would get a training Job
                    operator.stop()
                    new_version(int(version[1:]), "Verified")
                    operator.start()
                    wait_until(
                        f"{version} held in the shadow stage",
                        lambda: (
                            (status().get("shadow") or {}).get("version") == version
                            and any(
                                x.get("type") == "ShadowStage" and x.get("status") == "True"
                                for x in status().get("conditions") or []
                            )
                        ),
                        timeout,
                    )
                    wait_until(
                        f"{version} loaded as the shadow on every replica",
                        lambda: all(
                            (_control(r, "/v1/shadow")[1].get("shadow") or {}).get("version") == version for r in reps
                        ),
                        timeout,
                    )

                for _ in range(rounds):
                    # baseline: the stage turned off -> every replica serves the held, loaded version
                    n += 1
                    v = f"v{n}"
                    held_in_shadow(v)
                    t0 = time.monotonic()
                    shadow_stage(False)
                    time_until_all_serve(reps, v, pool, timeout)
                    baseline.append(time.monotonic() - t0)
                    wait_until(f"{v} active", active_is(v), timeout)

                    # reviews: the review completing minReviews -> every replica serves the candidate
                    n += 1
                    v = f"v{n}"
                    held_in_shadow(v)
                    picked: list[tuple[Replica, str, int]] = []
                    i = 0
                    while len(picked) < MIN_REVIEWS:
                        r = reps[i % REPLICAS]
                        i += 1
                        x = [float(rng.randint(0, 16)) for _ in range(64)]
                        code, answer = _json(pool, "POST", f"{r.base}/v1/predict", {"input": x})
                        assert code == 200, answer
                        found: dict[str, Any] = {}

                        def scored(r: Replica = r, pid: str = answer["id"], found: dict[str, Any] = found) -> bool:
                            code, body = _control(r, f"/v1/shadow?requestId={pid}")
                            found.update(body)
                            return code == 200

                        wait_until("the shadow to score the request", scored, timeout, every=0.02)
                        candidate = found["pair"]["candidate"]["predicted"][0]
                        if candidate != answer["predicted"]:
                            picked.append((r, answer["id"], candidate))

                    def counted(version: str = v) -> int:
                        sh = status().get("shadow") or {}
                        if sh.get("version") != version:
                            return 0
                        cells = ("bothRight", "onlyActive", "onlyCandidate", "bothWrong")
                        return sum(int(sh.get(k) or 0) for k in cells)

                    for r, pid, label in picked[:-1]:
                        code, out = _json(pool, "POST", f"{r.base}/v1/feedback", {"id": pid, "label": label})
                        assert code == 202, out
                    wait_until(f"{MIN_REVIEWS - 1} reviews counted", lambda: counted() == MIN_REVIEWS - 1, timeout)
                    assert (status().get("desired") or {}).get("version") != v, "promoted before minReviews"
                    r, pid, label = picked[-1]
                    t0 = time.monotonic()
                    code, out = _json(pool, "POST", f"{r.base}/v1/feedback", {"id": pid, "label": label})
                    assert code == 202, out
                    seen: list[float] = []

                    def desired_is(version: str = v, seen: list[float] = seen) -> bool:
                        if (status().get("desired") or {}).get("version") == version:
                            seen.append(time.monotonic())
                            return True
                        return False

                    wait_until(f"{v} desired", desired_is, timeout, every=0.05)
                    reactions.append(seen[0] - t0)
                    time_until_all_serve(reps, v, pool, timeout)
                    reviewed.append(time.monotonic() - t0)
                    wait_until(f"{v} active", active_is(v), timeout)
                    print(
                        f"round: baseline {baseline[-1]:.2f} s, by reviews {reviewed[-1]:.2f} s "
                        f"(operator decided after {reactions[-1]:.2f} s)",
                        flush=True,
                    )
            finally:
                operator.stop()

    p50_base, p50_rev = report.percentile(baseline, 50), report.percentile(reviewed, 50)
    return [
        report.Measurement(
            name=f"review-decided promotion p50 ({REPLICAS} replicas, {size_mb:.0f} MB model, minReviews {MIN_REVIEWS})",
            unit="s",
            baseline=p50_base,
            figure=p50_rev,
            baseline_label="held Verified version, loaded as the shadow -> all replicas serve it once the stage is off",
            figure_label="last review needed posted -> all replicas serve the candidate",
            target="reported: the cost of deciding by reviews (feedback flush 5 s + count interval 5 s bound it)",
            passed=True,
            details={
                "baselineSamples": baseline,
                "reviewSamples": reviewed,
                "operatorDecidedAfter": reactions,
                "baselineP95": report.percentile(baseline, 95),
                "reviewP95": report.percentile(reviewed, 95),
                "checkIntervalSeconds": CHECK_INTERVAL_S,
                "feedbackFlushSeconds": 5.0,
            },
        )
    ]


def main() -> None:
    report.rounds_main(
        __doc__ or "", run, "rounds, each one baseline and one review-decided promotion", "seconds allowed per wait"
    )


if __name__ == "__main__":
    main()
