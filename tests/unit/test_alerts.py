"""The shipped alert rules: promtool accepts them, every alert fires and stays silent when it should,
and every alert tells the on-call person what to do (severity, summary, description, a runbook
paragraph that exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts/modelloop/files/alerts.yaml"
RECORDING = ROOT / "charts/modelloop/files/recording-rules.yaml"
PROMTOOL_TESTS = sorted((ROOT / "tests/promtool").glob("*_test.yaml"))
RUNBOOKS = ROOT / "docs/runbooks.md"
RUNBOOK_PREFIX = "https://github.com/modelloop/modelloop/blob/main/docs/runbooks.md#"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install it (`make tools` does, Debian package prometheus)")
    return path


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS), str(RECORDING)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_recording_rule_is_tested() -> None:
    records = {r["record"] for g in yaml.safe_load(RECORDING.read_text())["groups"] for r in g["rules"]}
    tested = {
        case["expr"]
        for path in PROMTOOL_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
    }
    assert records <= tested, f"no promql_expr_test for {sorted(records - tested)}"


def test_promtool_unit_tests() -> None:
    assert PROMTOOL_TESTS, "no promtool tests found under tests/promtool"
    result = subprocess.run(
        [_promtool(), "test", "rules", *(p.name for p in PROMTOOL_TESTS)],
        cwd=ROOT / "tests/promtool",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _promtool_cases() -> dict[str, tuple[int, int]]:
    """alertname -> (firing cases, silent cases) over all promtool tests."""
    cases: dict[str, tuple[int, int]] = {}
    for path in PROMTOOL_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                firing, silent = cases.get(case["alertname"], (0, 0))
                # A firing case that lists fewer alerts than there are input series also proves silence.
                if case.get("exp_alerts"):
                    firing += 1
                    if len(case["exp_alerts"]) < len(test["input_series"]):
                        silent += 1
                else:
                    silent += 1
                cases[case["alertname"]] = (firing, silent)
    return cases


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_every_alert_is_tested_firing_and_silent(rule: dict[str, Any]) -> None:
    firing, silent = _promtool_cases().get(rule["alert"], (0, 0))
    assert firing >= 1, f"{rule['alert']}: no promtool case where it fires"
    assert silent >= 1, f"{rule['alert']}: no promtool case where it must stay silent"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_every_alert_is_actionable(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_PREFIX), url
    anchor = url.removeprefix(RUNBOOK_PREFIX)
    assert anchor == rule["alert"].lower(), f"runbook anchor {anchor!r} should be the alert name, lower-cased"
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }
    assert anchor in headings, f"docs/runbooks.md has no heading for {rule['alert']}"


def _runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    name = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            name = line.removeprefix("## ").strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_severity_is_the_runbooks(rule: dict[str, Any]) -> None:
    """Each runbook section states the severity; critical (a page) only where answers fail or are wrong."""
    section = _runbook_sections()[rule["alert"]]
    stated = re.search(r"\*\*Severity: (\w+)\.\*\*", section)
    assert stated, f"docs/runbooks.md#{rule['alert'].lower()} does not state a severity"
    assert stated.group(1) == rule["labels"]["severity"], f"{rule['alert']}: runbook says {stated.group(1)}"
    paging = {"ModelloopServingErrorRateHigh", "ModelloopLiveAccuracyLow"}
    assert (rule["labels"]["severity"] == "critical") == (rule["alert"] in paging), rule["alert"]
