"""Adversarial cross-checks of `inspect` facts against plain PyTorch (issue 2).

Each expectation is computed here with plain torch (state_dict comparisons, our own
``saved_tensors_hooks`` count, ``.grad`` after our own backward), never copied from gradprobe.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.utils.checkpoint as cp
from torch import nn

import gradprobe


def plain_buffers_changed(model: nn.Module, x: torch.Tensor, mode: str) -> dict[str, bool]:
    """Buffer name → did a plain forward change its value (state_dict compare), on a copy of the model."""
    m = copy.deepcopy(model).train(mode == "train")
    before = {k: v.clone() for k, v in m.named_buffers()}
    m(x)
    after = dict(m.named_buffers())
    names = set(before) | set(after)
    return {k: k not in before or k not in after or not torch.equal(before[k], after[k]) for k in names}


def probe_buffers(model: nn.Module, x: torch.Tensor, mode: str) -> dict[str, bool | None]:
    return {b.name: b.changed for b in gradprobe.probe(model, x, mode=mode).facts.buffers}


class _ReassignSame(nn.Module):
    """Reassigns its buffer (not in place) with equal values: the state is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("c", torch.zeros(4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.c = self.c.clone()
        return self.lin(x) + self.c


class _ReassignNew(_ReassignSame):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.c = self.c + 1
        return self.lin(x) + self.c


class _CreatesBuffer(nn.Module):
    """Registers a None buffer and fills it in forward (a lazily built cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", None)
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cache = x.detach().mean(0)
        return self.lin(x)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make", [
    lambda: nn.BatchNorm1d(4, track_running_stats=False),  # None buffer slots: no buffer exists
    lambda: nn.BatchNorm1d(4, momentum=None),
    _ReassignSame,
    _ReassignNew,
    _CreatesBuffer,
])
def test_buffer_changed_matches_plain_torch(make, mode: str) -> None:
    torch.manual_seed(0)
    model = make()
    x = torch.randn(5, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = plain_buffers_changed(model, x, mode)
    assert probe_buffers(model, x, mode) == expected
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def plain_grad_states(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    m = copy.deepcopy(model)
    m(x).sum().backward()
    out = {}
    for name, p in m.named_parameters():
        g = p.grad
        if g is None:
            out[name] = "none"
            continue
        values = g.coalesce().values() if g.is_sparse else g
        out[name] = "nonzero" if bool((values != 0).any()) else "zero"
    return out


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(cp.checkpoint(self.a, x, use_reentrant=self.reentrant))


class _SparseEmb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Embedding(10, 4, sparse=True)
        self.padded = nn.Embedding(10, 4, sparse=True, padding_idx=0)  # only padding looked up: zero gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x) + self.padded(torch.zeros_like(x))


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("make, x", [
    (lambda: _Checkpointed(True), torch.randn(2, 4)),  # reentrant: x needs no grad, so `a` gets none
    (lambda: _Checkpointed(False), torch.randn(2, 4)),
    (_SparseEmb, torch.tensor([[1, 2, 1]])),
])
def test_grad_state_matches_plain_torch(make, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = make()
    expected = plain_grad_states(model, x)
    got = {p.name: p.grad for p in gradprobe.probe(model, x).facts.parameters}
    assert got == expected
    assert all(p.grad is None for p in model.parameters())


def test_saved_bytes_of_views_count_each_storage_once() -> None:
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 2
            a, b = h[:, :8], h[:, 8:]
            return (a * self.w).sum() + (b * self.w).sum() + (a * b).sum()

    model, x = Views(), torch.randn(3, 16)
    exclude = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, tuple[weakref.ref, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in exclude:
            seen[s._cdata] = (weakref.ref(s), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    expected = sum(n for ref, n in seen.values() if ref() is not None)
    del out
    assert expected == 3 * 16 * 4  # h's storage, saved through both views, once
    assert gradprobe.probe(model, x).facts.memory.saved_for_backward_bytes == expected
