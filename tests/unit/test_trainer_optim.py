"""The optimizer and learning-rate schedule from the policy's hyperparameters: a pure function of the epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from modelloop.api.retrainpolicy import Hyperparameters
from modelloop_trainer.optim import build_optimizer, learning_rate_at, set_learning_rate


def hp(**kw: Any) -> Hyperparameters:
    return Hyperparameters.model_validate({"learningRate": 0.1, "epochs": 5, **kw})


SCHEDULES: list[tuple[str, dict[str, Any], list[float]]] = [
    ("none is constant", {}, [0.1] * 5),
    ("step: gamma every stepEpochs", {"type": "step", "stepEpochs": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025]),
    ("step defaults: x0.1 every 10 epochs", {"type": "step"}, [0.1] * 5),
    ("cosine from learningRate to 0", {"type": "cosine"}, [0.1, 0.085355, 0.05, 0.014645, 0.0]),
    (
        "cosine down to minLearningRate",
        {"type": "cosine", "minLearningRate": 0.02},
        [0.1, 0.088284, 0.06, 0.031716, 0.02],
    ),
]


@pytest.mark.parametrize(("schedule", "expected"), [c[1:] for c in SCHEDULES], ids=[c[0] for c in SCHEDULES])
def test_learning_rate_per_epoch(schedule: dict[str, Any], expected: list[float]) -> None:
    h = hp(learningRateSchedule=schedule)
    assert [round(learning_rate_at(h, e), 6) for e in range(1, 6)] == pytest.approx(expected)


def test_a_retry_with_a_lower_rate_never_schedules_upwards() -> None:
    h = hp(learningRate=0.01, learningRateSchedule={"type": "cosine", "minLearningRate": 0.05})
    assert [learning_rate_at(h, e) for e in range(1, 6)] == pytest.approx([0.01] * 5)


@pytest.mark.parametrize(
    ("settings", "kind", "group"),
    [
        ({}, torch.optim.Adam, {"weight_decay": 0.0}),
        ({"optimizer": "adamw", "weightDecay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
        ({"optimizer": "sgd"}, torch.optim.SGD, {"momentum": 0.9}),
        (
            {"optimizer": "sgd", "momentum": 0.5, "weightDecay": 1e-4},
            torch.optim.SGD,
            {"momentum": 0.5, "weight_decay": 1e-4},
        ),
    ],
)
def test_optimizer_from_hyperparameters_takes_only_trainable_parameters(
    settings: dict[str, Any], kind: type[torch.optim.Optimizer], group: dict[str, float]
) -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    net[0].weight.requires_grad_(False)
    opt = build_optimizer(net.parameters(), hp(**settings))
    assert type(opt) is kind
    assert sum(len(g["params"]) for g in opt.param_groups) == 3
    assert {k: opt.param_groups[0][k] for k in group} == group
    set_learning_rate(opt, 0.003)
    assert opt.param_groups[0]["lr"] == 0.003


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weightDecay": -0.1}, "weightDecay"),
        ({"momentum": 1.0}, "momentum"),
        ({"learningRateSchedule": {"type": "linear"}}, "learningRateSchedule.type"),
        ({"learningRateSchedule": {"type": "step", "gamma": 1.5}}, "learningRateSchedule.gamma"),
        ({"imageSize": 16}, "imageSize"),
        ({"frozenLayers": 6}, "frozenLayers"),
    ],
)
def test_out_of_range_hyperparameters_are_refused_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        Hyperparameters.model_validate(bad)
    assert field in {".".join(str(p) for p in err["loc"]) for err in e.value.errors()}
