"""The cluster tier's node: started for a module and removed after it.

Module scope, not session scope: the node's Pods (two operators, two model servers, MinIO, CoreDNS)
would otherwise keep two cores busy while the other tiers run. It owns the machine's fixed node
paths (bridge, kubelet ports), so modules of this tier run one after the other, never in parallel.
Kueue's manager runs only for the modules that ask for the ``kueue`` fixture.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Installed, install

from modelloop_dev.cluster import Cluster, load_product_images
from modelloop_dev.kueue import Kueue, locate_kueue

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


@pytest.fixture(scope="module")
def installed(cluster: Cluster, tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The README's install steps, run verbatim: the chart, MinIO, the example policy's v1 Active."""
    return install(cluster, tools_bin, tmp_path_factory.mktemp("kube-creds"))


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue's controller manager (built by hack/kueue.sh) managing the node's batch/v1 Jobs."""
    controller = Kueue(locate_kueue(REPO), cluster, tmp_path_factory.mktemp("kueue")).start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def report(installed: Installed, pytestconfig: pytest.Config) -> Iterator[dict[str, Any]]:
    """The figures the README and the issue notes quote, written to the terminal even under capture."""
    timings = {k: round(v, 1) for k, v in installed.cluster.timings.items()}
    figures: dict[str, Any] = {"install_s": round(installed.install_s, 1), **timings}
    yield figures
    line = "cluster figures: " + json.dumps(figures, default=str)
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}")
