"""Early stopping on validation loss, as plain state that a checkpoint can carry across a preemption."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a strictly lower validation loss; 0 disables stopping.

    The state is part of every checkpoint: a run resumed after a preemption must stop at the same
    epoch as one that was never interrupted.
    """

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, validation_loss: float) -> bool:
        """Record an epoch's validation loss; True if it is the best so far."""
        if not math.isfinite(validation_loss):
            raise FloatingPointError(
                f"validation loss is {validation_loss} at epoch {epoch}: training diverged; lower learningRate"
            )
        if validation_loss < self.best_loss:
            self.best_loss = validation_loss
            self.best_epoch = epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if math.isinf(self.best_loss):
            d["best_loss"] = None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EarlyStopping:
        best = d.get("best_loss")
        return cls(
            patience=int(d["patience"]),
            best_loss=math.inf if best is None else float(best),
            best_epoch=int(d["best_epoch"]),
            bad_epochs=int(d["bad_epochs"]),
        )
