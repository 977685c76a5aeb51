"""``--grads``' one-read proofs and their fallbacks, against plain PyTorch.

A module output is checked by one sum: finite proves it holds no NaN/Inf.  When finite values overflow the
float32 sum to inf, the elementwise count must still say 0; a real NaN must be counted exactly.  A parameter
gradient's NaN/Inf are counted only when its max |g| is not finite: a gradient whose squares overflow (an
infinite norm) but whose values are finite has none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradprobe.api import probe


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class Planted(nn.Module):
    """``big``: finite outputs near 1e38 whose float32 sum overflows; ``nan``: log of some negative values."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(4, 64, bias=False)
        self.nan = nn.Sequential(nn.Linear(4, 8, bias=False), Log())
        with torch.no_grad():
            self.nan[0].weight.fill_(1.0)
            self.nan[0].weight[:3].fill_(-1.0)  # 3 of 8 units negative: log gives NaN there
            self.big.weight.fill_(2e37)  # each output 8e37: finite; 128 of them sum past float32's max
        self.example_input_array = torch.ones(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.big(x) * 1e-38
        return self.nan(x).sum() + h.sum()


def plain_counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """NaN/Inf elements of each module's output, by plain forward hooks."""
    counts: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        def hook(mod: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
            counts[name] = int((~torch.isfinite(out)).sum())
        handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return counts


def test_overflowing_sum_of_finite_outputs_counts_zero_and_nan_counted_exactly() -> None:
    torch.manual_seed(0)
    model = Planted()
    x = model.example_input_array
    with torch.no_grad():
        out = model.big(x)
        assert torch.isfinite(out).all() and not torch.isfinite(out.sum())  # the proof does not hold here
    ref = plain_counts(model, x)
    assert ref["big"] == 0 and ref["nan"] > 0
    gh = probe(model, grads=True).facts.grad_health
    assert gh is not None
    found = {c.module: c.nonfinite for c in gh.calls}
    assert found["big"] == ref["big"] == 0
    assert found["nan"] == ref["nan"]


def test_finite_gradient_with_overflowing_norm_has_no_nonfinite() -> None:
    torch.manual_seed(0)
    model = nn.Linear(16, 16)
    x = torch.full((4, 16), 1e37)  # weight gradient 4e37 per element: finite, its squares overflow float32
    model.example_input_array = x
    report = probe(model, grads=True)
    gh = report.facts.grad_health
    assert gh is not None
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    plain = model.weight.grad
    assert plain is not None and torch.isfinite(plain).all() and not torch.isfinite(plain.norm())
    g = next(p for p in gh.parameters if p.name == "weight")
    assert g.nan == int(plain.isnan().sum()) == 0 and g.inf == int(plain.isinf().sum()) == 0
    assert g.max_abs == float(plain.abs().max())


def test_nan_gradient_counted_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    x[0, 1] = float("nan")
    x[2, 3] = float("inf")
    model.example_input_array = x
    gh = probe(model, grads=True).facts.grad_health
    assert gh is not None
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        plain = p.grad
        assert plain is not None
        g = next(q for q in gh.parameters if q.name == name)
        assert g.nan == int(plain.isnan().sum()) and g.inf == int(plain.isinf().sum()), name
    assert int(model.weight.grad.isnan().sum()) + int(model.weight.grad.isinf().sum()) > 0
