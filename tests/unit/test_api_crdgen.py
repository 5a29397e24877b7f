"""The pydantic → structural OpenAPI translation, and the CRDs it produces (no API server needed)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ConfigDict, Field, ValidationError

from modelloop.api import crdgen
from modelloop.api.cel import VALIDATIONS_KEY, rule, validations
from modelloop.api.common import ApiModel, Condition
from modelloop.api.crdgen import KINDS, SchemaError, crd, model_schema, render, structural
from modelloop.api.modelversion import ModelVersionSpec, ModelVersionStatus
from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus

RP, MV = KINDS


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``properties`` and ``items`` followed)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")


def openapi(kind: crdgen.Kind) -> dict[str, Any]:
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for name in dotted.split("."):
        node = node["properties"][name]
    return node


def apply_defaults(obj: Any, node: dict[str, Any]) -> Any:
    """The API server's structural defaulting (apiextensions-apiserver ``structuraldefaulting.Default``)."""
    if isinstance(obj, dict):
        for name, prop in node.get("properties", {}).items():
            if "default" in prop and (name not in obj or (obj[name] is None and not prop.get("nullable"))):
                obj[name] = copy.deepcopy(prop["default"])
        for name, value in obj.items():
            if name in node.get("properties", {}):
                apply_defaults(value, node["properties"][name])
    elif isinstance(obj, list) and "items" in node:
        for item in obj:
            apply_defaults(item, node["items"])
    return obj


MINIMAL_RP = {
    "model": "digits",
    "storage": {"endpoint": "minio:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
    "dataset": {"path": "datasets/digits"},
    "training": {"image": "trainer:1", "tolerations": [{"key": "gpu", "operator": "Exists"}]},
}
MINIMAL_MV = {"model": "digits", "version": "v2", "policy": "digits", "parentVersion": "v1"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: crdgen.Kind) -> None:
    """No keyword the API server refuses in a structural schema, and every node says its type."""
    for path, node in walk(openapi(kind)):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"} & node.keys(), path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        assert node.get("default", 0) is not None, f"{path}: null default"


@pytest.mark.parametrize(
    ("model", "minimal", "kind"),
    [(RetrainPolicySpec, MINIMAL_RP, RP), (ModelVersionSpec, MINIMAL_MV, MV)],
    ids=["RetrainPolicy", "ModelVersion"],
)
def test_server_defaults_equal_model_defaults(
    model: type[ApiModel], minimal: dict[str, Any], kind: crdgen.Kind
) -> None:
    """What the API server stores for a minimal spec is what the operator would assume for it."""
    spec_schema = at(openapi(kind), "spec")
    server_side = apply_defaults(copy.deepcopy(minimal), spec_schema)
    assert server_side != minimal, "the schema applies no defaults at all"
    assert model.model_validate(server_side) == model.model_validate(minimal)
    dumped = model.model_validate(minimal).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert prune(server_side) == prune(dumped), "a model default the API server does not apply (or the reverse)"


def prune(value: Any) -> Any:
    """Drop empty maps and lists: absent and empty mean the same to the models."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def test_optional_becomes_nullable_without_null_default() -> None:
    urgent = at(openapi(RP), "spec.triggers.feedback.urgentSamples")
    assert urgent == {
        "description": urgent["description"],
        "maximum": 10_000_000,
        "minimum": 1,
        "nullable": True,
        "type": "integer",
    }


def test_exclusive_bounds_use_the_openapi_v3_0_boolean_form() -> None:
    rate = at(openapi(RP), "spec.training.hyperparameters.learningRate")
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)
    fraction = at(openapi(RP), "spec.training.hyperparameters.validationFraction")
    assert (fraction["minimum"], fraction["exclusiveMinimum"], fraction["maximum"], fraction["exclusiveMaximum"]) == (
        0,
        True,
        1,
        True,
    )


def test_free_form_maps_preserve_unknown_fields_and_string_maps_stay_typed() -> None:
    assert at(openapi(MV), "spec.trainingParameters")["x-kubernetes-preserve-unknown-fields"] is True
    for kind in KINDS:
        kopf = at(openapi(kind), "status.kopf")
        assert kopf["x-kubernetes-preserve-unknown-fields"] is True
        assert kopf["type"] == "object"
    selector = at(openapi(RP), "spec.training.nodeSelector")
    assert selector["additionalProperties"] == {"maxLength": 63, "type": "string"}
    assert "x-kubernetes-preserve-unknown-fields" not in selector
    per_class = at(openapi(MV), "status.metrics.perClassAccuracy")
    assert per_class["additionalProperties"] == {"type": "number"}


def test_datetimes_enums_and_list_maps() -> None:
    assert at(openapi(RP), "status.rollout.startedAt") == {
        "format": "date-time",
        "nullable": True,
        "type": "string",
        "description": "When the serving pods were told to load the desired version.",
    }
    phase = at(openapi(MV), "status.phase")
    assert phase["enum"] == [
        "Pending",
        "Training",
        "Verifying",
        "Verified",
        "Rejected",
        "Promoting",
        "Active",
        "Superseded",
        "RolledBack",
        "Failed",
    ]
    assert phase["default"] == "Pending"
    for kind in KINDS:
        conditions = at(openapi(kind), "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert conditions["items"]["required"] == ["type", "status", "reason", "lastTransitionTime"]


def test_nested_models_default_to_empty_objects_so_their_own_defaults_apply() -> None:
    assert at(openapi(RP), "spec.triggers")["default"] == {}
    assert at(openapi(RP), "spec.training.command")["default"] == ["modelloop-trainer"]
    assert "default" not in at(openapi(RP), "spec.training.args"), "an empty list default is noise"


def test_cel_rules_are_carried_with_their_field_paths() -> None:
    rules = at(openapi(RP), "spec.triggers.feedback")["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in rules] == [".urgentSamples"]
    assert "urgentSamples" in rules[0]["rule"]
    spec_rules = at(openapi(MV), "spec")["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "reason": "FieldValueForbidden"}.items() <= spec_rules[0].items()


class _Inner(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(rule("self.a > 0", message="model rule")))
    a: int = 1


class _Outer(ApiModel):
    """Doc of outer."""

    inner: _Inner | None = Field(default=None, json_schema_extra=validations(rule("self.a < 9", message="field rule")))
    when: datetime | None = None
    note: str = Field(default="x", title="Ignored", max_length=8)


def test_optional_model_keeps_model_and_field_rules_in_order() -> None:
    schema = model_schema(_Outer, "validation")
    inner = schema["properties"]["inner"]
    assert inner["nullable"] is True
    assert [r["message"] for r in inner["x-kubernetes-validations"]] == ["model rule", "field rule"]
    assert inner["properties"]["a"] == {"default": 1, "type": "integer"}
    assert schema["properties"]["note"] == {"default": "x", "maxLength": 8, "type": "string"}
    assert schema["description"] == "Doc of outer."


@pytest.mark.parametrize(
    ("node", "complaint"),
    [
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "only Optional"),
        ({"type": "integer", "exclusiveMinimum": True}, "boolean exclusiveMinimum"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}, "extra fields"),
        ({"type": "array", "prefixItems": [{"type": "string"}]}, "'prefixItems'"),
        ({"$ref": "#/$defs/Missing"}, "unresolvable"),
        ({"type": "object", "additionalProperties": False}, "must allow some values"),
        ({"description": "typed as Any"}, "no type"),
    ],
)
def test_unsupported_schemas_are_refused_by_name(node: dict[str, Any], complaint: str) -> None:
    with pytest.raises(SchemaError, match=complaint):
        structural({"type": "object", "properties": {"field": node}}, {})


def test_unknown_formats_are_dropped_known_ones_kept() -> None:
    assert structural({"type": "string", "format": "uri"}, {}) == {"type": "string"}
    assert structural({"type": "string", "format": "date-time"}, {}) == {"type": "string", "format": "date-time"}


def test_rule_needs_a_message() -> None:
    with pytest.raises(ValueError, match="needs a message"):
        rule("self > 0")


def test_status_without_kopf_field_is_refused() -> None:
    broken = crdgen.Kind("Broken", "brokens", "broken", "br", "d", _Outer, _Outer, ())
    with pytest.raises(SchemaError, match="kopf"):
        crd(broken)


def test_crd_metadata_names_and_subresources() -> None:
    for kind, short in ((RP, "rp"), (MV, "mv")):
        doc = crd(kind)
        assert doc["metadata"]["name"] == f"{kind.plural}.modelloop.dev"
        assert doc["metadata"]["labels"] == {
            "app.kubernetes.io/part-of": "modelloop",
            "app.kubernetes.io/component": "crd",
        }
        names = doc["spec"]["names"]
        assert (names["shortNames"], names["categories"], doc["spec"]["scope"]) == (
            [short],
            ["modelloop"],
            "Namespaced",
        )
        (version,) = doc["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert version["schema"]["openAPIV3Schema"]["required"] == ["spec"]


def columns(kind: crdgen.Kind) -> list[tuple[str, str, int]]:
    return [
        (c["name"].upper(), c["jsonPath"], c.get("priority", 0))
        for c in crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    ]


def test_printer_columns() -> None:
    main_rp = [(n, p) for n, p, prio in columns(RP) if prio == 0]
    assert main_rp == [
        ("MODEL", ".spec.model"),
        ("ACTIVE", ".status.activeVersion"),
        ("DESIRED", ".status.desired.version"),
        ("ROLLOUT", ".status.rollout.summary"),
        ("PENDING-FEEDBACK", ".status.feedback.pendingCorrections"),
        ("READY", '.status.conditions[?(@.type=="Ready")].status'),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    main_mv = [(n, p) for n, p, prio in columns(MV) if prio == 0]
    assert main_mv == [
        ("MODEL", ".spec.model"),
        ("VERSION", ".spec.version"),
        ("PHASE", ".status.phase"),
        ("PROGRESS", ".status.progress.summary"),
        ("ACCURACY", ".status.metrics.summary"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    assert all(prio in (0, 1) for kind in KINDS for *_, prio in columns(kind))


def test_every_printer_column_points_at_a_field_of_the_schema() -> None:
    for kind in KINDS:
        schema = openapi(kind)
        schema["properties"]["metadata"]["properties"] = {"creationTimestamp": {"type": "string"}}
        for name, path, _ in columns(kind):
            dotted = path.lstrip(".").split("[", 1)[0]
            assert at(schema, dotted), f"{kind.kind} column {name}: {path}"


def test_rendering_is_deterministic_and_round_trips() -> None:
    for kind in KINDS:
        text = render(kind)
        assert text.startswith("# generated by make crds; do not edit\n")
        assert text == render(kind)
        assert yaml.safe_load(text) == crd(kind)


def test_model_schema_is_independent_of_mode_for_status_round_trip() -> None:
    """Status is written with ``model_dump``: every field it writes must exist in the schema."""
    for model, kind in ((RetrainPolicyStatus, RP), (ModelVersionStatus, MV)):
        dumped = model().model_dump(by_alias=True, mode="json")
        assert set(dumped) <= set(at(openapi(kind), "status")["properties"])


def schema(kind_index: int) -> dict[str, Any]:
    root: dict[str, Any] = crd(KINDS[kind_index])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


@pytest.mark.parametrize("index", [0, 1], ids=[k.kind for k in KINDS])
def test_every_spec_field_says_what_it_does(index: int) -> None:
    """What users write is documented: `kubectl explain` and docs/api.md show these descriptions."""
    undocumented = [
        path
        for path, node in walk(schema(index)["properties"]["spec"], "spec")
        if not node.get("description") and not path.endswith(("[]", "[*]"))
    ]
    assert undocumented == []


@pytest.mark.parametrize("index", [0, 1], ids=[k.kind for k in KINDS])
def test_cel_rules_have_messages_and_point_at_real_fields(index: int) -> None:
    rules = 0
    for path, node in walk(schema(index)):
        for entry in node.get(VALIDATIONS_KEY, []):
            rules += 1
            assert entry.get("message") or entry.get("messageExpression"), f"{path}: {entry['rule']}"
            if "fieldPath" in entry:
                field = entry["fieldPath"].removeprefix(".")
                assert field in node.get("properties", {}), f"{path}: fieldPath {entry['fieldPath']} names no field"
    assert rules >= 2


def test_transition_rules_sit_on_fields_that_are_always_present() -> None:
    """``oldSelf`` rules on an optional field would not run when the field is removed: keep them on required ones."""
    for index in (0, 1):
        for path, node in walk(schema(index)):
            for entry in node.get(VALIDATIONS_KEY, []):
                if "oldSelf" in entry["rule"]:
                    parent, _, name = path.rpartition(".")
                    parent_node = dict(walk(schema(index))).get(parent, {})
                    assert name in parent_node.get("required", []), f"{path}: transition rule on an optional field"


def test_minimal_specs_are_valid_and_typos_are_not() -> None:
    assert RetrainPolicySpec.model_validate(MINIMAL_RP).triggers.feedback.min_samples == 100
    assert ModelVersionSpec.model_validate(MINIMAL_MV).parent_version == "v1"
    with pytest.raises(ValidationError, match="triger"):
        RetrainPolicySpec.model_validate(MINIMAL_RP | {"triger": {}})


def test_condition_needs_a_reason() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    Condition(type="RolloutComplete", status="True", reason="AllReplicasServing", last_transition_time=now)
    with pytest.raises(ValidationError, match="reason"):
        Condition(type="Ready", status="True", reason="", last_transition_time=now)
