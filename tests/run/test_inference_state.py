"""Models at the edges of the grad modes: inference-tensor state, and grad enabled inside forward.

Parameters and buffers made under ``torch.inference_mode()`` have no version counter.

gradprobe reads version counters to tell which state tensors a run moved; reading one of an inference tensor
raises, so such a model used to end every command in "unexpected error".  Now the run goes on: an inference
buffer is copied back before every compare-modes run, the forwards that torch itself refuses fail with torch's
error plus the names of the model's own inference tensors, and the rest are measured.  Each figure is checked
against plain PyTorch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradprobe.api import compare_modes, probe
from gradprobe.errors import RunError


class InferenceScale(nn.Module):
    """A scale buffer made under inference_mode (e.g. a model built inside ``with torch.inference_mode():``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        with torch.inference_mode():
            self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


class InferenceCounter(nn.Module):
    """An inference buffer the forward writes in place: only an inference_mode forward may."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        with torch.inference_mode():
            self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            self.count += 1
        return self.lin(x) + self.count


def _plain_raises(model: nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(RuntimeError) as info:
        model(x)
    return str(info.value)


def test_inspect_names_the_inference_buffer_torch_refuses() -> None:
    torch.manual_seed(0)
    model, x = InferenceScale(), torch.randn(2, 4)
    torch_error = _plain_raises(model, x)  # plain PyTorch refuses the grad forward too
    assert "nference tensor" in torch_error
    with pytest.raises(RunError) as info:
        probe(model, x)
    message = info.value.message
    assert torch_error.splitlines()[0] in message
    assert "the model holds inference tensors" in message and "scale" in message
    assert "lin.weight" not in message  # the parameters are normal tensors


def test_inspect_no_grad_measures_and_leaves_the_buffer() -> None:
    torch.manual_seed(0)
    model, x = InferenceScale(), torch.randn(2, 4)
    with torch.no_grad():
        expected = model(x)
    facts = probe(model, x, grad_mode="no_grad").facts
    assert facts.outputs[0].shape == tuple(expected.shape) and facts.outputs[0].requires_grad is False
    assert model.scale.is_inference() and torch.equal(model.scale, torch.full((3,), 2.0))


def test_compare_modes_rows_against_plain_pytorch() -> None:
    torch.manual_seed(0)
    model, x = InferenceScale(), torch.randn(2, 4)
    report = compare_modes(model, x, repeat=2)
    rows = {(r.mode, r.grad_mode): r for r in report.comparison.rows}
    for mode in ("train", "eval"):
        assert not rows[(mode, "grad")].ok and rows[(mode, "grad")].error_cause == "inference-tensor"
        assert "scale" in rows[(mode, "grad")].error
        assert rows[(mode, "no_grad")].ok and rows[(mode, "inference_mode")].ok
        assert rows[(mode, "inference_mode")].is_inference is True
    failed = [f for f in report.findings if f.code == "mode-failed"]
    assert {f.subject for f in failed} == {"train:grad", "eval:grad"}
    assert torch.equal(model.scale, torch.full((3,), 2.0)) and model.scale.is_inference()


def test_compare_modes_puts_an_inference_buffer_back_before_every_run() -> None:
    torch.manual_seed(0)
    model, x = InferenceCounter(), torch.randn(2, 4)
    with torch.no_grad():
        plain = model(x)
    with torch.inference_mode():  # plain PyTorch: each inference_mode forward adds one, and reads it
        first, second = model(x), model(x)
        assert model.count.item() == 2
        model.count.zero_()
    assert torch.equal(first - plain, torch.ones_like(plain)) and torch.equal(second - first, torch.ones_like(plain))
    report = compare_modes(model, x, repeat=3)
    rows = {(r.mode, r.grad_mode): r for r in report.comparison.rows}
    assert all(r.ok for r in rows.values())
    for mode in ("train", "eval"):  # every run starts from count 0: its output is the first one, each time
        assert rows[(mode, "inference_mode")].buffers_changed == ("count",)
        assert rows[(mode, "inference_mode")].repeat_max_abs_diff == 0
        assert rows[(mode, "inference_mode")].max_abs_diff == pytest.approx((first - plain).abs().max().item())
        assert rows[(mode, "no_grad")].buffers_changed == () and rows[(mode, "no_grad")].max_abs_diff == 0
    assert model.count.item() == 0 and model.count.is_inference()


class GradInside(nn.Module):
    """Enables grad inside forward: even under no_grad it builds a graph and saves tensors for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return torch.tanh(self.lin(x)).sum(1)


def _plain_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Distinct storages autograd saves in a no_grad forward, parameters left out, counted with plain hooks."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    found: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            found[storage._cdata] = storage.nbytes()
        return t

    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    assert out.grad_fn is not None
    return sum(found.values())


def test_compare_no_grad_row_counts_what_a_forward_enabling_grad_saves() -> None:
    torch.manual_seed(0)
    model, x = GradInside(), torch.randn(2, 4)
    expected = _plain_saved_bytes(model, x)
    assert expected > 0
    rows = {(r.mode, r.grad_mode): r for r in compare_modes(model, x, repeat=2).comparison.rows}
    for mode in ("train", "eval"):
        assert rows[(mode, "no_grad")].graph_nodes == rows[(mode, "grad")].graph_nodes > 0
        assert rows[(mode, "no_grad")].saved_for_backward_bytes == expected
        assert rows[(mode, "grad")].saved_for_backward_bytes == expected
        assert rows[(mode, "inference_mode")].saved_for_backward_bytes == 0
