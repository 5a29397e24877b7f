"""The sidecar rides out an API server restart (its watch reconnects and resumes) and a MinIO outage
during a promotion (it retries with backoff while the old version keeps answering)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_server_support import Cluster, publish_versions

from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_sidecar_survives_api_server_restart_and_object_store_outage(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])

    def reported(version: str) -> bool:
        return cluster.reports(pod, digests[version])

    try:
        control_plane.restart_apiserver()
        cluster.set_desired("v2", digests["v2"])
        wait_for(lambda: reported("v2"), 90, "v2 reported after the API server restart", replica.sidecar)
        assert replica.serving() == "v2"

        minio.stop()
        cluster.set_desired("v3", digests["v3"])
        wait_for(
            lambda: "cannot apply v3" in replica.sidecar.log_path.read_text(),
            90, "the sidecar to report the failed download", replica.sidecar,
        )  # fmt: skip
        assert replica.serving() == "v2", "the old version must keep answering while MinIO is down"
        assert not (replica.model_dir / "v3").exists()
        minio.start()
        wait_for(lambda: reported("v3"), 90, "v3 reported after MinIO came back", replica.sidecar)
        assert replica.serving() == "v3"
    finally:
        if not minio.alive():
            minio.start()
        replica.stop()
        cluster.close()
