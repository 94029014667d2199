"""The bundled Fashion-MNIST classifier: a small CNN on ``[B, 1, 32, 32]`` images in [0, 1]
(no normalisation needed by the caller) -> logits ``[B, 10]``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] input here so callers never normalise.
        return self.head(self.features((x - 0.5) / 0.5).flatten(1))


def load_classifier(path: str | Path) -> SmallCNN:
    """A ``.safetensors`` file with a ``.json`` sidecar holding ``model_kwargs``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = SmallCNN(**meta.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()
