"""The bundled example: a small CNN on scikit-learn's 8x8 handwritten digits.

It needs no download (the digits ship with scikit-learn) and trains to > 0.95 accuracy in a few
seconds on a CPU, which is what lets the tests, the demo and CI run the real training loop.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from modelloop_trainer.plugin import ModelPlugin, Split

HOLDOUT_FRACTION = 0.2
# Fixed, not the training seed: the holdout split must be the same for every version ever compared.
SPLIT_SEED = 20240611
MAX_PIXEL = 16.0


class DigitsNet(nn.Module):
    """Takes raw pixel intensities 0..16 (what clients send), so scaling lives in the network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(-1, 1, 8, 8) / MAX_PIXEL
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        out: Tensor = self.fc2(x)
        return out


class DigitsPlugin(ModelPlugin):
    input_shape: ClassVar[tuple[int, ...]] = (64,)
    num_classes: ClassVar[int] = 10
    class_names: ClassVar[tuple[str, ...]] = tuple(str(d) for d in range(10))
    value_range: ClassVar[tuple[float, float] | None] = (0.0, MAX_PIXEL)

    def build(self) -> nn.Module:
        return DigitsNet()

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Shift each image by up to one pixel in each direction (zero fill)."""
        n = x.shape[0]
        padded = F.pad(x.reshape(n, 8, 8), (1, 1, 1, 1))
        shifts = torch.stack([padded[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)])
        choice = torch.randint(0, 9, (n,), generator=generator)
        return shifts[choice, torch.arange(n)].reshape(n, 64)

    def base_dataset(self) -> tuple[Split, Split]:
        """A fixed, seeded 80/20 shuffle split of the 1,797 bundled digits."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = np.asarray(digits.data, dtype=np.float32)
        y = np.asarray(digits.target, dtype=np.int64)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        n_holdout = round(len(y) * HOLDOUT_FRACTION)
        holdout, train = order[:n_holdout], order[n_holdout:]
        return (
            Split(torch.from_numpy(x[train]), torch.from_numpy(y[train])),
            Split(torch.from_numpy(x[holdout]), torch.from_numpy(y[holdout])),
        )
