"""CEL validation rules attached to the pydantic models, so the models stay the one source of truth.

``crdgen`` copies them into the CRDs as ``x-kubernetes-validations``: the API server then rejects a
bad object at ``kubectl apply`` time, with the field named, instead of the operator failing later.
Rules touching strings, lists or maps need ``max_length`` on them, or the API server refuses the
CRD for exceeding its CEL cost budget.
"""

from __future__ import annotations

from pydantic import JsonValue

VALIDATIONS_KEY = "x-kubernetes-validations"


def rule(
    expression: str,
    *,
    message: str | None = None,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
    optional_old_self: bool = False,
) -> dict[str, JsonValue]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` names the field the error points at."""
    if message is None and message_expression is None:
        raise ValueError(f"CEL rule {expression!r} needs a message: users see it when the rule rejects their object")
    entry: dict[str, JsonValue] = {"rule": expression}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    if optional_old_self:
        entry["optionalOldSelf"] = True
    return entry


def validations(*rules: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The ``json_schema_extra`` carrying ``rules``."""
    return {VALIDATIONS_KEY: list(rules)}


def immutable(what: str) -> dict[str, JsonValue]:
    """A transition rule: the field may be set at creation and never changed after."""
    return validations(rule("self == oldSelf", message=f"{what} is immutable", reason="FieldValueForbidden"))
