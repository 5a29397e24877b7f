"""The cluster tier's node: started for a module and removed after it.

Module scope, not session scope: the node's Pods (two operators, two model servers, MinIO, CoreDNS)
would otherwise keep two cores busy while the other tiers run. It owns the machine's fixed node
paths (bridge, kubelet ports), so modules of this tier run one after the other, never in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelloop_dev.cluster import Cluster, load_product_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real single-node cluster with the product images built from the Dockerfile and loaded."""
    node = Cluster(tools_bin, tmp_path_factory.mktemp("cluster")).start()
    try:
        load_product_images(REPO, node)
        yield node
    finally:
        node.stop()
