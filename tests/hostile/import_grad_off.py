"""Switches the global grad mode off at import (a common notebook leftover)."""

import torch
from torch import nn

torch.set_grad_enabled(False)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
