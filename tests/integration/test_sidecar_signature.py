"""The sidecar loads only what the operator signed: every refusal keeps the old model serving.

Versions are signed with the operator's own signing code (``clients.signing.sign_version``); then
the bucket is tampered with the way someone holding the trainer's read-write credentials could.
Where the promoted digest is moved to the rewritten manifest too (weights and manifest rewritten
together, as if published outside the operator), only the signature can tell.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
from test_server_support import MODEL, Cluster, corrupt_in_place, publish_versions, require_signature, signing_keys

from modelloop.api.artifacts import MANIFEST_FILE, VERIFICATION_FILE, WEIGHTS_FILE, Manifest, digest_of, version_key
from modelloop.api.signing import SIGNATURE_FILE
from modelloop.clients.objectstore import ObjectStore
from modelloop.clients.signing import sign_version
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.settings import ENV_SIGNING_PUBLIC_KEY

pytestmark = pytest.mark.integration


def _sign(store: ObjectStore, key: Path, version: str, digest: str) -> None:
    verification = json.dumps({"version": version, "manifestDigest": digest, "holdoutAccuracy": 0.95}).encode()
    store.put_bytes(version_key(MODEL, version, VERIFICATION_FILE), verification)
    sign_version(store, key, MODEL, version, digest, verification)


def _rewrite_manifest(store: ObjectStore, version: str, *, weights_sha: str | None = None) -> str:
    """Rewrite the manifest (a changed training parameter, and the new weights' SHA-256 if given); its digest."""
    manifest = Manifest.model_validate_json(store.get_bytes(version_key(MODEL, version, MANIFEST_FILE)))
    manifest.training_parameters = {**manifest.training_parameters, "epochs": 999}
    if weights_sha is not None:
        manifest.file(WEIGHTS_FILE).sha256 = weights_sha
    data = manifest.to_bytes()
    store.put_bytes(version_key(MODEL, version, MANIFEST_FILE), data, "application/json")
    return digest_of(data)


def test_only_versions_signed_with_the_policy_key_are_loaded(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    store = minio.store(bucket)
    private, public = signing_keys(tmp_path)
    other_private, _ = signing_keys(tmp_path, "attacker")
    digests = publish_versions(minio, bucket, ["v1", "v2", "v3", "v4", "v5", "v6", "v7"])
    for v in ("v1", "v2", "v3", "v4", "v7"):
        _sign(store, private, v, digests[v])
    _sign(store, other_private, "v5", digests["v5"])  # wrong key
    store.put_bytes(version_key(MODEL, "v6", VERIFICATION_FILE), b"{}")  # verified, but never signed

    weights = version_key(MODEL, "v2", WEIGHTS_FILE)  # weights only: the manifest digest check refuses it
    corrupt_in_place(minio, bucket, weights)
    tampered = {"v3": _rewrite_manifest(store, "v3")}  # manifest only, promoted under its new digest
    corrupt_in_place(minio, bucket, version_key(MODEL, "v4", WEIGHTS_FILE))  # both, consistent with each other
    new_sha = hashlib.sha256(store.get_bytes(version_key(MODEL, "v4", WEIGHTS_FILE))).hexdigest()
    tampered["v4"] = _rewrite_manifest(store, "v4", weights_sha=new_sha)

    cluster = Cluster(control_plane, namespace, minio, bucket)
    require_signature(cluster)
    pod = "digits-0"
    replica = cluster.start_replica(
        tmp_path, pod, "v1", digests["v1"], sidecar_env={ENV_SIGNING_PUBLIC_KEY: str(public)}
    )
    try:

        def rejected(version: str) -> str | None:
            found = [
                e.message or ""
                for e in cluster.events(pod)
                if e.reason == "ArtifactRejected" and f"refused {version}:" in (e.message or "")
            ]
            return found[0] if found else None

        expected = {
            "v2": ("SHA-256", digests["v2"]),
            "v3": ("manifest.json has SHA-256", tampered["v3"]),
            "v4": (f"{WEIGHTS_FILE} has SHA-256", tampered["v4"]),
            "v5": ("signed with a different key", digests["v5"]),
            "v6": (f"{SIGNATURE_FILE} is missing", digests["v6"]),
        }
        for version, (fragment, digest) in expected.items():
            cluster.set_desired(version, digest)
            seen = functools.partial(lambda v: rejected(v) is not None, version)
            wait_for(seen, 60, f"ArtifactRejected for {version}", replica.sidecar)
            message = rejected(version)
            assert message is not None and fragment in message, (version, message)
            assert "still serving v1" in message, message
            assert replica.serving() == "v1", version
            assert not cluster.reports(pod, digest)
        assert "manifest.json has SHA-256" in (rejected("v4") or ""), "both rewritten: the manifest is named too"

        cluster.set_desired("v7", digests["v7"])
        wait_for(lambda: cluster.reports(pod, digests["v7"]), 60, "the sidecar to report v7", replica.sidecar)
        assert replica.serving() == "v7"
    finally:
        replica.stop()
        cluster.close()
