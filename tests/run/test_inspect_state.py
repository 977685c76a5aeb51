"""The user's model and process are left exactly as found (issue 2 §4), after good runs and failing ones."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.errors import RunError
from tests.fixtures import models as mi


@dataclass
class Snapshot:
    """Everything a run could change, taken with plain PyTorch (references where identity matters)."""

    state: dict[str, torch.Tensor]
    tensor_ids: dict[str, torch.Tensor]
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    grad_values: dict[str, torch.Tensor | None]
    grad_enabled: bool
    rng: torch.Tensor
    hooks: int


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        tensor_ids=dict(model.state_dict(keep_vars=True)),
        training={n: m.training for n, m in model.named_modules()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        grads={n: p.grad for n, p in model.named_parameters()},
        grad_values={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        grad_enabled=torch.is_grad_enabled(),
        rng=torch.random.get_rng_state(),
        hooks=_hook_count(model),
    )


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model)
    assert after.state.keys() == before.state.keys()
    for key, value in before.state.items():
        assert torch.equal(after.state[key], value), f"{key} changed"
        assert after.tensor_ids[key] is before.tensor_ids[key], f"{key} was replaced"
    assert after.training == before.training
    assert after.requires_grad == before.requires_grad
    for name, grad in before.grads.items():
        assert after.grads[name] is grad, f"{name}.grad replaced"
        if grad is not None:
            assert torch.equal(after.grad_values[name], before.grad_values[name]), f"{name}.grad values changed"
    assert after.grad_enabled == before.grad_enabled
    assert torch.equal(after.rng, before.rng)
    assert after.hooks == before.hooks
    global_hooks = torch.nn.modules.module
    assert not global_hooks._global_forward_hooks and not global_hooks._global_forward_pre_hooks


class Mixed(nn.Module):
    """BatchNorm + Dropout, a frozen part, user gradients already present, and mixed training flags."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(mi.IN, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.head = nn.Linear(8, mi.OUT)
        self.example_input_array = torch.randn(mi.B, mi.IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.drop(self.bn(self.stem(x)))))


def _mixed(start: str) -> Mixed:
    model = Mixed()
    if start == "eval":
        model.eval()
    elif start == "mixed":
        model.train()
        model.bn.eval()
    model.stem.weight.grad = torch.full_like(model.stem.weight, 7.0)  # a user's accumulated gradient
    model.head.bias.grad = torch.zeros_like(model.head.bias)
    return model


@pytest.mark.parametrize(("mode", "grad_mode", "start"),
                         [(m, g, s) for (m, g), s in zip(
                             itertools.product(("train", "eval"), ("grad", "no_grad", "inference_mode")),
                             itertools.cycle(("train", "eval", "mixed")))])
def test_state_restored_after_each_mode(mode: str, grad_mode: str, start: str) -> None:
    model = _mixed(start)
    before = snapshot(model)
    report = probe(model, mode=mode, grad_mode=grad_mode)
    assert report.facts.mode == mode
    if mode == "train":  # the run really did change the BatchNorm statistics, and they were put back
        assert any(b.changed for b in report.facts.buffers)
    assert_unchanged(model, before)


def test_state_restored_with_grad_disabled_globally() -> None:
    model = _mixed("train")
    with torch.no_grad():
        before = snapshot(model)
        probe(model)
        assert_unchanged(model, before)


def test_inputs_are_not_changed() -> None:
    model = mi.MLP()
    x = torch.randn(mi.B, mi.IN)
    copy = x.clone()
    probe(model, x)
    assert torch.equal(x, copy) and x.grad is None and not x.requires_grad


def test_inputs_requiring_grad_keep_their_grad() -> None:
    model = mi.MLP()
    x = torch.randn(mi.B, mi.IN, requires_grad=True)
    probe(model, x)
    assert x.grad is None
    x.grad = earlier = torch.ones_like(x)
    probe(model, x)
    assert x.grad is earlier and torch.equal(earlier, torch.ones_like(x))


# ------------------------------------------------------------------ failing runs


class RaiseAfterBN(nn.Module):
    """Updates BatchNorm statistics, then raises whatever it was given."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc
        self.lin = nn.Linear(mi.IN, 8)
        self.bn = nn.BatchNorm1d(8)
        self.example_input_array = torch.randn(mi.B, mi.IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.lin(x))
        raise self.exc


@pytest.mark.parametrize(("factory", "expected"), [
    (mi.RaisesInForward, RunError),
    (mi.ShapeMismatch, RunError),
    (mi.RaisesInBackward, RunError),
    (mi.InplaceBad, RunError),
    (mi.InterruptInForward, KeyboardInterrupt),
    (lambda: RaiseAfterBN(ValueError("after bn")), RunError),
    (lambda: RaiseAfterBN(SystemExit(3)), RunError),
])
def test_state_restored_after_failing_run(factory: Any, expected: type[BaseException]) -> None:
    model = factory()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.eval()
    model.train()
    before = snapshot(model)
    with pytest.raises(expected):
        probe(model)
    assert_unchanged(model, before)


def test_state_restored_after_failing_run_with_grad_disabled() -> None:
    model = RaiseAfterBN(ValueError("x"))
    torch.set_grad_enabled(False)  # the autouse fixture switches it back on
    before = snapshot(model)
    with pytest.raises(RunError):
        probe(model, mode="eval")
    assert_unchanged(model, before)
    assert not torch.is_grad_enabled()


def test_state_restored_after_failing_loss() -> None:
    model = mi.MLP()
    before = snapshot(model)

    def bad_loss(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return outputs  # not a scalar

    with pytest.raises(RunError, match="return a scalar"):
        probe(model, loss=bad_loss)
    assert_unchanged(model, before)


def test_model_usable_after_failing_run() -> None:
    """After a KeyboardInterrupt mid-forward, plain training still works and no hook is left behind."""
    model = mi.InterruptInForward()
    with pytest.raises(KeyboardInterrupt):
        probe(model)
    out = model.bn(model.lin(model.example_input_array))
    out.sum().backward()
    assert model.lin.weight.grad is not None
