"""The serving volume fills up while a new version downloads: refused cleanly, the old model stays.

A real ENOSPC, not a mocked one: a small tmpfs is mounted on the model directory inside a user +
mount namespace (``unshare --user --map-root-user --mount``), exactly as a size-limited emptyDir
behaves. The first test runs one fetch in such a namespace and reports what it saw as JSON. The
second runs a whole serving replica there: a holder process owns the namespace and the real
server and sidecar join it with ``nsenter``, while the test reads the volume through
``/proc/<holder>/root``. The assertions are on data (file digests, directory listings, free
space, the answers clients got, the Pod's annotations and Events).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.test_server_support import PLUGIN, Cluster, Replica, publish_versions

from modelloop.api import constants as c
from modelloop.api.artifacts import Manifest
from modelloop.clients.artifactstore import publish_version
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, wait_for
from modelloop_server.synthetic import write_weights
from modelloop_trainer.examples.digits import DigitsPlugin

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MODEL = "diskfull"
VOLUME_MB = 8

CHILD = textwrap.dedent(
    """
    import errno, hashlib, json, logging, os, subprocess, sys
    from pathlib import Path
    from modelloop.clients.artifactstore import fetch_version
    from modelloop.clients.objectstore import ObjectStore

    volume = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size={size}m", "tmpfs", str(volume)], check=True)
    store = ObjectStore.from_env()
    dest = volume / "model"

    def snapshot():
        return {{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dest.iterdir())}}

    def free():
        st = os.statvfs(volume)
        return st.f_bavail * st.f_frsize

    retries = []

    class Retries(logging.Handler):
        def emit(self, record):
            retries.append(record.getMessage())

    logging.getLogger("modelloop.clients.objectstore").addHandler(Retries(logging.WARNING))
    out = {{}}
    fetch_version(store, "{model}", "v1", dest)
    out["before"] = snapshot()
    out["free_before"] = free()
    try:
        fetch_version(store, "{model}", "v2", dest)
        out["error"] = None
    except OSError as e:
        out["error"] = {{"errno": e.errno, "is_enospc": e.errno == errno.ENOSPC, "message": str(e)}}
    out["after"] = snapshot()
    out["free_after"] = free()
    out["retries"] = retries
    out["listing"] = sorted(p.name for p in volume.iterdir())
    print(json.dumps(out))
    """
)


def _namespaces_available() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"unprivileged user + mount namespaces are unavailable here: {probe.stderr.strip()}"
    return None


def _publish(store: Any, version: str, weights_mb: int, root: Path) -> dict[str, str]:
    d = root / version
    d.mkdir()
    (d / "model.safetensors").write_bytes(os.urandom(weights_mb << 20))
    (d / "metrics.json").write_text(json.dumps({"version": version}))
    manifest = Manifest(model=MODEL, version=version, created_at=datetime.now(UTC), files=[])
    publish_version(store, manifest, d)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}


def test_download_into_a_full_volume_is_refused_and_the_old_model_stays(
    minio: Any, bucket: str, tmp_path: Path
) -> None:
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    store = minio.store(bucket)
    v1 = _publish(store, "v1", 3, tmp_path)
    _publish(store, "v2", 6, tmp_path)  # 3 + 6 MiB do not fit in 8 MiB: the old model is still there
    volume = tmp_path / "volume"
    volume.mkdir()
    script = CHILD.format(size=VOLUME_MB, model=MODEL)
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", script, str(volume)],
        env={**os.environ, **minio.env(bucket)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])

    assert seen["error"] is not None, "a 6 MiB model was written into a volume with less space free"
    assert seen["error"]["is_enospc"], f"expected ENOSPC, got {seen['error']}"
    expected_v1 = {**v1, "manifest.json": seen["before"]["manifest.json"]}
    assert seen["before"] == expected_v1
    assert seen["after"] == seen["before"], "the serving model's files changed after a refused download"
    assert seen["retries"] == [], "disk full is not transient; retrying it only delays the refusal"
    assert seen["listing"] == ["model"], f"the failed download left files behind: {seen['listing']}"
    assert seen["free_after"] == seen["free_before"], "space taken by the failed download was not given back"


# --- a whole replica on a full volume ---------------------------------------------------------

SERVING_MODEL = "digits"
REPLICA_VOLUME_MB = 16
HEADROOM_MB = 4  # what the ballast leaves free: v1 fits, v2 (6 MiB of extra files) does not
V2_PADDING_MB = 6
WAIT = 120.0


class Volume:
    """A size-limited tmpfs on ``path`` in a namespace held open by a sleeping process.

    Processes started through :meth:`enter` see the tmpfs; the test sees it via :meth:`view`.
    """

    def __init__(self, path: Path, size_mb: int, log: Path) -> None:
        self.path = path
        self.size_mb = size_mb
        script = f'mount -t tmpfs -o size={size_mb}m tmpfs "$0" && exec sleep infinity'
        self.holder = ManagedProcess(
            "volume", ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(path)], log
        )

    def start(self) -> Volume:
        self.holder.start()
        wait_for(
            lambda: self.total() == self.size_mb << 20, 60, f"a {self.size_mb} MiB tmpfs on {self.path}", self.holder
        )
        return self

    def stop(self) -> None:
        self.holder.stop()

    def view(self) -> Path:
        """The mounted volume as the holder sees it (the test's own view of ``path`` is the empty dir below)."""
        return Path(f"/proc/{self.holder.pid}/root") / self.path.relative_to("/")

    def enter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.holder.pid}", "--user", "--mount", "--preserve-credentials", *argv]

    def total(self) -> int:
        st = os.statvfs(self.view())
        return st.f_blocks * st.f_frsize

    def free(self) -> int:
        st = os.statvfs(self.view())
        return st.f_bavail * st.f_frsize

    def listing(self) -> list[str]:
        return sorted(p.name for p in self.view().iterdir())


class Traffic:
    """A client asking for predictions back to back, recording (status, X-Model-Version) of each answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        x = [float(k % 16) for k in range(64)]
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json={"input": x})
                    self.answers.append((r.status_code, r.headers.get("x-model-version", r.text[:200])))
                except httpx.HTTPError as e:
                    self.answers.append((0, repr(e)))
                self._stop.wait(0.02)  # pacing, so two cores are not spent on the client alone

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _publish_padded(store: Any, version: str, padding_mb: int) -> str:
    """A servable digits version carrying ``padding_mb`` MiB of extra files (e.g. evaluation plots)."""
    with tempfile.TemporaryDirectory(prefix=f"padded-{version}-") as tmp:
        d = Path(tmp)
        write_weights(DigitsPlugin(), int(version[1:]), d)
        (d / "eval-plots.bin").write_bytes(os.urandom(padding_mb << 20))
        manifest = Manifest(model=SERVING_MODEL, version=version, created_at=datetime.now(UTC), files=[], plugin=PLUGIN)
        return publish_version(store, manifest, d)


@pytest.fixture
def minio_up(minio: MinioServer) -> Iterator[MinioServer]:
    yield minio
    if not minio.alive():
        minio.start()


def test_sidecar_on_a_full_volume_keeps_the_old_model_serving_and_recovers(
    control_plane: ControlPlane, minio_up: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    reason = _namespaces_available() or (None if shutil.which("nsenter") else "nsenter(1) is not installed")
    if reason:
        pytest.skip(reason)
    minio = minio_up
    digests = publish_versions(minio, bucket, ["v1"])
    digests["v2"] = _publish_padded(minio.store(bucket), "v2", V2_PADDING_MB)
    cluster = Cluster(control_plane, namespace, minio, bucket)
    pod = "digits-0"
    cluster.create_pod(pod)
    replica = Replica(tmp_path, pod, namespace, minio.env(bucket), cluster.serving_kubeconfig(tmp_path))
    # retries seconds apart, so a look at the volume between two attempts is not racing a download
    replica.sidecar.env.update(MODELLOOP_RETRY_BASE_SECONDS="4", MODELLOOP_RETRY_MAX_SECONDS="8")
    # The receipts of the traffic below are journalled (default: on this volume) between uploads; kept
    # off the volume here, its free space measures what the refused download left, and nothing else.
    replica.server.env.update(MODELLOOP_RECEIPT_SPOOL_DIR=str(tmp_path / "receipt-spool"))
    volume = Volume(replica.model_dir, REPLICA_VOLUME_MB, tmp_path / "volume.log").start()
    replica.server.argv = volume.enter(replica.server.argv)
    replica.sidecar.argv = volume.enter(replica.sidecar.argv)

    def annotated() -> str | None:
        return cluster.pod_annotations(pod).get(c.ANNOTATION_SERVING_VERSION)

    def disk_full_events() -> list[Any]:
        return [
            e
            for e in cluster.events(pod)
            if e.reason == "ArtifactDownloadFailed" and e.type == "Warning" and "disk full" in (e.message or "")
        ]

    try:
        replica.server.start()
        wait_for(lambda: httpx.get(f"{replica.base}/healthz").status_code == 200, WAIT, "server up", replica.server)
        replica.sidecar.start()
        cluster.set_desired("v1", digests["v1"])
        wait_for(lambda: annotated() == "v1", WAIT, "the sidecar to report v1", replica.sidecar)
        replica.wait_serving("v1", WAIT)

        ballast = volume.view() / "ballast"
        ballast.write_bytes(b"\0" * (volume.free() - (HEADROOM_MB << 20)))
        free_before = volume.free()
        with Traffic(f"{replica.base}/v1/predict") as traffic:
            wait_for(lambda: len(traffic.answers) >= 5, WAIT, "answers before the promotion", replica.server)
            promoted_at = len(traffic.answers)
            cluster.set_desired("v2", digests["v2"])
            wait_for(lambda: bool(disk_full_events()), WAIT, "a Warning Event about the full disk", replica.sidecar)
            wait_for(
                lambda: any((e.count or 0) >= 2 for e in disk_full_events()),
                WAIT, "the retry to count on the same Event", replica.sidecar,
            )  # fmt: skip
            repeats = disk_full_events()
            refused_at = len(traffic.answers)
            listing = volume.listing()
            free_after = volume.free()
            still = annotated()
            serving = replica.serving()

            ballast.unlink()
            freed_at = len(traffic.answers)
            wait_for(lambda: annotated() == "v2", WAIT, "v2 reported once space was freed", replica.sidecar)
            wait_for(lambda: (200, "v2") in traffic.answers[freed_at:], WAIT, "answers from v2", replica.server)
        recovered = volume.listing()
        v2_files = sorted(p.name for p in (volume.view() / "v2").iterdir())
    finally:
        replica.stop()
        volume.stop()
        cluster.close()

    assert len(repeats) == 1, f"each retry posted a new Event: {[(e.metadata.name, e.count) for e in repeats]}"
    event = repeats[0]
    assert "v2" in event.message and str(replica.model_dir) in event.message, event.message
    assert "still serving the previous model" in event.message, event.message
    assert still == "v1", f"the Pod claimed {still} while v2 could not be stored"
    assert serving == "v1"
    assert [n for n in listing if n.startswith((".v", "v2"))] == [], f"partial v2 left on the volume: {listing}"
    assert free_after == free_before, f"the failed download kept {free_before - free_after} bytes of the volume"

    answers = traffic.answers
    failed = [a for a in answers if a[0] != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    assert refused_at > promoted_at, "no request was answered while v2 was being refused"
    assert {v for _, v in answers[:freed_at]} == {"v1"}, "only v1 may answer until v2 fits on the volume"
    versions = [v for _, v in answers]
    first_v2 = versions.index("v2")
    assert set(versions[first_v2:]) == {"v2"}, "v1 answered again after v2 took over"
    assert "ballast" not in recovered and [n for n in recovered if n.startswith(".v")] == [], recovered
    assert v2_files == ["eval-plots.bin", "manifest.json", "model.safetensors"]
