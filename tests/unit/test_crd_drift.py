"""The committed CRDs (and the chart's copy) are exactly what the pydantic models generate.

Reads the repository's YAML files but starts nothing: the models are the source of truth, and a
model change without ``make crds`` would ship an API server schema that disagrees with the operator.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelloop.api import crdgen

REPO = Path(__file__).resolve().parents[2]
DIRECTORIES = [REPO / "crds", REPO / "charts" / "modelloop" / "crds"]


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: str(d.relative_to(REPO)))
def test_committed_crds_match_the_models(directory: Path) -> None:
    diffs = crdgen.drift(directory)
    assert not diffs, "CRDs differ from the models; run `make crds`:\n" + "".join(diffs)


def test_api_reference_matches_the_models() -> None:
    diffs = crdgen.docs_drift(REPO / "docs" / "api.md")
    assert not diffs, "docs/api.md differs from the models; run `make crds`:\n" + "".join(diffs)


def test_check_mode_fails_with_a_diff_then_passes_after_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, chart = tmp_path / "crds", tmp_path / "chart"
    docs = ["--docs", str(tmp_path / "api.md")]
    assert crdgen.main(["--out", str(out), "--chart", str(chart), *docs, "--check"]) == 1
    assert crdgen.main(["--out", str(out), "--chart", str(chart), *docs]) == 0
    assert (tmp_path / "api.md").read_text().startswith("# modelloop API")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in chart.iterdir()) == sorted(crdgen.rendered())
    assert crdgen.main(["--out", str(out), "--chart", str(chart), *docs, "--check"]) == 0

    edited = out / "modelloop.dev_retrainpolicies.yaml"
    edited.write_text(edited.read_text().replace("minSamples", "minSample"))
    (chart / "modelloop.dev_oldkinds.yaml").write_text("# stale\n")
    capsys.readouterr()
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 1
    report = capsys.readouterr()
    assert re.search(r"^- +minSample:$", report.out, re.MULTILINE)
    assert re.search(r"^\+ +minSamples:$", report.out, re.MULTILINE)
    assert "modelloop.dev_oldkinds.yaml: no model generates this file" in report.out
    assert "run `make crds`" in report.err
