"""The optimizer and learning-rate schedule that ``spec.training.hyperparameters`` asks for.

The learning rate of an epoch is a pure function of (hyperparameters, epoch), set before each
epoch, rather than a torch scheduler with its own state: a run resumed from a checkpoint, or
retried on another node, continues with exactly the rate it would have had, and nothing more has
to be saved in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from modelloop.api.retrainpolicy import Hyperparameters

DEFAULT_MOMENTUM = 0.9
DEFAULT_STEP_EPOCHS = 10
DEFAULT_GAMMA = 0.1


def build_optimizer(params: Iterable[nn.Parameter], hp: Hyperparameters) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]
    if hp.optimizer == "sgd":
        momentum = DEFAULT_MOMENTUM if hp.momentum is None else hp.momentum
        return torch.optim.SGD(trainable, lr=hp.learning_rate, momentum=momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    return torch.optim.Adam(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)


def learning_rate_at(hp: Hyperparameters, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under the schedule."""
    schedule, lr = hp.learning_rate_schedule, hp.learning_rate
    if schedule.type == "step":
        every = schedule.step_epochs or DEFAULT_STEP_EPOCHS
        gamma = DEFAULT_GAMMA if schedule.gamma is None else schedule.gamma
        return lr * gamma ** ((epoch - 1) // every)
    if schedule.type == "cosine":
        # A retry may have lowered learningRate below minLearningRate: never schedule upwards.
        low = min(schedule.min_learning_rate or 0.0, lr)
        if hp.epochs <= 1:
            return lr
        progress = (epoch - 1) / (hp.epochs - 1)
        return low + (lr - low) * (1 + math.cos(math.pi * progress)) / 2
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
