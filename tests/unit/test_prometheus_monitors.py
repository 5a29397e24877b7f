"""The scrape jobs the live alert tests derive from the chart's ServiceMonitor and PodMonitor.

They must carry the labels the Prometheus Operator gives targets, or the live tests would prove
rules against labels no cluster has (the operator alerts match ``job``; the serving ones group by
``namespace`` and ``pod``). The rendered chart itself goes through this in
tests/integration/test_alerts_live.py; here, the two shapes the chart can render.
"""

from __future__ import annotations

from typing import Any

import pytest

from modelloop_dev.prometheus import monitor_jobs


def _docs(service: str, relabel: str | None) -> list[dict[str, Any]]:
    endpoint: dict[str, Any] = {"port": "metrics", "honorLabels": True, "interval": "30s"}
    if relabel:
        endpoint["relabelings"] = [{"targetLabel": "job", "replacement": relabel}]
    selector = {"app.kubernetes.io/instance": "r", "app.kubernetes.io/component": "operator"}
    return [
        {"kind": "Service", "metadata": {"name": "r-other", "labels": {"app.kubernetes.io/component": "webhook"}}},
        {"kind": "Service", "metadata": {"name": service, "labels": selector}},
        {
            "kind": "ServiceMonitor",
            "metadata": {"name": "r", "namespace": "ops"},
            "spec": {"selector": {"matchLabels": selector}, "endpoints": [endpoint]},
        },
        {
            "kind": "PodMonitor",
            "metadata": {"name": "r-serving", "namespace": "ops"},
            "spec": {"podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}]},
        },
    ]


@pytest.mark.parametrize(
    ("service", "relabel", "job"),
    [
        ("modelloop-operator", None, "modelloop-operator"),
        ("ml-operator", "modelloop-operator-ml-operator", "modelloop-operator-ml-operator"),
    ],
    ids=["job is the Service name", "a relabeling on job wins"],
)
def test_operator_job_is_what_the_prometheus_operator_would_label(service: str, relabel: str | None, job: str) -> None:
    jobs = monitor_jobs(_docs(service, relabel))
    assert jobs.operator.relabel_job == job
    assert jobs.operator.honor_labels, "the operator's own namespace label must win over the target's"
    assert dict(jobs.operator.target_labels) == {"service": service, "endpoint": "metrics"}


def test_serving_job_is_namespace_slash_podmonitor() -> None:
    jobs = monitor_jobs(_docs("modelloop-operator", None))
    assert (jobs.serving.relabel_job, jobs.serving.metrics_path) == ("ops/r-serving", "/metrics")
    assert not jobs.serving.honor_labels, "serving pods get namespace and pod from the target"
    assert dict(jobs.serving.target_labels) == {"endpoint": "http"}
    assert jobs.serving.name != jobs.operator.name
