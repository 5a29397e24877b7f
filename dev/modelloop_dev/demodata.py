"""The demo's base dataset: the digits example with one class nearly missing from training.

The demo tells the product's story: a team trains v1 on the data it has, production shows the
model a digit it almost never saw, reviewers correct its answers, and v2 learns the digit from those
corrections alone, and is promoted because it is measurably better on the same holdout, not
because a gate tolerates it. The holdout keeps every class, so it measures what v1 lacks.
"""

from __future__ import annotations

import torch

from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.plugin import Split

SCARCE_CLASS = 8
KEPT = 5
"""Training samples of the scarce class left in the base set (of about 140)."""

PLUGIN = f"{__name__}:DigitsMissingAClass"
"""For ``modelloop-trainer seed-dataset --plugin``: only seeding uses it; training reads what it seeded."""


class DigitsMissingAClass(DigitsPlugin):
    def base_dataset(self) -> tuple[Split, Split]:
        train, holdout = super().base_dataset()
        scarce = torch.nonzero(train.y == SCARCE_CLASS).flatten()
        keep = train.y != SCARCE_CLASS
        keep[scarce[:KEPT]] = True
        return Split(train.x[keep], train.y[keep]), holdout
