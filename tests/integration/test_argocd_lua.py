"""The health checks and resource actions of docs/argocd.md, run by Argo CD's own Lua VM.

tests/unit/test_argocd_health.py runs every case in the reference Lua 5.1; this runs the same
cases (the ``health_test.yaml`` and ``action_test.yaml`` beside the scripts, laid out as argo-cd's
``resource_customizations`` expects) through ``argocd admin settings resource-overrides`` of the
Argo CD that hack/argocd.sh builds: gopher-lua with Argo CD's own libraries and its conversion of
objects to and from Lua, with ``argocd-cm`` taken from docs/argocd.md as written. A script that
works in Lua 5.1 but not in gopher-lua, or a ConfigMap on the page that Argo CD cannot parse,
fails here. The cluster tier (tests/cluster/test_install.py) then watches Argo CD's controller
use the health checks on a live policy.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop_dev.argocd import doc_yaml, locate_argocd

ROOT = Path(__file__).resolve().parents[2]
GROUP = ROOT / "charts/modelloop/files/resource_customizations/modelloop.dev"
POLICY = GROUP / "RetrainPolicy"
RETRAIN_NOW = "modelloop.dev/retrain-now"


@pytest.fixture(scope="module")
def argocd() -> Path:
    return locate_argocd(ROOT) / "bin" / "argocd"


@pytest.fixture(scope="module")
def argocd_cm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("argocd-cm") / "argocd-cm.yaml"
    path.write_text(yaml.safe_dump(doc_yaml(ROOT / "docs" / "argocd.md", "name: argocd-cm")))
    return path


def overrides(argocd: Path, cm: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(argocd), "admin", "settings", "resource-overrides", *args, "--argocd-cm-path", str(cm)],
        env={**os.environ, "ARGOCD_BINARY_NAME": "argocd", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"argocd admin settings resource-overrides {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def health_cases() -> list[Any]:
    return [
        pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}")
        for kind in ("RetrainPolicy", "ModelVersion")
        for case in yaml.safe_load((GROUP / kind / "health_test.yaml").read_text())["tests"]
    ]


@pytest.mark.parametrize(("kind", "case"), health_cases())
def test_argo_cd_judges_health_as_the_test_file_says(argocd: Path, argocd_cm: Path, kind: str, case: Any) -> None:
    out = overrides(argocd, argocd_cm, "health", str(GROUP / kind / case["inputPath"]))
    found = dict(re.findall(r"^(STATUS|MESSAGE): (.*)$", out, flags=re.M))
    assert found == {"STATUS": case["healthStatus"]["status"], "MESSAGE": case["healthStatus"]["message"]}, out


ACTIONS = yaml.safe_load((POLICY / "actions" / "action_test.yaml").read_text())


@pytest.mark.parametrize("case", ACTIONS["discoveryTests"], ids=lambda c: Path(c["inputPath"]).stem)
def test_argo_cd_offers_the_actions_the_test_file_says(argocd: Path, argocd_cm: Path, case: Any) -> None:
    out = overrides(argocd, argocd_cm, "list-actions", str(POLICY / "actions" / case["inputPath"]))
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert sorted((name, disabled == "true") for name, disabled in rows) == sorted(
        (a["name"], a["disabled"]) for a in case["result"]
    ), out


@pytest.mark.parametrize("case", ACTIONS["actionTests"], ids=lambda c: f"{c['action']}-{Path(c['inputPath']).stem}")
def test_argo_cd_runs_each_action_to_the_expected_object(
    argocd: Path, argocd_cm: Path, tmp_path: Path, case: Any
) -> None:
    """The object Argo CD would patch the policy to, captured through the diff program it runs, equals
    the expected output file; retrain-now's timestamp is Argo CD's clock, so it is checked for being now."""
    result = tmp_path / "result.yaml"
    before = datetime.now(UTC).replace(microsecond=0)
    overrides(
        argocd,
        argocd_cm,
        "run-action",
        str(POLICY / "actions" / case["inputPath"]),
        case["action"],
        env={"KUBECTL_EXTERNAL_DIFF": f"sh -c 'cat \"$2\" > {result}' sh"},
    )
    got = yaml.safe_load(result.read_text())
    expected = yaml.safe_load((POLICY / "actions" / case["expectedOutputPath"]).read_text())
    if case["action"] == "retrain-now":
        stamp = got["metadata"]["annotations"][RETRAIN_NOW]
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= at <= datetime.now(UTC) + timedelta(seconds=1), stamp
        got["metadata"]["annotations"][RETRAIN_NOW] = expected["metadata"]["annotations"][RETRAIN_NOW]
    assert got == expected
