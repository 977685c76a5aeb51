"""Non-finite outputs without a second pass (issue 16): the default loss's finite sum proves them finite.

Every case is checked against plain ``torch.isfinite(t).all()`` on the same outputs, and the cases where
the proof does not hold (overflowing sums, a user loss, complex outputs) must still be answered right by
the elementwise fallback.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import gradprobe.run.loss as loss_module
from gradprobe.api import probe


class _Outputs(nn.Module):
    """Returns ``{name: fill * (y * 0 + 1)}`` per entry: values set by hand, still on the graph."""

    def __init__(self, fills: dict[str, tuple[float, torch.dtype]], n: int = 64) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.fills = fills

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.lin(x)
        ones = y * 0 + 1
        return {k: (ones.to(dtype) * torch.tensor(v, dtype=dtype)) for k, (v, dtype) in self.fills.items()}


def _expected(model: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.no_grad():
        out = model(x)
    return {f"output['{k}']" for k, t in out.items() if not bool(torch.isfinite(t).all())}


CASES: dict[str, dict[str, tuple[float, torch.dtype]]] = {
    "finite": {"a": (1.5, torch.float32), "b": (-2.0, torch.float32)},
    "nan": {"a": (1.0, torch.float32), "b": (float("nan"), torch.float32)},
    "posinf": {"a": (float("inf"), torch.float32), "b": (1.0, torch.float32)},
    "neginf": {"a": (float("-inf"), torch.float32)},
    "both_inf": {"a": (float("inf"), torch.float32), "b": (float("-inf"), torch.float32)},
    "sum_overflows_float32": {"a": (3e38, torch.float32), "b": (1.0, torch.float32)},
    "half_finite": {"a": (60000.0, torch.float16)},
    "half_inf": {"a": (float("inf"), torch.float16), "b": (2.0, torch.float16)},
    "bfloat16_nan": {"a": (float("nan"), torch.bfloat16), "b": (1.0, torch.bfloat16)},
    "float64_beyond_float32": {"a": (1e300, torch.float64)},
    "float64_inf": {"a": (float("inf"), torch.float64), "b": (1e300, torch.float64)},
}


@pytest.mark.parametrize("loss", ["sum", "mean"])
@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_matches_plain_torch(case: str, loss: str) -> None:
    model = _Outputs(CASES[case])
    x = torch.randn(8, 64)
    facts = probe(model, x, loss=loss).facts
    assert set(facts.nonfinite_outputs) == _expected(model, x)


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_outputs_without_graph(grad_mode: str) -> None:
    """Inference tensors keep no version counter: checked elementwise, like every output of a no_grad run."""
    model = _Outputs(CASES["nan"])
    x = torch.randn(8, 64)
    facts = probe(model, x, grad_mode=grad_mode).facts
    assert set(facts.nonfinite_outputs) == _expected(model, x) == {"output['b']"}
    facts = probe(_Outputs(CASES["finite"]), x, grad_mode=grad_mode).facts
    assert facts.nonfinite_outputs == ()


def test_user_loss_falls_back_to_elementwise() -> None:
    model = _Outputs({"a": (float("nan"), torch.float32), "b": (1.0, torch.float32)})
    x = torch.randn(8, 64)
    facts = probe(model, x, loss=lambda out, inp: out["b"].sum()).facts
    assert facts.loss is not None and facts.loss == facts.loss  # finite user loss: proves nothing about "a"
    assert facts.nonfinite_outputs == ("output['a']",)


def test_complex_output_checked_elementwise() -> None:
    class Complex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.lin(x)
            return y, torch.complex(y, y * float("inf"))  # real part finite, imaginary part not

    facts = probe(Complex(), torch.randn(2, 4)).facts
    assert facts.nonfinite_outputs == ("output[1]",)


def test_output_written_after_the_loss_is_checked_again() -> None:
    """A backward hook that writes NaN into an output after the (finite) loss was computed."""

    class Writes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.keep: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.lin(x)
            side = (y * 0).detach().requires_grad_(False)
            self.keep = [side]

            def poison(grad: torch.Tensor) -> None:
                side.fill_(float("nan"))

            y.register_hook(poison)
            return y, side

    facts = probe(Writes(), torch.randn(2, 4)).facts
    assert facts.backward
    assert facts.nonfinite_outputs == ("output[1]",)


def test_finite_default_loss_reads_no_output_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = loss_module.stored_values
    monkeypatch.setattr(loss_module, "stored_values", lambda t: seen.append(t) or real(t))
    facts = probe(_Outputs({"a": (1.0, torch.float32), "b": (-2.0, torch.float16)}), torch.randn(8, 64)).facts
    assert facts.nonfinite_outputs == ()
    assert seen == []  # the finite loss proved both outputs finite
    model = _Outputs({"a": (1.0, torch.float32), "b": (3e38, torch.float32)})
    facts = probe(model, torch.randn(8, 64)).facts  # the sum of 3e38s overflows: both read elementwise
    assert facts.nonfinite_outputs == ()
    assert len(seen) == 2
