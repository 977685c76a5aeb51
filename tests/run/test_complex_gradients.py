"""Complex parameters: the gradient norm counts the imaginary part, checked against plain PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.run.trackers.grads import grad_states


def test_complex_gradient_norm_counts_the_imaginary_part() -> None:
    """A purely imaginary gradient is nonzero with norm sqrt(sum |z|^2), not 0.0 (``.float()`` dropped Im)."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    param.grad = torch.tensor([1j, 2j, 0j], dtype=torch.complex64)
    expected = float(torch.sqrt((param.grad.abs() ** 2).sum()))
    [(state, norm)] = grad_states([param])
    assert state == "nonzero"
    assert norm is not None and abs(norm - expected) < 1e-6


class _ComplexScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1 + 0j, 2 + 0j], dtype=torch.complex64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).imag  # d(sum imag(w*x))/dw is imaginary-valued for a real x


def test_complex_parameter_reports_true_gradient_norm() -> None:
    model = _ComplexScale()
    x = torch.tensor([3.0, 4.0])
    twin = _ComplexScale()
    twin.load_state_dict(model.state_dict())
    twin(x).sum().backward()
    assert twin.w.grad is not None
    expected = float(torch.linalg.vector_norm(twin.w.grad))
    assert expected > 0
    [param] = probe(model, x).facts.parameters
    assert param.grad == "nonzero"
    assert param.grad_norm is not None and abs(param.grad_norm - expected) < 1e-5
    assert model.w.grad is None
