"""scikit-learn's handwritten digits (8x8, 1797 images, bundled with scikit-learn) with a
small CNN. Fixed split: a seeded permutation, 80% train / 20% validation."""

from __future__ import annotations

import torch
from torch import nn

from gradkit.bench.tasks.classification import classification_task


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)``; images scaled to [0, 1], shape ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(x))
    tr, va = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[va], y[va]


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels), max-pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):  # noqa: D102
        return self.head(self.features(x).flatten(1))


DIGITS_CNN = classification_task(
    "digits-cnn",
    DigitsCNN,
    load_digits_split,
    target=0.97,
    description="scikit-learn digits (8x8, 1437 train / 360 val), small 2-D CNN",
    steps=600,
    batch_size=64,
    eval_every=50,
    chance=0.1,
)
