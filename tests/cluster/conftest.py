"""The cluster tier's node and the README's install: started once for the tier, removed after its last test.

One install for every module: the README's steps take 4-5 minutes on CI's two cores, so
``test_install.py`` and ``test_kueue.py`` share the node, its images and the install, and each test
creates what it needs beside it (its own policies, models and, for Kueue, queues); the order of the
tests within ``test_install.py`` is a story (each step starts from the state the previous one left).
Kueue's manager starts beside the same node the first time a test asks for the ``kueue`` fixture,
and Argo CD (``argocd``, ``gitops``) the first time a test asks for the example to live in Git.

Torn down after the tier's last test, not at the end of the session: the node's Pods (two
operators, two model servers, MinIO, CoreDNS) would otherwise keep two cores busy while the other
tiers run after it. It owns the machine's fixed node paths (bridge, kubelet ports), so this tier
never runs in parallel with itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import GitOps, Installed, install

from modelloop_dev.argocd import ArgoCD, GitRepo, locate_argocd
from modelloop_dev.cluster import Cluster, load_product_images
from modelloop_dev.kueue import Kueue, locate_kueue

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Everything the tier started, closed in reverse order (figures printed, Kueue, then the node) after
# its last test, or at the end of the session when that comes first (-x, Ctrl-C). Closing twice is a no-op.
_tier = contextlib.ExitStack()


def _in_tier(item: pytest.Item | None) -> bool:
    return item is not None and Path(item.path).resolve().is_relative_to(HERE)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the tier's last test (its own fixtures are torn down by then), stop the node at once."""
    if not _in_tier(nextitem):
        _tier.close()


@pytest.fixture(scope="session")
def cluster(tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real single-node cluster with the product images built from the Dockerfile and loaded."""
    node = Cluster(tools_bin, tmp_path_factory.mktemp("cluster")).start()
    _tier.callback(node.stop)
    try:
        load_product_images(REPO, node)
        yield node
    finally:
        _tier.close()


@pytest.fixture(scope="session")
def installed(cluster: Cluster, tools_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The README's install steps, run verbatim: the chart, MinIO over TLS, the example policy's v1 Active."""
    return install(cluster, tools_bin, tmp_path_factory.mktemp("kube-creds"))


@pytest.fixture(scope="session")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kueue:
    """Kueue's controller manager (built by hack/kueue.sh) managing the node's batch/v1 Jobs, until the tier ends."""
    controller = Kueue(locate_kueue(REPO), cluster, tmp_path_factory.mktemp("kueue"))
    _tier.callback(controller.stop)
    return controller.start()


@pytest.fixture(scope="session")
def argocd(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> ArgoCD:
    """Argo CD's application controller and repo-server (built by hack/argocd.sh) with Redis, until the tier ends."""
    controller = ArgoCD(locate_argocd(REPO), REPO, cluster, tmp_path_factory.mktemp("argocd"))
    _tier.callback(controller.stop)
    return controller.start()


@pytest.fixture(scope="session")
def gitops(installed: Installed, argocd: ArgoCD, tmp_path_factory: pytest.TempPathFactory) -> GitOps:
    """From the first test that asks on, the example lives in Git and Argo CD syncs it (self-heal on)."""
    handed = GitOps.hand_over(installed, argocd, GitRepo(tmp_path_factory.mktemp("git") / "models"))
    _tier.callback(handed.recorder.stop)
    return handed


@pytest.fixture(scope="session")
def report(installed: Installed, pytestconfig: pytest.Config) -> dict[str, Any]:
    """The figures the README and the issue notes quote, written to the terminal (even under capture) when the tier ends."""
    timings = {k: round(v, 1) for k, v in installed.cluster.timings.items()}
    figures: dict[str, Any] = {"install_s": round(installed.install_s, 1), **timings}

    def show() -> None:
        line = "cluster figures: " + json.dumps(figures, default=str)
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            print(f"\n{line}")

    _tier.callback(show)
    return figures
