"""Real servers a bench starts for itself, so nothing another run shares skews its figures."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from modelloop.clients.objectstore import ObjectStore
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import ManagedProcess, locate_tools

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def local_minio(workdir: Path, bucket: str) -> Iterator[ObjectStore]:
    """A MinIO of the bench's own (the tests' MinioServer) with ``bucket`` created."""
    with MinioServer(locate_tools(REPO), workdir) as server:
        yield server.store(bucket)


def standalone_operator(namespace: str, log: Path, env: dict[str, str]) -> ManagedProcess:
    """The real ``modelloop-operator`` as users run it (default intervals), alone on ``namespace``, not started."""
    argv = [
        Path(sys.executable).parent / "modelloop-operator",
        "--standalone", "--namespace", namespace, "--metrics-port", "0", "--liveness", "",
    ]  # fmt: skip
    return ManagedProcess("modelloop-operator", argv, log, env={**os.environ, **env})
