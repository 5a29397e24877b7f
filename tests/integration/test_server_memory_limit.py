"""A version too big for the serving container's memory limit is refused before it is loaded.

On a real node the server would be OOM-killed mid-load and crash-loop; here the server reads a fake
cgroup v2 tree (``MODELLOOP_CGROUP_ROOT``) whose numbers the test sets, so the limit is small
enough to refuse the next version. The reload is answered 409 with a message naming the version,
the sizes and what to change; the old version keeps answering and the server stays ready. Through
the sidecar, the refusal becomes a ``ModelTooLarge`` Event on the Pod and is not retried in a loop.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server_support import Cluster, Replica, publish_versions, reload, start_server

from modelloop.api import constants as c
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

BIN = Path(sys.executable).parent
MiB = 1 << 20
LIMIT = 100 * MiB  # the default reserve (64 MiB) plus a digits model fit in it once, not with 60 MiB in use
GOOD = [float(i % 17) for i in range(64)]


def set_cgroup(root: Path, limit: int | str, usage: int) -> None:
    """A cgroup v2 tree as the container sees it: limit, usage, and no reclaimable cache."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{usage}\n")
    (root / "memory.stat").write_text("anon 0\ninactive_file 0\n")


def refusals(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith('modelloop_server_reload_refusals_total{reason="model_too_large"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A real server process over v1 and v2 on disk, limited by a fake cgroup; (url, model dir, cgroup root)."""
    cgroup = tmp_path / "cgroup"
    set_cgroup(cgroup, LIMIT, 10 * MiB)
    proc, url, model_dir = start_server(tmp_path, current="v1", MODELLOOP_CGROUP_ROOT=str(cgroup))
    try:
        yield url, model_dir, cgroup
    finally:
        proc.stop()


def test_reload_too_big_for_the_memory_limit_is_refused_and_the_old_version_keeps_answering(
    server: tuple[str, Path, Path],
) -> None:
    url, model_dir, cgroup = server
    assert httpx.get(f"{url}/readyz").json()["version"] == "v1"
    set_cgroup(cgroup, LIMIT, 60 * MiB)  # the container has grown: 40 MiB free, less than the reserve alone

    r = reload(model_dir, "v2")
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["reason"] == "ModelTooLarge" and body["version"] == "v2" and body["serving"] == "v1"
    assert (body["limitBytes"], body["usageBytes"]) == (LIMIT, 60 * MiB)
    assert body["neededBytes"] > 64 * MiB
    message = body["error"]
    for fragment in (
        "v2 (weights",
        f"needs about {body['neededBytes'] / MiB:.1f} MiB ({body['neededBytes']} bytes)",
        f"memory limit 100.0 MiB ({LIMIT} bytes, {cgroup / 'memory.max'})",
        "in use 60.0 MiB",
        "v1 serving",
        "Raise the serving container's memory limit (resources.limits.memory) to at least",
        "or shrink the model",
    ):
        assert fragment in message, message

    answer = httpx.post(f"{url}/v1/predict", json={"input": GOOD}, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == "v1"
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == "v1"
    assert refusals(url) == 1

    set_cgroup(cgroup, 1 << 30, 60 * MiB)  # the limit raised (in place): the same request now succeeds
    r = reload(model_dir, "v2")
    assert r.status_code == 200, r.text
    assert httpx.post(f"{url}/v1/predict", json={"input": GOOD}, timeout=30).json()["version"] == "v2"
    assert refusals(url) == 1


@pytest.mark.integration
def test_sidecar_posts_model_too_large_and_does_not_retry_in_a_loop(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    cluster.create_pod(pod)
    cgroup = tmp_path / "cgroup"
    set_cgroup(cgroup, LIMIT, 10 * MiB)
    replica = Replica(
        tmp_path, pod, namespace, minio.env(bucket), cluster.serving_kubeconfig(tmp_path),
        MODELLOOP_CGROUP_ROOT=str(cgroup),
    )  # fmt: skip
    cluster.set_desired("v1", digests["v1"])
    replica.start()
    try:
        wait_for(lambda: cluster.reports(pod, digests["v1"]), 90, "the sidecar to report v1", replica.sidecar)

        def too_large() -> list[str]:
            return [e.message or "" for e in cluster.events(pod) if e.reason == "ModelTooLarge"]

        set_cgroup(cgroup, LIMIT, 60 * MiB)
        cluster.set_desired("v2", digests["v2"])
        wait_for(lambda: bool(too_large()), 60, "a ModelTooLarge Event", replica.sidecar)
        [message] = too_large()
        for fragment in ("refused v2", "v2 (weights", "memory limit 100.0 MiB", "resources.limits.memory",
                         "still serving v1"):  # fmt: skip
            assert fragment in message, message
        assert replica.serving() == "v1"
        assert cluster.pod_annotations(pod)[c.ANNOTATION_SERVING_VERSION] == "v1"
        assert not [e for e in cluster.events(pod) if e.reason == "ArtifactRejected"]

        # retried after a long backoff, or when the desired version changes: never in a loop
        retry = re.search(r"refused v2: .*\(retry in (\d+)s", replica.sidecar.log_path.read_text())
        assert retry is not None and int(retry.group(1)) >= 299, replica.sidecar.log_tail()

        set_cgroup(cgroup, 1 << 30, 60 * MiB)
        cluster.set_desired("v3", digests["v3"])
        wait_for(lambda: cluster.reports(pod, digests["v3"]), 60, "the sidecar to report v3", replica.sidecar)
        assert replica.serving() == "v3"
        assert replica.metric("modelloop_server_reload_refusals_total", {"reason": "model_too_large"}) == 1
        assert len(too_large()) == 1
    finally:
        replica.stop()
        cluster.close()
