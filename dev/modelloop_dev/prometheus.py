"""A real Prometheus on loopback: it scrapes local processes and evaluates the chart's rules.

The alerts are only worth their pages if the shipped rules, over the series the operator and the
model servers really export, fire when they should and stay quiet when they should not. promtool
proves the rules over series written by hand; this runs Debian's ``prometheus`` server (the
package promtool comes from) against the live processes of a test.

Targets come through file-based service discovery, one JSON file per scrape job, so a test adds a
serving replica or drops a stopped one without reloading Prometheus. ``monitor_jobs`` turns the
chart's ServiceMonitor and PodMonitor into the equivalent scrape jobs, and each target is given
the labels the Prometheus Operator would give it (``namespace``, ``pod``, ``job``...), which is
what the rules group and match on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from modelloop_dev.processes import ManagedProcess, ProcessFailed, free_port, http_get, wait_for


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry; its targets are set later with ``PrometheusServer.set_targets``."""

    name: str
    honor_labels: bool = False
    metrics_path: str = "/metrics"
    relabel_job: str | None = None
    """A ``job`` label that replaces the job name (a monitor's ``relabelings`` on ``job``)."""
    target_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels every target of the job gets (e.g. a ServiceMonitor's ``service`` and ``endpoint``)."""


@dataclass(frozen=True)
class MonitorJobs:
    """The scrape jobs the chart's monitoring objects stand for."""

    operator: ScrapeJob
    serving: ScrapeJob


def monitor_jobs(docs: Iterable[Mapping[str, Any]]) -> MonitorJobs:
    """The scrape jobs the Prometheus Operator would generate from a rendered chart's monitors.

    A ServiceMonitor's targets get ``job`` = the Service's name (what ``ModelloopOperatorDown``
    matches), ``service`` and ``endpoint``; a PodMonitor's get ``job`` = ``<namespace>/<name>`` and
    ``endpoint``. Both then get ``namespace`` and ``pod`` of the target, which ``target()`` adds.
    """
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(str(d.get("kind")), []).append(d)
    (sm,) = by_kind.get("ServiceMonitor", [])
    (pm,) = by_kind.get("PodMonitor", [])
    want = sm["spec"]["selector"]["matchLabels"]
    (svc,) = [
        s
        for s in by_kind.get("Service", [])
        if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
    ]
    (ep,) = sm["spec"]["endpoints"]
    relabel = next((r.get("replacement") for r in ep.get("relabelings") or [] if r.get("targetLabel") == "job"), None)
    operator = ScrapeJob(
        name=f"serviceMonitor/{sm['metadata']['namespace']}/{sm['metadata']['name']}/0",
        honor_labels=bool(ep.get("honorLabels", False)),
        metrics_path=ep.get("path", "/metrics"),
        relabel_job=relabel or svc["metadata"]["name"],
        target_labels={"service": svc["metadata"]["name"], "endpoint": ep["port"]},
    )
    (pep,) = pm["spec"]["podMetricsEndpoints"]
    serving = ScrapeJob(
        name=f"podMonitor/{pm['metadata']['namespace']}/{pm['metadata']['name']}/0",
        honor_labels=bool(pep.get("honorLabels", False)),
        metrics_path=pep.get("path", "/metrics"),
        relabel_job=f"{pm['metadata']['namespace']}/{pm['metadata']['name']}",
        target_labels={"endpoint": pep["port"]},
    )
    return MonitorJobs(operator, serving)


class PrometheusServer:
    """One ``prometheus`` process with its config, rules and TSDB under ``workdir``.

    ``interval`` is both the scrape and the rule evaluation interval: tests use a second, so an
    alert's state follows the processes within a few seconds of what the rule's ``for`` asks.
    """

    def __init__(
        self,
        workdir: Path,
        rule_groups: Sequence[Mapping[str, Any]],
        jobs: Sequence[ScrapeJob],
        interval: str = "1s",
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        found = binary or shutil.which("prometheus")
        if found is None:
            raise ProcessFailed("prometheus is not on PATH: install Debian's prometheus package (hack/packages.sh)")
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jobs = {j.name: j for j in jobs}
        self._targets: dict[str, dict[str, dict[str, str]]] = {j.name: {} for j in jobs}
        (self.workdir / "targets").mkdir(exist_ok=True)
        for name in self.jobs:
            self._write_targets(name)
        (self.workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": list(rule_groups)}, sort_keys=False))
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(self.workdir / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": j.name,
                    "honor_labels": j.honor_labels,
                    "metrics_path": j.metrics_path,
                    "file_sd_configs": [{"files": [str(self._targets_file(j.name))], "refresh_interval": interval}],
                    "relabel_configs": (
                        [{"target_label": "job", "replacement": j.relabel_job}] if j.relabel_job else []
                    ),
                }
                for j in jobs
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = ManagedProcess(
            "prometheus",
            [
                found,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            self.workdir / "prometheus.log",
        )

    def start(self) -> PrometheusServer:
        self.process.start()
        try:
            wait_for(
                lambda: bool(http_get(f"{self.url}/-/ready")), self.start_timeout, "Prometheus ready", self.process
            )
        except BaseException:
            self.process.stop()
            raise
        return self

    def stop(self) -> None:
        self.process.stop()

    def alive(self) -> bool:
        return self.process.alive()

    # targets

    def _targets_file(self, job: str) -> Path:
        return self.workdir / "targets" / f"{list(self.jobs).index(job)}.json"

    def _write_targets(self, job: str) -> None:
        groups = [{"targets": [address], "labels": labels} for address, labels in sorted(self._targets[job].items())]
        path = self._targets_file(job)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(path)  # file SD must never read a half-written file

    def add_target(self, job: str, address: str, **labels: str) -> None:
        """Scrape ``address`` (host:port) in ``job``, with the job's target labels and ``labels``."""
        self._targets[job][address] = {**self.jobs[job].target_labels, **labels}
        self._write_targets(job)

    def remove_target(self, job: str, address: str) -> None:
        self._targets[job].pop(address, None)
        self._write_targets(job)

    # the HTTP API

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a ``/api/v1`` answer (an error answer raises)."""
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")))
        if body.get("status") != "success":
            raise ConnectionError(f"Prometheus /api/v1/{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """The pending and firing alerts named ``name`` whose labels include ``labels``."""
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"].get("alertname") == name and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def alert_state(self, name: str, **labels: str) -> str | None:
        """``firing`` if any matching alert fires, else ``pending`` if one is pending, else None."""
        states = {a["state"] for a in self.alerts(name, **labels)}
        return "firing" if "firing" in states else "pending" if "pending" in states else None

    def rule(self, name: str) -> dict[str, Any]:
        """The alerting rule ``name`` as loaded (its query, duration, health, last evaluation)."""
        for group in self.api("rules", type="alert")["groups"]:
            for r in group["rules"]:
                if r["name"] == name:
                    found: dict[str, Any] = r
                    return found
        raise KeyError(f"Prometheus has no alerting rule {name}; log {self.process.log_path}")

    def wait_alert(self, name: str, state: str | None, timeout: float, what: str, **labels: str) -> None:
        """Polls ``/api/v1/alerts`` until the alert is in ``state`` (None: neither pending nor firing)."""
        wait_for(
            lambda: self.alert_state(name, **labels) == state,
            timeout,
            f"{name} {state or 'inactive'}: {what}",
            self.process,
        )

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class ChartPrometheus(PrometheusServer):
    """Prometheus as a cluster with the chart installed runs it: its rules, its monitors' scrape jobs.

    ``docs`` is the rendered chart with the PrometheusRule, the ServiceMonitor and the PodMonitor
    enabled. The operator's target gets the labels a pod behind the chart's Service would get (in
    the release namespace); a serving pod's those of a pod the PodMonitor selects.
    """

    def __init__(self, workdir: Path, docs: Sequence[Mapping[str, Any]], interval: str = "1s") -> None:
        self.monitors = monitor_jobs(docs)
        (rule,) = [d for d in docs if d.get("kind") == "PrometheusRule"]
        self.release_namespace: str = rule["metadata"]["namespace"]
        super().__init__(workdir, rule["spec"]["groups"], [self.monitors.operator, self.monitors.serving], interval)

    def scrape_operator(self, port: int, pod: str = "modelloop-operator-0") -> str:
        address = f"127.0.0.1:{port}"
        self.add_target(
            self.monitors.operator.name, address, namespace=self.release_namespace, pod=pod, container="operator"
        )
        return address

    def scrape_serving(self, port: int, namespace: str, pod: str) -> str:
        address = f"127.0.0.1:{port}"
        self.add_target(self.monitors.serving.name, address, namespace=namespace, pod=pod, container="server")
        return address

    def unscrape(self, address: str) -> None:
        for job in self.jobs:
            self.remove_target(job, address)
