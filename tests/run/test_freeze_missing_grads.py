"""A trainable parameter whose .grad is None after backward fails freeze-check, whatever the reason.

Each model is first run in plain PyTorch (train mode, ``sum().backward()``) to establish which
parameters get no gradient; ``freeze_check`` must then name exactly those as ``gradient`` violations,
with a cause that does not blame the wrong thing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fixtures.freeze_patterns import CustomFunctionNone, OneUnusedInModule, RootParamUnused, UsedThroughData
from torch import nn

import gradprobe


def plain_missing(model: nn.Module) -> set[str]:
    m = copy.deepcopy(model).train()
    m(m.example_input_array).sum().backward()
    return {n for n, p in m.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize(("make", "missing"), [
    (RootParamUnused, {"scale"}),
    (UsedThroughData, {"scale"}),
    (OneUnusedInModule, {"gate.spare"}),
    (CustomFunctionNone, {"w"}),
])
def test_each_trainable_parameter_without_gradient_is_a_violation(make: type[nn.Module], missing: set[str]) -> None:
    model = make()
    assert plain_missing(model) == missing
    report = gradprobe.freeze_check(model, trainable=["*"])
    assert not report.passed
    gradient = [v for v in report.violations if v.check == "gradient"]
    assert {v.subject for v in gradient} == missing
    for v in gradient:
        assert v.found == ".grad is None"
        # its module ran and its siblings got gradients: not "detached output", not "never called"
        assert "does not use this one" in v.message, v.message
        assert "never called" not in v.message and "its output is detached" not in v.message
    assert set(report.ddp_unused) == missing
    rows = {p.name: p.grad for p in report.parameters}
    assert all(rows[n] == "none" for n in missing) and all(rows[n] != "none" for n in rows if n not in missing)


def test_the_same_parameter_unlisted_is_a_warning_only() -> None:
    report = gradprobe.freeze_check(OneUnusedInModule(), trainable=["lin", "gate.weight"])
    assert report.passed
    assert {w.subject for w in report.warnings if w.check == "gradient"} == {"gate.spare"}


class UpstreamNoGradThenDetach(nn.Module):
    """``enc`` runs under no_grad *before* ``mid``; ``mid``'s own output is detached: ``mid`` is cut off by its
    own ``.detach()``, not by ``enc`` (which lies upstream of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.mid, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.enc(x)
        return self.head(self.mid(h).detach())


def test_the_cut_named_is_the_one_between_the_parameter_and_the_loss() -> None:
    model = UpstreamNoGradThenDetach()
    assert plain_missing(model) == {"enc.weight", "enc.bias", "mid.weight", "mid.bias"}
    twin = copy.deepcopy(model)  # plain PyTorch: mid's output has a graph, the detach after it cuts it off
    with torch.no_grad():
        h = twin.enc(model.example_input_array)
    assert h.grad_fn is None and twin.mid(h).grad_fn is not None
    report = gradprobe.freeze_check(model, frozen=["enc"], trainable=["mid", "head"])
    mid = [v for v in report.violations if v.check == "gradient" and v.subject.startswith("mid.")]
    assert {v.subject for v in mid} == {"mid.weight", "mid.bias"}
    for v in mid:
        assert "cut off from the loss by .detach() in the model's own forward" in v.message, v.message
        assert "'enc'" not in v.message and "downstream" not in v.message, v.message


class EveryOutputDetached(nn.Module):
    """The only output is detached: no backward can run, and the run recorded where the graph was cut."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).detach()


def test_without_a_backward_the_recorded_cut_is_named() -> None:
    model = EveryOutputDetached()
    out = copy.deepcopy(model)(model.example_input_array)  # plain PyTorch: nothing to call backward on
    assert not out.requires_grad and out.grad_fn is None
    report = gradprobe.freeze_check(model, trainable=["*"])
    gradient = [v for v in report.violations if v.check == "gradient"]
    assert {v.subject for v in gradient} == {"lin.weight", "lin.bias"}
    for v in gradient:
        assert "so backward could not run: cut off from the loss by .detach() in the model's own forward" in v.message
