"""Split pyproject.toml's pinned requirements into the files the image builds install, layer by layer.

Called by the root Dockerfile's `requirements` stage and by hack/images.sh (which downloads the
same files into a wheelhouse). Each file is one layer's worth, so a change to one extra does not
invalidate the layers below it; above all, the multi-gigabyte torch layer that the trainer and
server images share is rebuilt only when the torch pin itself changes.

    python3 hack/image-requirements.py pyproject.toml OUTDIR

writes into OUTDIR:
  build.txt     the build backend (setuptools), to build the modelloop wheel
  torch.txt     torch, pinned identically in the trainer and server extras
  shared.txt    the project's dependencies plus what the trainer and server extras share besides torch
  operator.txt  the project's dependencies plus the operator extra (no torch)
  trainer.txt   the project's dependencies plus the trainer extra
  server.txt    the project's dependencies plus the server extra
"""

import re
import sys
import tomllib
from pathlib import Path
from typing import Any


def name_of(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise SystemExit(f"image-requirements: cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def unique(requirements: list[str]) -> list[str]:
    """Requirements in order, each distribution once; the same name pinned twice differently is an error."""
    seen: dict[str, str] = {}
    for requirement in requirements:
        name = name_of(requirement)
        if seen.setdefault(name, requirement) != requirement:
            raise SystemExit(f"image-requirements: {name} is pinned twice: {seen[name]!r} and {requirement!r}")
    return list(seen.values())


def split(pyproject: dict[str, Any]) -> dict[str, list[str]]:
    project = pyproject["project"]
    base = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    trainer, server = extras["trainer"], extras["server"]
    torch = unique([r for r in trainer + server if name_of(r) == "torch"])
    if len(torch) != 1:
        raise SystemExit("image-requirements: the trainer and server extras must pin the same torch")
    common = [r for r in trainer if r in server and name_of(r) != "torch"]
    return {
        "build": unique(pyproject["build-system"]["requires"]),
        "torch": torch,
        "shared": unique(base + common),
        "operator": unique(base + extras["operator"]),
        "trainer": unique(base + trainer),
        "server": unique(base + server),
    }


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    pyproject = tomllib.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, requirements in split(pyproject).items():
        (out / f"{name}.txt").write_text("".join(f"{r}\n" for r in requirements))


if __name__ == "__main__":
    main()
