"""Writing and reading whole model versions: the manifest is written last and checked first.

The trainer publishes through :func:`publish_version`; the verifier, the trainer (loading a
parent) and the reload sidecar fetch through :func:`fetch_version`, which refuses any file whose
size or SHA-256 differs from the manifest and names that file in the error.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from modelloop.api.artifacts import (
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    ArtifactError,
    Manifest,
    ManifestFile,
    ManifestInvalid,
    check_file,
    digest_of,
    version_key,
    version_prefix,
)

from .objectstore import NotFound, ObjectStore

log = logging.getLogger(__name__)


def publish_version(store: ObjectStore, manifest: Manifest, local_dir: Path) -> str:
    """Upload every file of ``local_dir`` listed in ``manifest.files``, then the manifest.

    ``manifest.files`` is filled here from what was actually uploaded. Returns the manifest
    digest. Until the manifest lands the version does not exist, so a crash mid-way leaves
    nothing a reader would accept.
    """
    files: list[ManifestFile] = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        sha, size = store.put_file(version_key(manifest.model, manifest.version, rel), path)
        files.append(ManifestFile(path=rel, size=size, sha256=sha))
    manifest.files = files
    data = manifest.to_bytes()
    store.put_bytes(version_key(manifest.model, manifest.version, MANIFEST_FILE), data, "application/json")
    return digest_of(data)


def read_manifest(store: ObjectStore, model: str, version: str) -> tuple[Manifest, str]:
    """The manifest and its digest; ArtifactError (naming the file) if absent or unreadable."""
    manifest, digest, _ = _read_manifest(store, model, version)
    return manifest, digest


def _read_manifest(
    store: ObjectStore, model: str, version: str, expected_digest: str | None = None
) -> tuple[Manifest, str, bytes]:
    """The digest is compared before the bytes are parsed: a manifest rewritten after promotion may be
    re-uploaded (retry later), but an invalid one with the promoted digest can never become valid."""
    where = f"s3://{store.bucket}/{version_prefix(model, version)}{MANIFEST_FILE}"
    try:
        data = store.get_bytes(version_key(model, version, MANIFEST_FILE))
    except NotFound as e:
        raise ArtifactError(f"{where} is missing: version {model}/{version} was never completed") from e
    digest = digest_of(data)
    if expected_digest and digest != expected_digest:
        raise ArtifactError(
            f"{where}: digest {digest} differs from the expected {expected_digest}; the version was rewritten "
            "after promotion, refusing it"
        )
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ManifestInvalid(f"{where} is not a valid manifest: {field}: {first['msg']}") from e
    if manifest.format_version > MANIFEST_FORMAT_VERSION:
        raise ArtifactError(
            f"{where} has format version {manifest.format_version}, newer than this build understands "
            f"({MANIFEST_FORMAT_VERSION}); upgrade modelloop"
        )
    if manifest.format_version < MANIFEST_FORMAT_VERSION:
        log.warning("%s has old format version %d; reading it in compatibility mode", where, manifest.format_version)
    if (manifest.model, manifest.version) != (model, version):
        raise ArtifactError(f"{where} describes {manifest.model}/{manifest.version}, not {model}/{version}")
    return manifest, digest, data


def fetch_version(
    store: ObjectStore,
    model: str,
    version: str,
    dest: Path,
    expected_digest: str | None = None,
    only: set[str] | None = None,
    admit: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Download a version into ``dest`` atomically: a temp dir beside it, verified, then renamed.

    ``dest`` either appears complete and verified or not at all. ``only`` limits the download to
    some files (e.g. just the weights); each is still checked against the manifest. ``admit`` sees
    the checked manifest before any file is fetched and may raise to stop (e.g. no room for it).
    """
    manifest, _, raw = _read_manifest(store, model, version, expected_digest)
    if admit is not None:
        admit(manifest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        where = f"s3://{store.bucket}/{model}/{version}"
        for entry in manifest.files:
            if only is not None and entry.path not in only:
                continue
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha, size = store.download(version_key(model, version, entry.path), target)
            except NotFound as e:
                raise ArtifactError(
                    f"{where}/{entry.path} is listed in the manifest but missing from the bucket"
                ) from e
            check_file(entry, sha, size, where)
        (tmp / MANIFEST_FILE).write_bytes(raw)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
