"""The serving volume fills up while a new version downloads: refused cleanly, the old model stays.

A real ENOSPC, not a mocked one: the fetch runs in a child process inside a user + mount
namespace (``unshare --user --map-root-user --mount``) with a small tmpfs mounted on the model
directory, exactly as a size-limited emptyDir behaves. The child reports what it saw as JSON;
the assertions are on that data (file digests, directory listings, free space).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelloop.api.artifacts import Manifest
from modelloop.clients.artifactstore import publish_version

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
