"""A version that would overflow the model volume's emptyDir sizeLimit is refused before downloading.

On a real node the kubelet evicts a Pod whose emptyDir exceeds its sizeLimit, and every replica
downloads a promoted version at once: all of them would be evicted. Here the sidecar reads the
sizeLimit from its Pod object in the API server (the volume mounted at its model dir), sees that
v2 cannot fit beside the v1 it serves, downloads nothing, posts a ``ModelVolumeTooSmall`` Event
saying how large the volume must be, and v1 keeps answering.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_server_support import Cluster, publish_versions

from modelloop.api.artifacts import MANIFEST_FILE, Manifest, version_key
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.diskroom import REASON_NO_ROOM

pytestmark = [pytest.mark.integration]

MODEL = "digits"


def test_a_version_bigger_than_the_room_left_is_refused_before_download(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2"])
    raw = minio.store(bucket).get_bytes(version_key(MODEL, "v2", MANIFEST_FILE))
    version_bytes = sum(f.size for f in Manifest.model_validate_json(raw).files)
    # Room for one version (and the 64 KiB reserve), not for two.
    size_limit = f"{(64 * 1024 + version_bytes * 3 // 2) // 1024}Ki"
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"], size_limit=size_limit)
    try:
        cluster.set_desired("v2", digests["v2"])

        def refusals() -> list[str]:
            return [e.message for e in cluster.events(pod) if e.reason == REASON_NO_ROOM]

        wait_for(lambda: bool(refusals()), 60, "the ModelVolumeTooSmall Event", replica.sidecar)
        message = refusals()[0]
        assert f"sizeLimit {size_limit}" in message and "with v1 kept" in message, message
        assert "Raise sizeLimit of volume 'models'" in message
        assert replica.serving() == "v1", "the old version must keep answering"
        assert sorted(p.name for p in replica.model_dir.iterdir() if p.name.startswith(("v2", ".v2"))) == [], (
            "nothing of v2 may be downloaded"
        )
        assert cluster.pod_annotations(pod)["modelloop.dev/serving-version"] == "v1"
    finally:
        replica.stop()
        cluster.close()
