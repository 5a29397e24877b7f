"""A corrupt or missing artifact is refused by the sidecar, and the old version keeps answering.

The corrupt weights have the size the manifest promises (only the SHA-256 can tell), so this is
the check a bit flip in storage or a half-finished re-upload would meet.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_server_support import MODEL, Cluster, corrupt_in_place, publish_versions

from modelloop.api import constants as c
from modelloop.api.artifacts import WEIGHTS_FILE, version_key
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for

pytestmark = pytest.mark.integration


def test_corrupt_and_missing_artifacts_are_refused_and_the_old_model_keeps_serving(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3"])
    corrupt_in_place(minio, bucket, version_key(MODEL, "v2", WEIGHTS_FILE))

    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    replica = cluster.start_replica(tmp_path, pod, "v1", digests["v1"])
    try:

        def rejected(fragment: str) -> list[str]:
            return [
                e.message
                for e in cluster.events(pod)
                if e.reason == "ArtifactRejected" and fragment in (e.message or "")
            ]

        cluster.set_desired("v2", digests["v2"])
        wait_for(lambda: bool(rejected("v2")), 60, "an ArtifactRejected Event for v2", replica.sidecar)
        message = rejected("v2")[0]
        assert f"{MODEL}/v2/{WEIGHTS_FILE}" in message and "SHA-256" in message, message
        assert "still serving v1" in message
        assert replica.serving() == "v1"
        assert cluster.pod_annotations(pod)[c.ANNOTATION_SERVING_VERSION] == "v1"
        assert not (replica.model_dir / "v2").exists()
        assert not [p.name for p in replica.model_dir.iterdir() if p.name.startswith(".v")], "temp dir left behind"
        assert f"{MODEL}/v2/{WEIGHTS_FILE}" in replica.sidecar.log_path.read_text()

        # never completed: no manifest at all
        missing = "sha256:" + "0" * 64
        cluster.set_desired("v9", missing)
        wait_for(lambda: bool(rejected("v9")), 60, "an ArtifactRejected Event for v9", replica.sidecar)
        assert "manifest.json is missing" in rejected("v9")[0]
        assert replica.serving() == "v1"

        # a good version still goes through after the refusals
        started = time.monotonic()
        cluster.set_desired("v3", digests["v3"])
        wait_for(
            lambda: cluster.reports(pod, digests["v3"]),
            60, "the sidecar to report v3", replica.sidecar,
        )  # fmt: skip
        assert replica.serving() == "v3"
        assert time.monotonic() - started < 60
        loaded = [e for e in cluster.events(pod) if e.reason == "ModelLoaded"]
        assert {"v1", "v3"} <= {m for e in loaded for m in ("v1", "v3") if m in (e.message or "")}
    finally:
        replica.stop()
        cluster.close()


def test_example_serving_manifests_are_accepted_by_the_api_server(control_plane: ControlPlane, namespace: str) -> None:
    """Server-side dry run: schema, securityContext, probes and RBAC rules of the example as shipped."""
    example = Path(__file__).resolve().parents[2] / "examples" / "serving-deployment.yaml"
    out = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example)).stdout
    for kind in ("serviceaccount", "role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io",
                 "deployment.apps", "service"):  # fmt: skip
        assert f"{kind}/" in out, out
