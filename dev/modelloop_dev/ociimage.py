"""Single-binary container images written directly as OCI archives, for the development cluster.

The cluster needs three images that no registry serves to these machines: the pod sandbox's pause
process, CoreDNS and MinIO. Each is one static Go binary (built by ``hack/tools.sh``), so an image
is one layer holding that file plus an image config; writing the archive here takes milliseconds,
where a buildah build of ``FROM scratch`` would copy a root filesystem. The product's own images are
built from the repository's Dockerfile by ``hack/images.sh``, never by this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class BinaryImage:
    """An image made of one executable: ``binary`` is placed at ``path`` and is the entrypoint."""

    name: str
    binary: Path
    path: str
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ("HOME=/tmp", "TMPDIR=/tmp")
    user: str = "65532:65532"
    dirs: tuple[str, ...] = ("tmp",)
    labels: dict[str, str] = field(default_factory=dict)

    def digest_source(self) -> str:
        """What the image is made of: equal strings mean an identical archive, so an import can be skipped."""
        h = hashlib.sha256()
        with self.binary.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(json.dumps([self.name, self.path, self.entrypoint, self.env, self.user, self.dirs]).encode())
        return h.hexdigest()


def _layer(image: BinaryImage) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parents: list[str] = []
        for part in Path(image.path.lstrip("/")).parent.parts:
            parents.append(part)
            parents_path = "/".join(parents)
            info = tarfile.TarInfo(parents_path)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for d in image.dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
        info = tarfile.TarInfo(image.path.lstrip("/"))
        info.size, info.mode = image.binary.stat().st_size, 0o755
        with image.binary.open("rb") as f:
            tar.addfile(info, f)
    return buf.getvalue()


def write_archive(image: BinaryImage, out: Path) -> Path:
    """Writes ``image`` as an OCI image-layout tar that ``ctr images import`` names ``image.name``."""
    layer = _layer(image)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(image.entrypoint or (image.path,)),
            "Env": list(image.env),
            "User": image.user,
            "WorkingDir": "/",
            "Labels": {"dev.modelloop.source-digest": image.digest_source(), **image.labels},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": image.name,
                    "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(tar, "index.json", json.dumps(index).encode())
        for blob in (layer, config_bytes, manifest_bytes):
            _add(tar, "blobs/sha256/" + _digest(blob).split(":", 1)[1], blob)
    return out


def _digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
