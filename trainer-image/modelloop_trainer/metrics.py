"""Classification metrics from logits: what metrics.json and verification.json report.

Pure functions on tensors (no I/O), shared by training, verification and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    per_class_accuracy: list[float]
    per_class_precision: list[float]  # of the samples predicted as the class, the share truly of it
    per_class_recall: list[float]  # of the class's samples, the share found (0 when it has none)
    macro_f1: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    samples: int


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    idx = target.to(torch.int64) * num_classes + pred.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate_logits(logits: Tensor, target: Tensor, num_classes: int) -> Evaluation:
    """A class absent from ``target`` gets per-class accuracy 1.0 only if nothing was wrongly predicted
    as it; otherwise its F1 is 0. Empty input is an error, not a perfect score."""
    if len(target) == 0:
        raise ValueError("cannot evaluate on an empty split")
    loss = float(F.cross_entropy(logits.double(), target, reduction="mean"))
    cm = confusion_matrix(logits.argmax(dim=1), target, num_classes).double()
    tp = cm.diagonal()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    per_class = torch.where(support > 0, tp / support.clamp(min=1), torch.where(predicted > 0, 0.0, 1.0))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return Evaluation(
        loss=loss,
        accuracy=float(tp.sum() / cm.sum()),
        per_class_accuracy=[float(v) for v in per_class],
        per_class_precision=[float(v) for v in precision],
        per_class_recall=[float(v) for v in recall],
        macro_f1=float(f1.mean()),
        confusion=[[int(v) for v in row] for row in cm.to(torch.int64)],
        samples=len(target),
    )
