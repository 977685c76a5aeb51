"""Memory figures against sizes computed by hand, and autograd's in-place check kept (issue 2 §5 Memory).

For ``Linear(IN, H) → ReLU → Linear(H, OUT)`` on a batch ``x`` of B float32 rows that does not require grad,
autograd saves (checked below with plain ``saved_tensors_hooks``): the first ``addmm``'s ``mat1`` (= ``x``,
B·IN·4 bytes; its ``mat2`` is not needed because ``x`` needs no gradient), ReLU's result (B·H·4), and the second
``addmm``'s ``mat1`` (the same ReLU result: counted once) and ``mat2`` (a view of a weight: the model's own state,
excluded).  So saved-for-backward is B·(IN + H)·4 bytes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.errors import RunError
from tests.fixtures import models as mi

F32 = 4


def _param_bytes(in_: int, h: int, out: int) -> int:
    return (in_ * h + h + h * out + out) * F32


def test_what_addmm_and_relu_save_in_plain_pytorch() -> None:
    """The hand count above, confirmed with torch itself (shapes and storages of every saved tensor)."""
    model, x = mi.MLP(), torch.randn(mi.B, mi.IN)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = {t.untyped_storage().data_ptr(): t for t in saved if t.untyped_storage().data_ptr() not in params}
    assert sorted(tuple(t.shape) for t in activations.values()) == [(mi.B, mi.HIDDEN), (mi.B, mi.IN)]
    assert x.untyped_storage().data_ptr() in activations


@pytest.mark.parametrize(("batch", "hidden"), [(mi.B, mi.HIDDEN), (64, 5), (3, 128)])
def test_mlp_memory_exact(batch: int, hidden: int) -> None:
    model = mi.MLP(hidden=hidden, batch=batch)
    m = probe(model).facts.memory
    assert m.saved_for_backward_bytes == batch * (mi.IN + hidden) * F32
    assert m.parameter_bytes == _param_bytes(mi.IN, hidden, mi.OUT)
    assert m.gradient_bytes == _param_bytes(mi.IN, hidden, mi.OUT)
    # forward peak: the first Linear's output and ReLU's output are alive together (the input is not new),
    # then the second Linear's output beside ReLU's; the larger of the two moments
    assert m.forward_peak_bytes == max(2 * batch * hidden, batch * (hidden + mi.OUT)) * F32
    # backward peak: at least the gradients it creates
    assert m.backward_peak_bytes >= m.gradient_bytes
    assert "TorchDispatchMode" in m.method


def test_mlp_saved_bytes_attributed_to_module_calls() -> None:
    m = probe(mi.MLP()).facts.memory
    saved = {(x.module, x.call): x.saved_for_backward_bytes for x in m.by_module if x.saved_for_backward_bytes}
    assert saved == {("net.0", 0): mi.B * mi.IN * F32, ("net.1", 0): mi.B * mi.HIDDEN * F32}
    outputs = {x.module: x.output_bytes for x in m.by_module}
    assert outputs["net.0"] == mi.B * mi.HIDDEN * F32 and outputs["net.2"] == mi.B * mi.OUT * F32


def test_frozen_first_layer_changes_saved_and_gradient_bytes() -> None:
    """With ``net.0`` frozen nothing before ReLU needs a gradient: only ReLU's output (for the second addmm) is
    saved, and only the second layer gets gradients."""
    model = mi.MLP()
    model.net[0].requires_grad_(False)
    m = probe(model).facts.memory
    assert m.saved_for_backward_bytes == mi.B * mi.HIDDEN * F32
    assert m.gradient_bytes == (mi.HIDDEN * mi.OUT + mi.OUT) * F32
    assert m.parameter_bytes == _param_bytes(mi.IN, mi.HIDDEN, mi.OUT)


def test_input_requiring_grad_is_saved_once() -> None:
    """x used twice (two Linears on the same input) is one storage: counted once."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(mi.IN, mi.OUT)
            self.b = nn.Linear(mi.IN, mi.OUT)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) * self.b(x)

    m = probe(Twice(), torch.randn(mi.B, mi.IN)).facts.memory
    # x (shared by both addmm), and the two addmm outputs saved by the product
    assert m.saved_for_backward_bytes == (mi.B * mi.IN + 2 * mi.B * mi.OUT) * F32


def test_no_memory_without_grad_or_when_switched_off() -> None:
    m = probe(mi.MLP(), grad_mode="no_grad").facts.memory
    assert m.saved_for_backward_bytes == 0 and m.gradient_bytes is None and m.backward_peak_bytes is None
    assert m.forward_peak_bytes == max(2 * mi.B * mi.HIDDEN, mi.B * (mi.HIDDEN + mi.OUT)) * F32
    f = probe(mi.MLP(), memory=False).facts
    assert f.memory is None and any("--no-memory" in s for s in f.skipped)


# ------------------------------------------------------------------ in-place version check


def test_inplace_model_raises_in_plain_pytorch() -> None:
    model = mi.InplaceBad()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        model(model.example_input_array).sum().backward()


@pytest.mark.parametrize("memory", [True, False])
def test_inplace_error_is_kept_not_silently_wrong(memory: bool) -> None:
    """Saved-tensor hooks switch off autograd's own check; gradprobe must raise the same error instead."""
    with pytest.raises(RunError, match="modified by an inplace operation") as info:
        probe(mi.InplaceBad(), memory=memory)
    assert "backward raised" in str(info.value)


def _grads_via_hooks(model: nn.Module, run) -> dict[str, torch.Tensor]:
    """The gradient reaching each parameter, captured by tensor hooks during ``run()``."""
    grads: dict[str, torch.Tensor] = {}
    def keep(name: str, grad: torch.Tensor) -> None:  # a module called twice sends two gradients: sum them
        grads[name] = grad.clone() if name not in grads else grads[name] + grad

    handles = [p.register_hook(lambda g, n=n: keep(n, g)) for n, p in model.named_parameters()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return grads


@pytest.mark.parametrize("factory", [mi.InplaceFine, mi.MLP, mi.CalledTwice])
def test_gradients_equal_plain_pytorch(factory) -> None:
    model = factory()
    x = model.example_input_array
    ours = _grads_via_hooks(model, lambda: probe(model, x))
    plain = _grads_via_hooks(model, lambda: model(x).sum().backward())
    model.zero_grad(set_to_none=True)
    assert ours.keys() == plain.keys() == {n for n, _ in model.named_parameters()}
    for name in plain:
        assert torch.equal(ours[name], plain[name]), name
