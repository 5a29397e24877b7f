"""Promotions and rollbacks under load with zero failed requests, end to end through the sidecar.

Real kube-apiserver and MinIO; the server and the sidecar run as local processes (the sidecar
with the example's ServiceAccount token), and 32 concurrent clients run in a separate process
logging every response. The test changes the policy's ``status.desired`` 12 times (promotions
and rollbacks), each time waiting until the sidecar reports the new digest on the Pod.

Which version may answer a request, precisely: version ``v_i`` becomes desired at ``t_i`` (taken
just before the status patch) and its successor is confirmed at ``c_{i+1}`` (the first moment the
test sees the successor's digest on the Pod annotation, which the sidecar writes only after the
server's reload returned, i.e. after the swap). So ``v_i`` may answer only requests whose interval
``[start, end]`` overlaps ``[t_i, c_{i+1}]``: a request that started on the old model during a swap
finishes on it (it overlaps), but nothing that started after the successor was confirmed may
still see ``v_i``, and nothing may see ``v_i`` before it was desired.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_server_support import Cluster, Replica, publish_versions

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.modeldir import versions_on_disk

pytestmark = pytest.mark.integration

CONCURRENCY = 32
# promotions and rollbacks after the first version: a rollback returns to the version just replaced
SEQUENCE = ["v2", "v1", "v2", "v3", "v2", "v3", "v4", "v3", "v4", "v1", "v2", "v1"]


def test_promote_and_roll_back_under_load_without_a_failed_request(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3", "v4"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    cluster.create_pod(pod)
    kubeconfig = cluster.serving_kubeconfig(tmp_path)
    replica = Replica(tmp_path, pod, namespace, minio.env(bucket), kubeconfig)
    cluster.set_desired("v1", digests["v1"])
    history: list[tuple[str, float]] = [("v1", time.monotonic())]
    confirmed: list[float] = []
    replica.start()
    probe: subprocess.Popen[str] | None = None
    try:
        wait_for(
            lambda: cluster.pod_annotations(pod).get(c.ANNOTATION_SERVING_DIGEST) == digests["v1"],
            90, "the sidecar to report v1 on its Pod", replica.sidecar,
        )  # fmt: skip
        confirmed.append(time.monotonic())
        assert replica.serving() == "v1"

        log = tmp_path / "responses.jsonl"
        probe = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelloop_server.loadprobe",
                replica.base,
                "--concurrency",
                str(CONCURRENCY),
                "--log",
                str(log),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe.stdout is not None
        json.loads(probe.stdout.readline())  # the clients are running
        wait_for(lambda: replica.metric("modelloop_server_requests_total", {"code": "200", "version": "v1"}) > 100,
                 60, "load on v1", replica.server)  # fmt: skip

        for version in SEQUENCE:
            history.append((version, time.monotonic()))
            cluster.set_desired(version, digests[version], "Promotion")
            wait_for(
                lambda v=version: cluster.pod_annotations(pod).get(c.ANNOTATION_SERVING_DIGEST) == digests[v],  # type: ignore[misc]
                60, f"the sidecar to report {version} on its Pod", replica.sidecar,
            )  # fmt: skip
            confirmed.append(time.monotonic())
            before = replica.metric("modelloop_server_requests_total", {"code": "200", "version": version})
            wait_for(
                lambda v=version, b=before: replica.metric("modelloop_server_requests_total", {"code": "200", "version": v}) > b + 20,  # type: ignore[misc]
                60, f"load answered by {version}", replica.server,
            )  # fmt: skip

        probe.send_signal(signal.SIGINT)
        out, _ = probe.communicate(timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        probe = None
        responses = [json.loads(line) for line in log.read_text().splitlines()]
        memory_swaps = replica.metric("modelloop_server_swaps_total", {"result": "memory"})
        sidecar_log = replica.sidecar.log_path.read_text()
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()
        replica.stop()
        cluster.close()

    failed = [r for r in responses if r["status"] != 200]
    assert not failed, f"{len(failed)} of {len(responses)} requests failed, first: {failed[:3]}"
    assert summary["failed"] == 0 and summary["requests"] == len(responses)
    assert len(responses) > 20 * len(SEQUENCE)

    # v_i may answer within [t_i, c_{i+1}]
    windows: dict[str, list[tuple[float, float]]] = {}
    for i, (version, t) in enumerate(history):
        until = confirmed[i + 1] if i + 1 < len(confirmed) else float("inf")
        windows.setdefault(version, []).append((t, until))
    wrong = []
    for r in responses:
        assert r["version"] == r["bodyVersion"], f"header and body disagree: {r}"
        if not any(r["t0"] <= until and r["t1"] >= since for since, until in windows[r["version"]]):
            wrong.append(r)
    assert not wrong, f"{len(wrong)} responses came from a version that was not active then, first: {wrong[:3]}"

    # every promotion really changed what answered, and rollbacks to the kept previous model needed no load
    answered = {r["version"] for r in responses}
    assert answered == {"v1", "v2", "v3", "v4"}
    full = ["v1", *SEQUENCE]
    rollbacks = sum(1 for i in range(2, len(full)) if full[i] == full[i - 2])
    assert memory_swaps >= rollbacks >= 5, f"{memory_swaps} swaps from memory for {rollbacks} rollbacks"
    assert "already on disk and verified; no download" in sidecar_log
    assert len(versions_on_disk(replica.model_dir)) <= 3, "old versions must be pruned from the shared volume"
