"""Models that misbehave at run time, each in one specific way.

Every class sets ``example_input_array`` unless the point is that it has none,
so one spec (``tests/hostile/models.py:Name``) reproduces one failure.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


class Fine(nn.Module):
    """A working two-layer model: the control case and the base of the broken ones."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class NeedsArgs(nn.Module):
    """A constructor with required arguments."""

    def __init__(self, hidden: int, depth: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, hidden)
        self.example_input_array = torch.randn(2, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class CtorRaises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("cannot build: config file missing")


class CtorExits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sys.exit(3)


class NoInputs(nn.Module):
    """No example_input_array: the user must pass --shape or --inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class WrongShape(nn.Module):
    """Its example input does not fit the first layer (5 features into Linear(4, ...))."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.example_input_array = torch.randn(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class ForwardNone(Fine):
    def forward(self, x: torch.Tensor) -> None:
        self.fc1(x)


class ForwardNumber(Fine):
    def forward(self, x: torch.Tensor) -> float:
        self.fc1(x)
        return 0.5


class ForwardString(Fine):
    def forward(self, x: torch.Tensor) -> str:
        return "logits"


class ForwardDictNoTensor(Fine):
    def forward(self, x: torch.Tensor) -> dict:
        return {"loss": 1.5, "labels": [1, 2]}


class ForwardExits(Fine):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sys.exit("giving up")


class ForwardInterrupted(Fine):
    """Ctrl-C arrives in the middle of forward, after the model changed its own state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc1.weight.requires_grad_(False)
        raise KeyboardInterrupt


class ForwardRaisesInChild(nn.Module):
    """A submodule's forward raises a plain error."""

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("expected a mask argument")

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = self.Broken()
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(x))


class ForwardRecursion(Fine):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


class NaNOutput(Fine):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(torch.relu(self.fc1(x)))
        return y * torch.tensor([float("nan"), 1.0])


class InfOutput(Fine):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc2(torch.relu(self.fc1(x)))
        return y, torch.log(torch.zeros(3))


class InplaceAfterSave(Fine):
    """``sigmoid`` saves its output; modifying it in place must make backward raise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc1(x))
        h.mul_(2)
        return self.fc2(h)


class BackwardRaises(Fine):
    """A custom autograd Function whose backward raises."""

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            return x.clone()

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def]
            raise RuntimeError("backward not implemented for Boom")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Boom.apply(self.fc2(torch.relu(self.fc1(x))))


class Prints(Fine):
    def __init__(self) -> None:
        print("building Prints")
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("forward called with", tuple(x.shape))
        sys.stdout.write("{not json\n")
        return super().forward(x)


class Empty(nn.Module):
    """No parameters at all."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.randn(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class SharedTwice(nn.Module):
    """The same Linear registered under two names: named_parameters(remove_duplicate=False) yields it twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = self.first
        self.blocks = nn.ModuleList([self.first, self.first])
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class DuplicatingNamedParameters(Fine):
    """Overrides named_parameters to yield every parameter twice (seen in the wild in wrapper libraries)."""

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        items = list(super().named_parameters(prefix, recurse, remove_duplicate))
        yield from items
        yield from items


class GradModeFlipper(Fine):
    """Switches global grad mode off inside forward and never switches it back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        torch.set_grad_enabled(False)
        return y


class BadExampleInput(Fine):
    """example_input_array is a string."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = "a picture of a cat"


class NotAModule:
    """A plain class that looks like a model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def factory_returns_int() -> int:
    return 42


def factory_returns_none() -> None:
    return None


def factory_raises() -> nn.Module:
    raise OSError("checkpoint directory /nonexistent not found")


instance = Fine()
NUMBER = 7


# ---------------------------------------------------------------------------- input factories


def inputs_raise() -> torch.Tensor:
    raise ValueError("tokenizer not loaded")


def inputs_none() -> None:
    return None


def inputs_string() -> str:
    return "hello"


def inputs_exit() -> torch.Tensor:
    raise SystemExit(1)


def inputs_bad_keys() -> dict:
    return {1: torch.randn(3, 4)}


def inputs_good() -> torch.Tensor:
    return torch.randn(3, 4)


def inputs_wrong_shape() -> torch.Tensor:
    return torch.randn(3, 7)


# ---------------------------------------------------------------------------- losses


def loss_raises(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    raise KeyError("labels")


def loss_not_scalar(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    return outputs


def loss_number(outputs: torch.Tensor, inputs: torch.Tensor) -> float:
    return 1.0


class Lazy(nn.Module):
    """LazyLinear: its parameters have no shape until the first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.LazyLinear(8), nn.ReLU())
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
