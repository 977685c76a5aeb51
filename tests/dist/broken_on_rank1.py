"""Importing this file fails on rank 1 only (a dependency missing on one node)."""

import os

import torch
from torch import nn

if os.environ.get("RANK") == "1":
    import gradprobe_missing_dependency  # noqa: F401

class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
