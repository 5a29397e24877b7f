"""The Grafana dashboard and the alert rules only query metrics that exist.

Metric names are read from the modules that define them (``modelloop/metrics.py`` for the operator,
``modelloop_server/metrics.py`` for the model server), so renaming a metric without updating the
dashboard or the alerts fails here instead of leaving an empty panel or a silent alert.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/modelloop/files/dashboard.json"
ALERTS = ROOT / "charts/modelloop/files/alerts.yaml"
METRIC_MODULES = [ROOT / "operator/modelloop/metrics.py", ROOT / "server-image/modelloop_server/metrics.py"]
# prometheus_client's suffixes per metric type: what Prometheus actually stores.
SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),  # the state gauges metrics.StateCollector derives from status
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
}
# Series Prometheus itself adds to every target.
SCRAPE_SERIES = {"up"}
METRIC_NAME = re.compile(r"\b(modelloop_[a-zA-Z0-9_]+)\b")


def defined_series() -> set[str]:
    series: set[str] = set()
    for module in METRIC_MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SUFFIXES):
                continue
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{module}:{node.lineno}: metric name must be a literal for this check to see it"
            )
            base = first.value.removesuffix("_total") if node.func.id == "Counter" else first.value
            series.update(base + suffix for suffix in SUFFIXES[node.func.id])
    return series


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_metric_modules_define_what_the_design_names() -> None:
    series = defined_series()
    for name in (
        "modelloop_trainings_started_total",
        "modelloop_trainings_failed_total",
        "modelloop_active_version_info",
        "modelloop_live_accuracy",
        "modelloop_server_requests_total",
        "modelloop_server_request_duration_seconds_bucket",
    ):
        assert name in series


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["uid"] == "modelloop" and isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in panels(d)}
    for wanted in ("Active versions", "Versions over time", "Live accuracy per version", "Feedback backlog"):
        assert wanted in titles
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", f"{p['title']}: datasource must be the variable"
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


def _dashboard_queries() -> list[tuple[str, str]]:
    d = dashboard()
    queries = [(p["title"], t["expr"]) for p in panels(d) if p["type"] != "row" for t in p["targets"]]
    queries += [(f"variable {v['name']}", v["definition"]) for v in d["templating"]["list"] if "definition" in v]
    return queries


def _alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


@pytest.mark.parametrize(("where", "expr"), _dashboard_queries() + _alert_queries())
def test_queries_use_only_defined_metrics(where: str, expr: str) -> None:
    used = set(METRIC_NAME.findall(expr))
    assert used or "up{" in expr, f"{where}: no modelloop metric in {expr!r}"
    unknown = used - defined_series() - SCRAPE_SERIES
    assert not unknown, (
        f"{where}: {sorted(unknown)} are not defined in {[str(m.relative_to(ROOT)) for m in METRIC_MODULES]}"
    )


ROLLOUT_STAGE_PANELS = {
    # title: metrics its queries must read (issue 16: every stage, tally and decision is on the dashboard)
    "Rollout stage": {"modelloop_rollout_stage"},
    "Stage decisions": {"modelloop_rollout_verdict_info"},
    "Shadow paired tally": {"modelloop_shadow_reviews"},
    "Live accuracy per version and stage": {
        "modelloop_shadow_live_accuracy",
        "modelloop_canary_live_accuracy",
        "modelloop_live_accuracy",
    },
    "Canary percent": {"modelloop_canary_percent", "modelloop_server_canary_percent"},
    "Stage decisions over time": {"modelloop_canary_decisions_total", "modelloop_rollbacks_total"},
}


def test_the_rollout_stages_have_their_panels() -> None:
    """The shadow and canary stages are shown from metrics that exist: the stage each version is in, the paired
    tally's cells, the canary's share (decided and per replica), each version's live accuracy, the decisions."""
    d = dashboard()
    by_title = {p["title"]: p for p in panels(d)}
    row = by_title["Rollout stages: shadow and canary"]
    assert row["type"] == "row"
    for title, metrics in ROLLOUT_STAGE_PANELS.items():
        p = by_title[title]
        assert p["gridPos"]["y"] > row["gridPos"]["y"], f"{title} is not under the rollout stages row"
        used = {m for t in p["targets"] for m in METRIC_NAME.findall(t["expr"])}
        assert metrics <= used, f"{title}: {sorted(metrics - used)} not queried"
        assert used <= defined_series(), f"{title}: {sorted(used - defined_series())} not defined"
    tally = " ".join(t.get("legendFormat", "") for t in by_title["Shadow paired tally"]["targets"])
    assert "{{cell}}" in tally, "the tally must be split by cell (b and c are what the test decides on)"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dashboard()):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]} at {(x, y)}"
                cells[(x, y)] = p["title"]
