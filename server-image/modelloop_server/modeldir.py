"""The shared model directory: ``<model_dir>/<version>/`` holding a fetched, verified version.

The sidecar is the only writer of version directories (it renames a verified temp dir into
place); the server records which version it serves in ``.current`` so a restarted server comes
back with the same answer instead of the highest number (which may have been rolled back).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from modelloop.api.artifacts import (
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
    check_file,
    check_version,
    digest_of,
    sha256_stream,
    version_number,
)

CURRENT_FILE = ".current"


def versions_on_disk(model_dir: Path) -> list[str]:
    """Completed version directories (they have a manifest), oldest first."""
    found: list[str] = []
    if not model_dir.is_dir():
        return found
    for p in model_dir.iterdir():
        try:
            check_version(p.name)
        except ValueError:
            continue
        if (p / MANIFEST_FILE).is_file():
            found.append(p.name)
    return sorted(found, key=version_number)


def read_local_manifest(version_dir: Path) -> tuple[Manifest, str]:
    """The manifest of a local version and its digest (``sha256:<hex>`` of the file's bytes)."""
    path = version_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: not a fetched version") from None
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValueError as e:
        raise ArtifactError(f"{path} is not a valid manifest: {e}") from None
    return manifest, digest_of(raw)


def verify_local(version_dir: Path, only: set[str] | None = None) -> tuple[Manifest, str]:
    """Re-check files on disk against their manifest: a local copy can rot or be half-deleted."""
    manifest, digest = read_local_manifest(version_dir)
    for entry in manifest.files:
        if only is not None and entry.path not in only:
            continue
        path = version_dir / entry.path
        try:
            with path.open("rb") as f:
                sha, size = sha256_stream(f)
        except FileNotFoundError:
            raise ArtifactError(f"{path} is listed in the manifest but missing on disk") from None
        check_file(entry, sha, size, str(version_dir))
    return manifest, digest


def read_current(model_dir: Path) -> str | None:
    try:
        value = (model_dir / CURRENT_FILE).read_text().strip()
        return check_version(value)
    except (OSError, ValueError):
        return None


def write_current(model_dir: Path, version: str) -> None:
    """Atomically (write + rename): a crash leaves the old or the new name, never half of one."""
    tmp = model_dir / f"{CURRENT_FILE}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, model_dir / CURRENT_FILE)


def startup_version(model_dir: Path) -> str | None:
    """What a (re)starting server loads: the one it served last, else the newest on disk."""
    on_disk = versions_on_disk(model_dir)
    current = read_current(model_dir)
    if current in on_disk:
        return current
    return on_disk[-1] if on_disk else None


def prune(model_dir: Path, keep: int, protect: set[str]) -> list[str]:
    """Remove the oldest versions beyond ``keep``, never those in ``protect``.

    The sidecar protects the served version, the previous one (an instant rollback must not need
    a download), the desired one and the prefetched candidate: with the default ``keep`` of 3 the
    disk holds at most those (a fourth only while a desired and a candidate are both new).
    """
    removed: list[str] = []
    on_disk = versions_on_disk(model_dir)
    excess = len(on_disk) - keep
    for version in on_disk:
        if excess <= 0:
            break
        if version in protect:
            continue
        shutil.rmtree(model_dir / version, ignore_errors=True)
        removed.append(version)
        excess -= 1
    return removed


def clean_temp_dirs(model_dir: Path, version: str | None = None) -> None:
    """Temp dirs left by a download that was killed (``fetch_version`` names them ``.<version>.*``).

    With ``version``, only that version's: the other worker may be downloading another one right now.
    """
    if not model_dir.is_dir():
        return
    prefix = f".{version}." if version else ".v"
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.startswith(prefix):
            with contextlib.suppress(OSError):
                shutil.rmtree(p)
