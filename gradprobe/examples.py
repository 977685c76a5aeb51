"""A bundled fine-tuning model the README runs: a frozen conv backbone and a trainable head.

It contains the classic mistakes on purpose, so the first run shows findings:
the backbone is frozen with ``requires_grad_(False)`` but left in train mode
(its BatchNorm statistics drift), and ``aux_head`` is defined but never called.
``FineTuneNet(fixed=True)`` is the corrected model.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Two conv blocks with BatchNorm, like the stem of a small pretrained CNN."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.block2(self.block1(x))).flatten(1)


class FineTuneNet(nn.Module):
    """Frozen backbone + Dropout + trainable classifier head."""

    def __init__(self, width: int = 16, num_classes: int = 10, fixed: bool = False) -> None:
        super().__init__()
        self.backbone = Backbone(width)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * width, num_classes)
        self.fixed = fixed
        if not fixed:
            self.aux_head = nn.Linear(2 * width, num_classes)  # defined, never called: no gradient
        self.backbone.requires_grad_(False)
        self.example_input_array = torch.randn(8, 3, 32, 32)

    def train(self, mode: bool = True) -> FineTuneNet:
        super().train(mode)
        if self.fixed:
            self.backbone.eval()  # keep frozen BatchNorm statistics fixed
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def fixed() -> FineTuneNet:
    """The corrected model: no unused layer, backbone BatchNorm kept in eval mode."""
    return FineTuneNet(fixed=True)


class NoGradFreeze(nn.Module):
    """The wrong way to freeze: ``torch.no_grad()`` inside forward, parameters still requiring grad."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone(8)
        self.head = nn.Linear(16, 10)
        self.example_input_array = torch.randn(4, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)
