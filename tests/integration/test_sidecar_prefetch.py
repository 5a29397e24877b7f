"""A real sidecar prefetches status.candidate, so promoting it needs no second download; a corrupt
candidate is refused with a Warning Event and serving is untouched.

"No second download" is checked on data: the weights file promoted is the very inode the prefetch
wrote (``fetch_version`` always renames a fresh temp dir into place), and the sidecar's log
counts one promotion download (v1, at start) and one prefetch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_server_support import MODEL, Cluster, corrupt_in_place, publish_versions

from modelloop.api import constants as c
from modelloop.api.artifacts import WEIGHTS_FILE, version_key
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = pytest.mark.integration


def test_candidate_is_prefetched_then_promoted_without_a_second_download(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    corrupt_in_place(minio, bucket, version_key(MODEL, "v3", WEIGHTS_FILE))

    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])
    try:
        # verification of v2 starts: the operator names it the candidate
        cluster.patch_status({"candidate": cluster.ref("v2", digests["v2"])})
        wait_for(
            lambda: cluster.pod_annotations(pod).get(c.ANNOTATION_PREFETCHED_DIGEST) == digests["v2"],
            60, "the sidecar to report v2 prefetched", replica.sidecar,
        )  # fmt: skip
        weights = replica.model_dir / "v2" / WEIGHTS_FILE
        assert weights.read_bytes() == minio.store(bucket).get_bytes(version_key(MODEL, "v2", WEIGHTS_FILE))
        inode = weights.stat().st_ino
        assert replica.serving() == "v1", "a prefetched candidate must not be served"
        assert cluster.pod_annotations(pod)[c.ANNOTATION_SERVING_VERSION] == "v1"

        # verification passed: desired moves to v2 and the candidate is cleared, in one write
        cluster.patch_status({"desired": cluster.ref("v2", digests["v2"]), "candidate": None})
        wait_for(
            lambda: cluster.reports(pod, digests["v2"]),
            60, "the sidecar to report v2 served", replica.sidecar,
        )  # fmt: skip
        replica.wait_serving("v2")
        assert weights.stat().st_ino == inode, "v2 was downloaded a second time"
        log = replica.sidecar.log_path.read_text()
        assert log.count("(promotion download #") == 1, log  # v1 at start only
        assert log.count("(prefetch download #") == 1, log
        loaded = [e.message or "" for e in cluster.events(pod) if e.reason == "ModelLoaded"]
        assert any("v2" in m and "prefetched copy" in m for m in loaded), loaded

        # a corrupt candidate is refused; nothing else changes
        cluster.patch_status({"candidate": cluster.ref("v3", digests["v3"])})

        def refusals() -> list[str]:
            return [e.message or "" for e in cluster.events(pod) if e.reason == "CandidatePrefetchFailed"]

        wait_for(lambda: bool(refusals()), 60, "a CandidatePrefetchFailed Event for v3", replica.sidecar)
        message = refusals()[0]
        assert f"{MODEL}/v3/{WEIGHTS_FILE}" in message and "SHA-256" in message, message
        assert "still serving v2" in message
        annotations = cluster.pod_annotations(pod)
        assert annotations[c.ANNOTATION_SERVING_DIGEST] == digests["v2"]
        assert annotations[c.ANNOTATION_PREFETCHED_DIGEST] == digests["v2"], "a refused candidate is not reported"
        assert replica.serving() == "v2"
        assert not (replica.model_dir / "v3").exists()
        assert not [p.name for p in replica.model_dir.iterdir() if p.name.startswith(".v")], "temp dir left behind"
        assert sorted(p.name for p in replica.model_dir.iterdir() if p.name.startswith("v")) == ["v1", "v2"]
    finally:
        replica.stop()
        cluster.close()
