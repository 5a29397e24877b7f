"""List the buildah images left over from earlier image builds that only hold disk space.

Called by hack/images.sh after a build and by `hack/images.sh prune`, which remove what this prints:

    python3 hack/image-prune.py GRAPHROOT DRIVER BASE_IMAGE_NAME

`buildah bud --layers` keeps an unnamed image per build step as its cache, so each change below the
torch layers (the base, the torch pin, the Dockerfile's first stages) leaves 5.6 GB behind. Printed:
the unnamed images built on BASE_IMAGE_NAME (ours) whose layers are not all used by a named image
and whose unused layers weigh more than THRESHOLD, i.e. earlier builds' torch, dependency and venv
layers. Kept: every layer a named image uses (with the unnamed images on them, the cache of the
current build) and small leftovers such as the requirements and wheel stages, which later builds
reuse. Reads the containers/storage metadata (<GRAPHROOT>/<DRIVER>-images/images.json, ...-layers/
layers.json); prints nothing when it cannot.
"""

import json
import sys
from pathlib import Path
from typing import Any

THRESHOLD = 50 * 1024 * 1024


def chain(layer: str | None, parents: dict[str, str | None]) -> list[str]:
    """The layer and its ancestors, top first."""
    out = []
    while layer:
        out.append(layer)
        layer = parents.get(layer)
    return out


def stale(images: list[dict[str, Any]], layers: list[dict[str, Any]], base: str) -> list[str]:
    parents = {layer["id"]: layer.get("parent") for layer in layers}
    sizes = {layer["id"]: layer.get("diff-size", 0) for layer in layers}
    named = [image for image in images if image.get("names")]
    used = {layer for image in named for layer in chain(image.get("layer"), parents)}
    base_top = next((image.get("layer") for image in named if base in image["names"]), None)
    if base_top is None:
        return []
    out = []
    for image in images:
        if image.get("names"):
            continue
        layers_of = chain(image.get("layer"), parents)
        if base_top not in layers_of:
            continue  # not built on our base: not ours to remove
        if sum(sizes.get(layer, 0) for layer in layers_of if layer not in used) > THRESHOLD:
            out.append(image["id"])
    return out


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    root, driver, base = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        images = json.loads((root / f"{driver}-images" / "images.json").read_text())
        layers = json.loads((root / f"{driver}-layers" / "layers.json").read_text())
    except (OSError, ValueError):
        return
    for image in stale(images, layers, base):
        print(image)


if __name__ == "__main__":
    main()
