"""Models for the freeze-check tests: one per freezing trap, each with a correct counterpart.

No tests live here; the CLI tests use these as ``tests/test_freeze_models.py:Name`` targets.
All models share the layout ``stem`` → ``backbone`` → ``head`` so that one spec
(``frozen=backbone``, ``trainable=stem,head``) fits them all.
"""

from __future__ import annotations

import torch
from torch import nn

SPEC = {"frozen": ["backbone"], "trainable": ["stem", "head"]}


class Base(nn.Module):
    """A trainable stem, a backbone meant to be frozen, and a trainable head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)
        self.example_input_array = torch.randn(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.stem(x)))


class Frozen(Base):
    """The correct freeze: ``requires_grad_(False)`` on the backbone, gradients still flow through it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone.requires_grad_(False)


def frozen() -> Frozen:
    return Frozen()


class NoGradFreeze(Base):
    """Trap: ``torch.no_grad()`` inside forward; parameters still require grad and the stem is cut off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        with torch.no_grad():
            h = self.backbone(h)
        return self.head(h)


class DetachFreeze(Base):
    """Trap: ``.detach()`` on the backbone's output, same consequences as no_grad."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.stem(x)).detach())


class AttrFreeze(Base):
    """Trap: ``module.requires_grad = False`` sets a plain attribute and freezes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone.requires_grad = False


class TiedLM(nn.Module):
    """Trap: the head shares the embedding's weight, frozen under one name and meant to train under the other."""

    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        self.embed.requires_grad_(False)
        self.example_input_array = torch.randint(0, 11, (2, 5))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(ids))))


def untied() -> TiedLM:
    return TiedLM(tied=False)


class BNNet(nn.Module):
    """Trap: a frozen conv backbone left in train mode, so its BatchNorm statistics drift."""

    def __init__(self, eval_backbone: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.eval_backbone = eval_backbone
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.backbone = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.backbone.requires_grad_(False)
        self.example_input_array = torch.randn(2, 3, 6, 6)

    def train(self, mode: bool = True) -> BNNet:
        super().train(mode)
        if self.eval_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.stem(x)).mean(dim=(2, 3)))


def bn_eval() -> BNNet:
    return BNNet(eval_backbone=True)


class UnusedLayer(Frozen):
    """Trap: ``aux`` is defined and meant to train but never called: no gradient, and DDP fails."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(8, 2)


class UsedLayer(UnusedLayer):
    """The counterpart: ``aux`` takes part in the loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(self.stem(x))
        return self.head(h) + self.aux(h)


class Broken(Base):
    """A forward that raises: the freeze cannot be verified (exit 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in the user's forward")


# --------------------------------------------------------------------------- optimizers (called with the model)


def _resume(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Train one step with everything trainable, then freeze again: a parameter frozen mid-training."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    model(model.example_input_array).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    return opt


def sgd_momentum_resumed(model: nn.Module) -> torch.optim.Optimizer:
    return _resume(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def adam_resumed(model: nn.Module) -> torch.optim.Optimizer:
    return _resume(model, torch.optim.Adam(model.parameters(), lr=0.01))


def adamw_all(model: nn.Module) -> torch.optim.Optimizer:
    """Trap: every parameter in AdamW with weight decay; decay moves frozen ones once they hold a zero .grad."""
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def adamw_trainable(model: nn.Module) -> torch.optim.Optimizer:
    """The correct optimizer: only parameters that require grad."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.1)


def sgd_trainable_resumed(model: nn.Module) -> torch.optim.Optimizer:
    """Correct: momentum state exists, but only for trainable parameters."""
    return _resume(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9))


def head_only(model: nn.Module) -> torch.optim.Optimizer:
    """Trap: the stem is trainable but missing from the optimizer."""
    return torch.optim.SGD(model.head.parameters(), lr=0.1)


def not_an_optimizer(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def inputs(model: nn.Module) -> torch.Tensor:
    return model.example_input_array
