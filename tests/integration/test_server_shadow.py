"""Shadow scoring with a real sidecar, server, API server and MinIO: the prefetched candidate is loaded
beside the serving model, every request is still answered by the active version, the candidate
scores the same inputs off the response path, promotion reuses the loaded shadow (no second load),
a withdrawn candidate is unloaded, and a saturated shadow queue drops shadow work, never a request.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import (
    MODEL,
    Cluster,
    control,
    publish_versions,
    require_signature,
    signing_keys,
    start_server,
)

from modelloop.api import constants as c
from modelloop.api.artifacts import VERIFICATION_FILE, version_key
from modelloop.clients.objectstore import ObjectStore
from modelloop.clients.signing import sign_version
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.settings import ENV_SIGNING_PUBLIC_KEY

pytestmark = pytest.mark.integration

DIGIT = [float((i * 7) % 17) for i in range(64)]


def _sign(store: ObjectStore, key: Path, version: str, digest: str) -> None:
    """What the operator does when a version passes its gates (as tests/integration/test_sidecar_signature.py)."""
    verification = json.dumps({"version": version, "manifestDigest": digest, "holdoutAccuracy": 0.95}).encode()
    store.put_bytes(version_key(MODEL, version, VERIFICATION_FILE), verification)
    sign_version(store, key, MODEL, version, digest, verification)


def _shadow(model_dir: Path) -> dict[str, Any]:
    r = control(model_dir, "GET", "/v1/shadow")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _shadow_version(model_dir: Path) -> str | None:
    shadow = _shadow(model_dir)["shadow"]
    return str(shadow["version"]) if shadow else None


def _predict_many(base: str, n: int, concurrency: int, batch: int = 1) -> list[httpx.Response]:
    """``n`` predictions whose prediction ids (the key shadow pairs are kept under) are q0, q1, ..."""
    body: dict[str, Any] = {"inputs": [DIGIT] * batch} if batch > 1 else {"input": DIGIT}
    with httpx.Client(base_url=base, timeout=30) as http, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: http.post("/v1/predict", json={**body, "id": f"q{i}"}), range(n)))


def test_candidate_is_scored_in_the_shadow_then_promoted_without_a_second_load(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])
    try:
        cluster.patch_status({"candidate": cluster.ref("v2", digests["v2"])})
        wait_for(lambda: _shadow_version(replica.model_dir) == "v2", 90, "v2 loaded as the shadow", replica.sidecar)
        assert replica.serving() == "v1"
        shadowed = [e.message or "" for e in cluster.events(pod) if e.reason == "ShadowLoaded"]
        assert any("v2" in m for m in shadowed), shadowed

        answers = _predict_many(replica.base, 200, 8)
        assert [r.status_code for r in answers] == [200] * 200, "a shadowed server failed requests"
        assert {r.headers["X-Model-Version"] for r in answers} == {"v1"}, "the shadow answered a client"
        assert {r.json()["version"] for r in answers} == {"v1"}
        labels = {"candidate": "v2"}

        def accounted() -> bool:
            scored = replica.metric("modelloop_server_shadow_scored_requests_total", labels)
            dropped = replica.metric("modelloop_server_shadow_dropped_requests_total", labels)
            return scored + dropped == 200

        wait_for(accounted, 30, "every answered request scored or dropped by the shadow", replica.server)
        scored = replica.metric("modelloop_server_shadow_scored_requests_total", labels)
        assert scored > 0
        agreement = replica.metric("modelloop_server_shadow_agreement_ratio", labels)
        assert 0.0 <= agreement <= 1.0
        state = _shadow(replica.model_dir)
        assert state["active"] == "v1" and state["shadow"]["predictions"] == scored
        scored_ids = [
            f"q{i}"
            for i in range(200)
            if control(replica.model_dir, "GET", f"/v1/shadow?requestId=q{i}").status_code == 200
        ]
        assert len(scored_ids) == scored
        pair = control(replica.model_dir, "GET", f"/v1/shadow?requestId={scored_ids[0]}").json()["pair"]
        answered = next(r.json() for r in answers if r.json()["id"] == scored_ids[0])
        assert pair["active"] == {"version": "v1", "predicted": [answered["predicted"]]}
        assert pair["candidate"]["version"] == "v2" and len(pair["candidate"]["predicted"]) == 1
        loads_before = replica.metric("modelloop_server_load_duration_seconds_count")

        # promotion: desired moves to v2 and the candidate is cleared in one write
        cluster.patch_status({"desired": cluster.ref("v2", digests["v2"]), "candidate": None})
        wait_for(lambda: cluster.reports(pod, digests["v2"]), 60, "the sidecar to report v2 served", replica.sidecar)
        replica.wait_serving("v2")
        assert replica.metric("modelloop_server_swaps_total", {"result": "shadow"}) == 1
        assert replica.metric("modelloop_server_load_duration_seconds_count") == loads_before, "v2 was loaded twice"
        assert _shadow_version(replica.model_dir) is None
        loaded = [e.message or "" for e in cluster.events(pod) if e.reason == "ModelLoaded"]
        assert any("v2" in m and "promoted from the shadow" in m for m in loaded), loaded
        assert replica.metric("modelloop_server_shadow_scored_requests_total", labels) == 0, (
            "series of a promoted shadow"
        )

        # a new candidate is shadowed, then withdrawn (rejected): the server unloads it, serving is untouched
        cluster.patch_status({"candidate": cluster.ref("v3", digests["v3"])})
        wait_for(lambda: _shadow_version(replica.model_dir) == "v3", 90, "v3 loaded as the shadow", replica.sidecar)
        cluster.patch_status({"candidate": None})
        wait_for(lambda: _shadow_version(replica.model_dir) is None, 60, "the withdrawn v3 unloaded", replica.sidecar)
        assert replica.serving() == "v2"

        # withdrawn while the sidecar is down: the restarted sidecar unloads what the server still shadows
        cluster.patch_status({"candidate": cluster.ref("v3", digests["v3"])})
        wait_for(lambda: _shadow_version(replica.model_dir) == "v3", 60, "v3 shadowed again", replica.sidecar)
        replica.sidecar.stop()
        cluster.patch_status({"candidate": None})
        replica.sidecar.start()
        wait_for(lambda: _shadow_version(replica.model_dir) is None, 60, "the stale v3 unloaded", replica.sidecar)
        assert replica.serving() == "v2"
        assert all(r.status_code == 200 for r in _predict_many(replica.base, 20, 4))
    finally:
        replica.stop()
        cluster.close()


def test_only_a_signed_candidate_is_shadowed_when_signatures_are_required(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    store = minio.store(bucket)
    private, public = signing_keys(tmp_path)
    other, _ = signing_keys(tmp_path, "attacker")
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    _sign(store, private, "v1", digests["v1"])
    _sign(store, other, "v3", digests["v3"])  # signed, with a key the policy does not name
    cluster = Cluster(control_plane, namespace, minio, bucket)
    require_signature(cluster)
    pod = "digits-0"
    replica = cluster.start_replica(
        tmp_path, pod, "v1", digests["v1"], sidecar_env={ENV_SIGNING_PUBLIC_KEY: str(public)}
    )
    try:
        # v2 is being verified: prefetched, but not shadowed until the operator signs it
        cluster.patch_status({"candidate": cluster.ref("v2", digests["v2"])})
        wait_for(
            lambda: "v2 (" in replica.sidecar.log_path.read_text()
            and "not loaded as the shadow yet" in replica.sidecar.log_path.read_text(),
            60, "the sidecar to hold back the unsigned v2", replica.sidecar,
        )  # fmt: skip
        assert cluster.pod_annotations(pod).get(c.ANNOTATION_PREFETCHED_DIGEST) == digests["v2"]
        assert _shadow_version(replica.model_dir) is None, "an unsigned candidate was loaded"
        _sign(store, private, "v2", digests["v2"])
        wait_for(lambda: _shadow_version(replica.model_dir) == "v2", 60, "the signed v2 shadowed", replica.sidecar)

        # a candidate signed with another key is never loaded; the withdrawn v2 is unloaded
        cluster.patch_status({"candidate": cluster.ref("v3", digests["v3"])})

        def skipped() -> list[str]:
            return [e.message or "" for e in cluster.events(pod) if e.reason == "ShadowSkipped"]

        wait_for(lambda: bool(skipped()), 60, "a ShadowSkipped Event for v3", replica.sidecar)
        assert "v3" in skipped()[0] and "signature" in skipped()[0], skipped()
        wait_for(lambda: _shadow_version(replica.model_dir) is None, 30, "v2 unloaded", replica.sidecar)
        assert replica.serving() == "v1"
    finally:
        replica.stop()
        cluster.close()


def test_a_saturated_shadow_queue_drops_shadow_work_and_no_request(tmp_path: Path) -> None:
    proc, url, model_dir = start_server(
        tmp_path, current="v1", MODELLOOP_SHADOW_QUEUE_ROWS="8", MODELLOOP_SHADOW_BATCH_ROWS="1"
    )
    try:
        r = control(model_dir, "POST", "/v1/shadow", {"version": "v2", "path": str(model_dir / "v2")})
        assert r.status_code == 200, r.text
        assert r.json()["shadow"]["version"] == "v2" and r.json()["active"] == "v1"
        n = 400
        answers = _predict_many(url, n, 16, batch=8)
        assert [a.status_code for a in answers] == [200] * n
        assert {a.headers["X-Model-Version"] for a in answers} == {"v1"}
        metric = httpx.get(f"{url}/metrics").text

        def value(name: str) -> float:
            line = next(ln for ln in metric.splitlines() if ln.startswith(f'{name}{{candidate="v2"}}'))
            return float(line.rsplit(" ", 1)[1])

        def settled() -> bool:
            nonlocal metric
            metric = httpx.get(f"{url}/metrics").text
            return (
                value("modelloop_server_shadow_scored_requests_total")
                + value("modelloop_server_shadow_dropped_requests_total")
                == n
            )

        wait_for(settled, 30, "every request scored or dropped", proc)
        assert value("modelloop_server_shadow_dropped_requests_total") > 0, (
            "a queue of one request under 16 clients never filled"
        )
        assert value("modelloop_server_shadow_scored_requests_total") > 0
        r = control(model_dir, "DELETE", "/v1/shadow")
        assert r.status_code == 200 and r.json()["unloaded"] == "v2" and r.json()["shadow"] is None
    finally:
        proc.stop()


def test_shadow_requests_are_checked_like_reloads(tmp_path: Path) -> None:
    proc, _url, model_dir = start_server(tmp_path, current="v1")
    try:
        assert control(model_dir, "POST", "/v1/shadow", {"version": "v2"}).status_code == 422
        outside = control(model_dir, "POST", "/v1/shadow", {"version": "v2", "path": str(tmp_path)})
        assert outside.status_code == 403, outside.text
        own = control(model_dir, "POST", "/v1/shadow", {"version": "v1", "path": str(model_dir / "v1")})
        assert own.status_code == 422 and "serving version" in own.json()["error"]
        (model_dir / "v2" / "manifest.json").write_text(
            (model_dir / "v2" / "manifest.json").read_text().replace("v2", "v9")
        )
        bad = control(model_dir, "POST", "/v1/shadow", {"version": "v2", "path": str(model_dir / "v2")})
        assert bad.status_code == 422, bad.text
        assert control(model_dir, "GET", "/v1/shadow").json()["shadow"] is None
        assert control(model_dir, "GET", "/v1/shadow?requestId=nope").status_code == 404
    finally:
        proc.stop()
