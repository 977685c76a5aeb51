"""Prints to stdout at import, in the constructor and in forward: stdout must still carry only the report."""

import torch
from torch import nn

print("importing import_prints")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        print("constructing Net")
        self.fc = nn.Linear(4, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("forward", x.shape)
        return self.fc(x)
