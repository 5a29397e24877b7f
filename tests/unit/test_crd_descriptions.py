"""Every field of both CRDs says what it is: ``kubectl explain rp.status.rollout.startedAt`` (or any
other path) prints a description, never an empty line. Walks the committed, generated CRD YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop.api.modelversion import VersionMetrics

CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))


def blank_descriptions(node: dict[str, Any], path: str) -> list[str]:
    """Paths of named fields (object properties, at any depth, inside lists and maps too) without a description.

    An array's items and a map's values are not fields of their own: ``kubectl explain`` shows the
    description of the array or map for them.
    """
    blank = [] if str(node.get("description", "")).strip() else [path]
    for name, sub in node.get("properties", {}).items():
        blank += blank_descriptions(sub, f"{path}.{name}")
    for inner, suffix in ((node.get("items"), "[]"), (node.get("additionalProperties"), "[*]")):
        if isinstance(inner, dict):
            for name, sub in inner.get("properties", {}).items():
                blank += blank_descriptions(sub, f"{path}{suffix}.{name}")
    return blank


@pytest.mark.parametrize("path", CRDS, ids=[p.name for p in CRDS])
def test_every_field_has_a_description(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    fields = len(blank_descriptions(schema, "x")) + sum(1 for _ in _fields(schema))
    assert fields > 50, "the walk found too few fields: is it still reading the schema?"
    # The API server refuses a description on the root metadata (only name/generateName rules are
    # allowed there) and documents it as ObjectMeta itself.
    blank = [p for p in blank_descriptions(schema, "root") if p != "root.metadata"]
    assert len(blank) == 0, f"{len(blank)} fields without a description: {blank}"
    for column in version["additionalPrinterColumns"]:
        assert column["description"].strip(), column["name"]


def _fields(node: dict[str, Any]) -> Any:
    for sub in node.get("properties", {}).values():
        yield sub
        yield from _fields(sub)
    for inner in (node.get("items"), node.get("additionalProperties")):
        if isinstance(inner, dict):
            yield from _fields(inner)


def test_the_walk_finds_a_blank_description() -> None:
    schema = {"description": "root", "properties": {"a": {"description": "x"}, "b": {"type": "string"}}}
    schema["properties"]["a"]["items"] = {"properties": {"c": {"type": "string", "description": " "}}}
    assert sorted(blank_descriptions(schema, "K")) == ["K.a[].c", "K.b"]


@pytest.mark.parametrize(
    ("accuracy", "shown"), [(0.9108635097493036, "0.911"), (1.0, "1.000"), (0.0, "0.000"), (None, "")]
)
def test_accuracy_summary_is_derived_on_every_write(accuracy: float | None, shown: str) -> None:
    metrics = VersionMetrics(holdoutAccuracy=accuracy, summary="stale")
    assert metrics.model_dump(by_alias=True, mode="json")["summary"] == shown
    assert VersionMetrics.model_validate(metrics.model_dump(by_alias=True, mode="json")) == metrics
    assert metrics.summary == shown
    # The operator's handler sets holdoutAccuracy in place on a status it read: the write still shows it.
    later = VersionMetrics()
    later.holdout_accuracy = accuracy
    assert later.model_dump(by_alias=True, mode="json")["summary"] == shown
