"""The sidecar rides out an API server restart (its watch reconnects and resumes) and a MinIO outage
during a promotion (it retries with backoff while the old version keeps answering), and refuses for
good a promoted manifest whose file paths would escape the version directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_server_support import MODEL, Cluster, publish_versions

from modelloop.api import constants as c
from modelloop.api.artifacts import MANIFEST_FILE, digest_of, version_key
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


def test_a_promoted_manifest_with_an_escaping_path_is_refused_for_good_and_the_old_model_keeps_serving(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    """Whoever can write the bucket rewrites v2's manifest so a file lands outside the version dir.

    The digest the policy promotes is that of the rewritten manifest (the worst case: the bytes are
    exactly what was promoted), so retrying can never help: the sidecar refuses v2 once, says so in
    an Event, writes nothing, and keeps serving v1; the next good version still goes through.
    """
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    store = minio.store(bucket)
    key = version_key(MODEL, "v2", MANIFEST_FILE)
    manifest = json.loads(store.get_bytes(key))
    manifest["files"][0]["path"] = "../../escaped.safetensors"
    tampered = json.dumps(manifest).encode()
    store.put_bytes(key, tampered, "application/json")

    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])
    try:

        def rejected() -> list[str]:
            return [e.message or "" for e in cluster.events(pod) if e.reason == "ArtifactRejected"]

        cluster.set_desired("v2", digest_of(tampered))
        wait_for(lambda: bool(rejected()), 60, "an ArtifactRejected Event for v2", replica.sidecar)
        [message] = rejected()
        for fragment in ("refused v2", "files.0.path", "'..' segment", "still serving v1", "refused for good"):
            assert fragment in message, message
        assert replica.serving() == "v1"
        assert cluster.pod_annotations(pod)[c.ANNOTATION_SERVING_VERSION] == "v1"
        assert not list(tmp_path.rglob("escaped.safetensors")), "nothing written outside the version directory"
        assert not (replica.model_dir / "v2").exists()
        assert not [p.name for p in replica.model_dir.iterdir() if p.name.startswith(".v")], "temp dir left behind"

        cluster.set_desired("v3", digests["v3"])
        wait_for(lambda: cluster.reports(pod, digests["v3"]), 60, "the sidecar to report v3", replica.sidecar)
        assert replica.serving() == "v3"
        log = replica.sidecar.log_path.read_text()
        assert log.count("refused v2") == 1, "refused once, never retried"
    finally:
        replica.stop()
        cluster.close()
