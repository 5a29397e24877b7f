"""Turn a docker-archive stream of one image into an OCI archive that leaves out the layers a containerd has.

Called by hack/images.sh between `buildah push ... docker-archive:/dev/stdout` and `ctr images import`:

    buildah push --disable-compression IMAGE docker-archive:/dev/stdout:IMAGE \\
      | python3 hack/image-archive.py HAVE TAG | ctr images import --base-name REPO -

HAVE is a file of the blob digests containerd holds (`ctr content ls -q`); a layer whose digest it
lists is not copied, so containerd neither ingests nor unpacks again the gigabytes of torch layers
that the trainer and server images share, or that an earlier build of the same image had. The
manifest is the one `ctr images import` makes of a docker-archive (docker media types, uncompressed
layers), and containerd checks each blob it does receive against its digest.
"""

import hashlib
import io
import json
import sys
import tarfile
from typing import IO, Any

DOCKER = "application/vnd.docker."


def blob_name(data: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "size": len(data), "digest": "sha256:" + hashlib.sha256(data).hexdigest()}


def convert(source: IO[bytes], target: IO[bytes], have: set[str], tag: str) -> None:
    sizes: dict[str, int] = {}
    configs: dict[str, bytes] = {}
    manifest: Any = None
    with tarfile.open(fileobj=source, mode="r|") as src, tarfile.open(fileobj=target, mode="w|") as out:

        def read(member: tarfile.TarInfo) -> bytes:
            f = src.extractfile(member)
            assert f is not None
            return f.read()

        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            out.addfile(info, io.BytesIO(data))

        # The layers come first, named <digest>.tar; then the config (<digest>.json) and manifest.json.
        for member in src:
            if not member.isfile() or "/" in member.name:
                continue  # the legacy <id>/layer.tar links, VERSION and json files
            if member.name.endswith(".tar"):
                sizes[member.name] = member.size
                if "sha256:" + member.name.removesuffix(".tar") not in have:
                    data = src.extractfile(member)
                    member.name = "blobs/sha256/" + member.name.removesuffix(".tar")
                    out.addfile(member, data)
            elif member.name == "manifest.json":
                (manifest,) = json.loads(read(member))
            elif member.name.endswith(".json"):
                configs[member.name] = read(member)
        if manifest is None:
            raise SystemExit("image-archive: no manifest.json in the docker-archive")
        config = configs[manifest["Config"]]
        image = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER + "distribution.manifest.v2+json",
                "config": descriptor(DOCKER + "container.image.v1+json", config),
                "layers": [
                    {
                        "mediaType": DOCKER + "image.rootfs.diff.tar",
                        "size": sizes[name],
                        "digest": "sha256:" + name.removesuffix(".tar"),
                    }
                    for name in manifest["Layers"]
                ],
            }
        ).encode()
        entry = descriptor(DOCKER + "distribution.manifest.v2+json", image)
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "manifests": [entry]}
        put(blob_name(config), config)
        put(blob_name(image), image)
        put("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        put("index.json", json.dumps(index).encode())


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        have = set(f.read().split())
    convert(sys.stdin.buffer, sys.stdout.buffer, have, sys.argv[2])


if __name__ == "__main__":
    main()
