"""The trainer's configuration, read once from the environment the operator sets (docs/contracts.md).

Pure parsing: every problem is reported with the variable's name, so a bad policy shows up in the
Job's termination message as e.g. "MODELLOOP_HYPERPARAMETERS: epochs: ...", not as a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelloop.api import constants as c
from modelloop.api.artifacts import check_model_name, check_version, feedback_prefix
from modelloop.api.retrainpolicy import BUCKET_PATH, GateSpec, Hyperparameters


class ConfigError(ValueError):
    """The environment does not describe a runnable job; the message names the variable."""


@dataclass(frozen=True)
class JobConfig:
    model: str
    version: str
    parent_version: str | None
    active_version: str | None
    dataset: str
    plugin: str
    hyperparameters: Hyperparameters
    feedback_through: str | None
    gates: GateSpec


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _pydantic_message(name: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{name}: " + "; ".join(parts)


def _optional_version(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return check_version(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from e


def parse_hyperparameters(raw: dict[str, Any]) -> Hyperparameters:
    try:
        return Hyperparameters.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_pydantic_message(c.ENV_HYPERPARAMETERS, e)) from e


def from_env(env: Mapping[str, str], verb: str) -> JobConfig:
    """Read the job's settings; ``verb`` is "train" or "verify" (verify needs no dataset split for training)."""
    missing = [n for n in (c.ENV_MODEL, c.ENV_VERSION, c.ENV_DATASET) if not env.get(n, "").strip()]
    if missing:
        raise ConfigError(f"{verb} needs {', '.join(missing)} set (the operator sets them on the Job)")
    try:
        model = check_model_name(env[c.ENV_MODEL].strip())
    except ValueError as e:
        raise ConfigError(f"{c.ENV_MODEL}: {e}") from e
    version = _optional_version(env, c.ENV_VERSION)
    assert version is not None
    dataset = env[c.ENV_DATASET].strip().rstrip("/")
    if not re.match(BUCKET_PATH, dataset):
        raise ConfigError(f"{c.ENV_DATASET}: {dataset!r} is not a relative path inside the bucket")
    parent = _optional_version(env, c.ENV_PARENT_VERSION)
    if parent == version:
        raise ConfigError(
            f"{c.ENV_PARENT_VERSION} equals {c.ENV_VERSION} ({version}); a version cannot be its own parent"
        )
    through = env.get(c.ENV_FEEDBACK_THROUGH, "").strip() or None
    if through is not None and not through.startswith(feedback_prefix(model)):
        through = feedback_prefix(model) + through
    try:
        gates = GateSpec.model_validate(_json_object(env, c.ENV_GATES))
    except ValidationError as e:
        raise ConfigError(_pydantic_message(c.ENV_GATES, e)) from e
    return JobConfig(
        model=model,
        version=version,
        parent_version=parent,
        active_version=_optional_version(env, c.ENV_ACTIVE_VERSION),
        dataset=dataset,
        plugin=env.get(c.ENV_PLUGIN, "").strip() or c.DEFAULT_PLUGIN,
        hyperparameters=parse_hyperparameters(_json_object(env, c.ENV_HYPERPARAMETERS)),
        feedback_through=through,
        gates=gates,
    )
