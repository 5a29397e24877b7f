"""The canary split with a real sidecar, server, API server and MinIO: the operator's
``status.candidate.canaryPercent`` reaches the server through the sidecar, the candidate loaded as the
shadow answers that share of requests (measured over thousands of answers), a routing key keeps its
version within a step and when the step grows, every answer names the version that gave it, and no
request fails while the split is set, changed and withdrawn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from operator_harness import MODEL
from test_server_support import Cluster, control, publish_versions, start_server

from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = pytest.mark.integration

DIGIT = [float((i * 7) % 17) for i in range(64)]
KEY = "X-Modelloop-Routing-Key"


def _canary(model_dir: Path) -> dict[str, Any] | None:
    r = control(model_dir, "GET", "/v1/canary")
    assert r.status_code == 200, r.text
    canary: dict[str, Any] | None = r.json()["canary"]
    return canary


def _versions(base: str, keys: Sequence[str | None], concurrency: int = 8) -> list[httpx.Response]:
    """One /v1/predict per key (None: no routing key), in parallel."""
    with httpx.Client(base_url=base, timeout=30) as http, ThreadPoolExecutor(concurrency) as pool:
        return list(
            pool.map(
                lambda k: http.post("/v1/predict", json={"input": DIGIT}, headers={KEY: k} if k else {}),
                keys,
            )
        )


def _answered_by(answers: list[httpx.Response]) -> Counter[str]:
    assert [r.status_code for r in answers] == [200] * len(answers), "a request failed during the canary"
    for r in answers:
        assert r.headers["X-Model-Version"] == r.json()["version"], "the answer and its header disagree"
    return Counter(r.json()["version"] for r in answers)


def test_the_candidate_answers_its_declared_share_sticky_by_routing_key(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])
    try:
        cluster.patch_status({"candidate": {**cluster.ref("v2", digests["v2"]), "canaryPercent": 10}})
        wait_for(
            lambda: _canary(replica.model_dir) == {"version": "v2", "percent": 10}, 90, "a 10% canary", replica.sidecar
        )
        assert replica.serving() == "v1"
        assert replica.metric("modelloop_server_canary_percent", {"version": "v2"}) == 10
        events = [e.message or "" for e in cluster.events(pod) if e.reason == "CanaryServing"]
        assert any("v2" in m and "10%" in m for m in events), events

        # 10% over 3,000 requests without a key (split at random): within +-2 points
        n = 3000
        by_version = _answered_by(_versions(replica.base, [None] * n))
        assert set(by_version) == {"v1", "v2"}
        share = by_version["v2"] / n
        assert 0.08 <= share <= 0.12, f"the candidate answered {share:.1%} of {n} requests at a 10% canary"
        assert replica.metric("modelloop_server_requests_total", {"code": "200", "version": "v2"}) == by_version["v2"]

        # one key, 200 requests: one version; 100 keys x 4: each key one version, about 10% of keys on v2
        single = _answered_by(_versions(replica.base, ["user-42"] * 200))
        assert len(single) == 1, f"one routing key got {dict(single)}"
        keys = [f"user-{i}" for i in range(100)]
        answers = _versions(replica.base, keys * 4)
        _answered_by(answers)
        per_key: dict[str, set[str]] = {}
        for k, r in zip(keys * 4, answers, strict=True):
            per_key.setdefault(k, set()).add(r.json()["version"])
        assert all(len(v) == 1 for v in per_key.values()), {k: v for k, v in per_key.items() if len(v) > 1}
        on_candidate = {k for k, v in per_key.items() if v == {"v2"}}
        assert 2 <= len(on_candidate) <= 25, len(on_candidate)

        # the OIP path honours parameters.routing_key the same way
        key = sorted(on_candidate)[0]
        oip = httpx.post(
            f"{replica.base}/v2/models/{MODEL}/infer",
            json={
                "parameters": {"routing_key": key},
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": DIGIT}],
            },
            timeout=30,
        )
        assert oip.status_code == 200 and oip.json()["model_version"] == "v2", oip.text

        # the next step: every key the candidate answered keeps it, about half the keys now on v2
        cluster.patch_status({"candidate": {**cluster.ref("v2", digests["v2"]), "canaryPercent": 50}})
        wait_for(
            lambda: _canary(replica.model_dir) == {"version": "v2", "percent": 50}, 60, "a 50% canary", replica.sidecar
        )
        answers = _versions(replica.base, keys)
        _answered_by(answers)
        at50 = {k for k, r in zip(keys, answers, strict=True) if r.json()["version"] == "v2"}
        assert on_candidate <= at50, f"keys sent back to v1 when the step grew: {sorted(on_candidate - at50)}"
        assert 30 <= len(at50) <= 70, len(at50)

        # withdrawn (rolled back): the candidate answers nobody, its shadow is unloaded
        cluster.patch_status({"candidate": None})
        wait_for(lambda: _canary(replica.model_dir) is None, 60, "the canary ended", replica.sidecar)
        wait_for(
            lambda: control(replica.model_dir, "GET", "/v1/shadow").json()["shadow"] is None,
            60, "the withdrawn candidate unloaded", replica.sidecar,
        )  # fmt: skip
        assert _answered_by(_versions(replica.base, [None] * 200 + keys)) == {"v1": 300}
        assert replica.metric("modelloop_server_canary_percent", {"version": "v2"}) == 0
    finally:
        replica.stop()
        cluster.close()


def test_canary_requests_are_checked(tmp_path: Path) -> None:
    proc, url, model_dir = start_server(tmp_path, current="v1")
    try:
        none = control(model_dir, "POST", "/v1/canary", {"version": "v2", "percent": 10})
        assert none.status_code == 409 and "not loaded as the shadow" in none.json()["error"], none.text
        assert control(model_dir, "POST", "/v1/shadow", {"version": "v2", "path": str(model_dir / "v2")}).is_success
        for bad in ({"version": "v2", "percent": 100}, {"version": "v2", "percent": -1}, {"version": "v2"},
                    {"version": "v2", "percent": True}, {"percent": 10}, {"version": "2", "percent": 10}):  # fmt: skip
            r = control(model_dir, "POST", "/v1/canary", bad)
            assert r.status_code == 422, (bad, r.text)
        ok = control(model_dir, "POST", "/v1/canary", {"version": "v2", "percent": 99})
        assert ok.status_code == 200 and ok.json()["canary"] == {"version": "v2", "percent": 99}
        too_long = httpx.post(f"{url}/v1/predict", json={"input": DIGIT}, headers={KEY: "k" * 300})
        assert too_long.status_code == 422 and "X-Modelloop-Routing-Key" in too_long.json()["error"]
        bad_param = httpx.post(
            f"{url}/v2/models/digits/infer",
            json={"parameters": {"routing_key": 7}, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": DIGIT}]},
        )  # fmt: skip
        assert bad_param.status_code == 400 and "parameters.routing_key" in bad_param.json()["error"], bad_param.text
        # a client naming the version gets that version, whatever the split
        named = httpx.post(
            f"{url}/v2/models/digits/versions/v1/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": DIGIT}]},
        )
        assert named.status_code == 200 and named.json()["model_version"] == "v1"
        # promoting the shadow ends the split: the candidate answers everything as the active version
        r = control(model_dir, "POST", "/v1/reload", {"version": "v2", "path": str(model_dir / "v2")})
        assert r.status_code == 200 and r.json()["fromShadow"], r.text
        assert control(model_dir, "GET", "/v1/canary").json()["canary"] is None
    finally:
        proc.stop()
