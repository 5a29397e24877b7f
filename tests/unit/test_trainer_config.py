"""The trainer's environment contract: what the operator sets is parsed, what is wrong is named."""

from __future__ import annotations

import json

import pytest

from modelloop.api import constants as c
from modelloop_trainer.config import ConfigError, from_env
from modelloop_trainer.runtime import cpu_quota

BASE = {c.ENV_MODEL: "digits", c.ENV_VERSION: "v3", c.ENV_DATASET: "datasets/digits/"}


def test_defaults_when_only_the_required_variables_are_set() -> None:
    cfg = from_env(BASE, "train")
    assert (cfg.model, cfg.version, cfg.dataset) == ("digits", "v3", "datasets/digits")
    assert cfg.parent_version is None and cfg.active_version is None and cfg.feedback_through is None
    assert cfg.plugin == c.DEFAULT_PLUGIN
    assert cfg.hyperparameters.epochs == 20 and cfg.hyperparameters.early_stopping_patience == 5


def test_camel_case_hyperparameters_and_optional_versions() -> None:
    hp = {"epochs": 7, "batchSize": 32, "learningRate": 0.01, "earlyStoppingPatience": 2, "checkpointInterval": 3}
    env = {
        **BASE,
        c.ENV_HYPERPARAMETERS: json.dumps({**hp, "seed": 9, "validationFraction": 0.25, "augment": False}),
        c.ENV_PARENT_VERSION: "v2",
        c.ENV_ACTIVE_VERSION: "v1",
        c.ENV_FEEDBACK_THROUGH: "20260101T000000.000000Z-abcd.jsonl",
    }
    cfg = from_env(env, "train")
    h = cfg.hyperparameters
    assert (h.epochs, h.batch_size, h.learning_rate, h.early_stopping_patience, h.checkpoint_interval) == (
        7,
        32,
        0.01,
        2,
        3,
    )
    assert (h.seed, h.validation_fraction, h.augment) == (9, 0.25, False)
    assert (cfg.parent_version, cfg.active_version) == ("v2", "v1")
    # A bare batch name is completed to the model's feedback prefix, so it compares with listed keys.
    assert cfg.feedback_through == "digits/feedback/20260101T000000.000000Z-abcd.jsonl"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({c.ENV_MODEL: ""}, "MODELLOOP_MODEL"),
        ({c.ENV_MODEL: "Digits_Model"}, "MODELLOOP_MODEL"),
        ({c.ENV_VERSION: "3"}, "MODELLOOP_VERSION"),
        ({c.ENV_PARENT_VERSION: "latest"}, "MODELLOOP_PARENT_VERSION"),
        ({c.ENV_PARENT_VERSION: "v3"}, "cannot be its own parent"),
        ({c.ENV_DATASET: "../other-team"}, "MODELLOOP_DATASET"),
        ({c.ENV_HYPERPARAMETERS: "{epochs: 3}"}, "MODELLOOP_HYPERPARAMETERS is not valid JSON"),
        ({c.ENV_HYPERPARAMETERS: "[1, 2]"}, "must be a JSON object"),
        ({c.ENV_HYPERPARAMETERS: '{"epochs": 0}'}, "MODELLOOP_HYPERPARAMETERS: epochs"),
        ({c.ENV_HYPERPARAMETERS: '{"epoch": 3}'}, "epoch: Extra inputs are not permitted"),
        ({c.ENV_HYPERPARAMETERS: '{"validationFraction": 1.5}'}, "validationFraction"),
        ({c.ENV_GATES: '{"maxLatencyP95Ms": -1}'}, "MODELLOOP_GATES: maxLatencyP95Ms"),
    ],
)
def test_bad_environment_is_named(override: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_env({**BASE, **override}, "train")


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        (None, 8, 8),
        ("max 100000", 8, 8),
        ("200000 100000", 64, 2),
        ("150000 100000", 64, 2),  # 1.5 CPUs: two threads, the quota throttles the rest
        ("50000 100000", 64, 1),
        ("800000 100000", 4, 4),  # never more threads than CPUs we may run on
    ],
)
def test_cpu_threads_follow_the_containers_quota(cpu_max: str | None, affinity: int, expected: int) -> None:
    assert cpu_quota(cpu_max, affinity) == expected
