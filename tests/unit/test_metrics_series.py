"""Per-version series stay true: a retired version's series goes away, the active one is always exported."""

from __future__ import annotations

import secrets

from prometheus_client import REGISTRY

from modelloop import metrics
from modelloop.metrics import PolicySeries, forget_policy, publish_policy

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _active(ns: str) -> dict[str, str]:
    """version -> digest of every modelloop_active_version_info series of the namespace."""
    return {
        s.labels["version"]: s.labels["digest"]
        for fam in REGISTRY.collect()
        if fam.name == "modelloop_active_version_info"
        for s in fam.samples
        if s.labels["namespace"] == ns and s.value == 1
    }


def _live(ns: str) -> dict[str, float]:
    return {
        s.labels["version"]: s.value
        for fam in REGISTRY.collect()
        if fam.name == "modelloop_live_accuracy"
        for s in fam.samples
        if s.labels["namespace"] == ns
    }


def test_promotion_replaces_both_series_of_the_retired_version() -> None:
    ns = "t-" + secrets.token_hex(4)
    publish_policy(ns, "p", PolicySeries(active=("m", "v1", D1), live=("v1", 0.93)))
    assert (_active(ns), _live(ns)) == ({"v1": D1}, {"v1": 0.93})

    # v2 promoted: no reviews of it yet, so no live series; v1's is gone rather than frozen at 0.93.
    publish_policy(ns, "p", PolicySeries(active=("m", "v2", D2), live=None))
    assert (_active(ns), _live(ns)) == ({"v2": D2}, {})

    publish_policy(ns, "p", PolicySeries(active=("m", "v2", D2), live=("v2", 0.5)))
    publish_policy(ns, "p", PolicySeries(active=("m", "v2", D2), live=("v2", 0.6)))
    assert _live(ns) == {"v2": 0.6}


def test_a_restarted_operator_exports_the_active_version_at_its_first_pass() -> None:
    """The module state is what a restart loses: a pass from status alone rebuilds the series."""
    ns = "t-" + secrets.token_hex(4)
    publish_policy(ns, "p", PolicySeries(active=("m", "v3", D1)))
    metrics._published.clear()  # a new process knows nothing of what the last one exported
    for fam in (metrics.ACTIVE_VERSION, metrics.LIVE_ACCURACY):
        fam.clear()
    assert _active(ns) == {}
    publish_policy(ns, "p", PolicySeries(active=("m", "v3", D1)))
    assert _active(ns) == {"v3": D1}


def test_policies_are_independent_and_forgotten_on_deletion() -> None:
    ns = "t-" + secrets.token_hex(4)
    publish_policy(ns, "a", PolicySeries(active=("m", "v1", D1), live=("v1", 0.9)))
    publish_policy(ns, "b", PolicySeries(active=("n", "v7", D2)))
    metrics.RETRIES_EXHAUSTED.labels(ns, "a").set(1)
    forget_policy(ns, "a")
    assert (_active(ns), _live(ns)) == ({"v7": D2}, {})
    assert REGISTRY.get_sample_value("modelloop_training_retries_exhausted", {"namespace": ns, "policy": "a"}) is None
    forget_policy(ns, "a")  # twice (a daemon stopped and its policy deleted) is harmless
