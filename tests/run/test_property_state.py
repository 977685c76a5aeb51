"""Property tests for ``ModelState``: capture, let anything happen, restore, and the model is as it was.

Random module trees (nested Sequential/ModuleDict of Linear, BatchNorm, Dropout, with tied parameters),
random training flags, ``requires_grad``, existing gradients and buffer values; then a random sequence of
the changes a forward can make (flags, freezing, gradients, buffer values and objects, replaced
Parameters, parameter values, the global grad mode, the RNG).  The oracle is an independent deep snapshot.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradprobe.run.state import ModelState, preserved


def make_layer(kind: str, size: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(size, size)
    if kind == "bn":
        return nn.BatchNorm1d(size)
    if kind == "emb":
        return nn.Embedding(5, size)
    return nn.Dropout(0.1)


def build(recipe: list[tuple[str, int]], tie: bool) -> nn.Module:
    """A tree from a flat recipe: each entry adds a layer; every third one opens a nested ModuleDict."""
    root = nn.Sequential()
    current: nn.Module = root
    for i, (kind, size) in enumerate(recipe):
        current.add_module(f"m{i}", make_layer(kind, size))
        if i % 3 == 2:
            nested = nn.ModuleDict()
            current.add_module(f"nest{i}", nested)
            current = nested
    linears = [m for m in root.modules() if isinstance(m, nn.Linear)]
    if tie and len(linears) >= 2 and linears[0].weight.shape == linears[-1].weight.shape:
        linears[-1].weight = linears[0].weight  # a tied parameter, reachable under two names
    return root


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "training": [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)],
        "params": [(n, id(p), p.requires_grad, p.detach().clone(), id(p.grad) if p.grad is not None else None,
                    p.grad.clone() if p.grad is not None else None)
                   for n, p in model.named_parameters(remove_duplicate=False)],
        "buffers": [(n, id(b), b.clone()) for n, b in model.named_buffers(remove_duplicate=False)],
        "grad_enabled": torch.is_grad_enabled(),
        "rng": torch.random.get_rng_state(),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["training"] == b["training"]
    assert a["grad_enabled"] == b["grad_enabled"]
    assert torch.equal(a["rng"], b["rng"])
    assert len(a["params"]) == len(b["params"])
    for (n1, i1, r1, v1, g1, gv1), (n2, i2, r2, v2, g2, gv2) in zip(a["params"], b["params"], strict=True):
        assert (n1, i1, r1, g1) == (n2, i2, r2, g2), n1
        assert torch.equal(v1, v2), n1
        assert (gv1 is None) == (gv2 is None) and (gv1 is None or torch.equal(gv1, gv2)), n1
    assert len(a["buffers"]) == len(b["buffers"])
    for (n1, i1, v1), (n2, i2, v2) in zip(a["buffers"], b["buffers"], strict=True):
        assert (n1, i1) == (n2, i2) and torch.equal(v1, v2), n1


recipes = st.lists(st.tuples(st.sampled_from(["linear", "bn", "drop", "emb"]), st.integers(1, 4)), min_size=1,
                   max_size=8)
MUTATIONS = ["flip_training", "train_all", "eval_all", "freeze", "unfreeze", "set_grad", "clear_grad",
             "bump_buffer", "replace_buffer", "replace_param", "param_values", "grad_mode", "rng"]


def mutate(model: nn.Module, op: str, pick: int) -> None:
    """One change of the kind a forward (or a careless tool) makes."""
    modules = list(model.modules())
    params = [(m, n) for m in modules for n, p in m._parameters.items() if p is not None]
    buffers = [(m, n) for m in modules for n, b in m._buffers.items() if b is not None]
    if op == "flip_training":
        mod = modules[pick % len(modules)]
        mod.training = not mod.training
    elif op == "train_all":
        model.train()
    elif op == "eval_all":
        model.eval()
    elif op == "grad_mode":
        torch.set_grad_enabled(not torch.is_grad_enabled())
    elif op == "rng":
        torch.rand(pick % 7 + 1)
    elif params and op in ("freeze", "unfreeze", "set_grad", "clear_grad", "replace_param", "param_values"):
        mod, name = params[pick % len(params)]
        p = mod._parameters[name]
        if op == "freeze":
            p.requires_grad_(False)
        elif op == "unfreeze":
            p.requires_grad_(True)
        elif op == "set_grad":
            p.grad = torch.randn_like(p)
        elif op == "clear_grad":
            p.grad = None
        elif op == "replace_param":
            mod._parameters[name] = nn.Parameter(torch.zeros_like(p))
        else:
            with torch.no_grad():
                p.add_(1.0)
    elif buffers and op in ("bump_buffer", "replace_buffer"):
        mod, name = buffers[pick % len(buffers)]
        b = mod._buffers[name]
        if op == "bump_buffer":
            with torch.no_grad():
                b.add_(1)
        else:
            mod._buffers[name] = b.clone() + 1


@settings(max_examples=150, deadline=None)
@given(recipes, st.booleans(), st.lists(st.booleans(), max_size=20), st.lists(st.booleans(), max_size=20),
       st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 50)), max_size=12), st.booleans())
def test_restore_undoes_any_sequence_of_changes(recipe: list[tuple[str, int]], tie: bool, flags: list[bool],
                                                grads: list[bool], changes: list[tuple[str, int]],
                                                grad_enabled: bool) -> None:
    torch.manual_seed(len(recipe))
    model = build(recipe, tie)
    for mod, flag in zip(model.modules(), flags, strict=False):  # random initial state
        mod.training = flag
    for p, has in zip(model.parameters(), grads, strict=False):
        if has:
            p.grad = torch.randn_like(p)
    for i, b in enumerate(model.buffers()):
        with torch.no_grad():
            b.add_(i)
    torch.set_grad_enabled(grad_enabled)
    try:
        before = snapshot(model)
        state = ModelState.capture(model, param_values=True)
        for op, pick in changes:
            mutate(model, op, pick)
        state.restore()
        assert_same(before, snapshot(model))
        state.restore()  # restoring twice is harmless
        assert_same(before, snapshot(model))
    finally:
        torch.set_grad_enabled(True)


@settings(max_examples=60, deadline=None)
@given(recipes, st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 50)), max_size=8))
def test_preserved_restores_when_the_block_raises(recipe: list[tuple[str, int]],
                                                  changes: list[tuple[str, int]]) -> None:
    model = build(recipe, tie=True)
    before = snapshot(model)
    try:
        with preserved(model, param_values=True):
            for op, pick in changes:
                mutate(model, op, pick)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        after = snapshot(model)
        torch.set_grad_enabled(True)
    assert_same(before, after)


@settings(max_examples=60, deadline=None)
@given(recipes, st.lists(st.tuples(st.sampled_from([m for m in MUTATIONS if m != "param_values"]),
                                   st.integers(0, 50)), max_size=8))
def test_without_param_values_everything_but_values_is_restored(recipe: list[tuple[str, int]],
                                                                changes: list[tuple[str, int]]) -> None:
    """The engine's default capture (no parameter copies): still exact for every change except values."""
    model = build(recipe, tie=False)
    before = snapshot(model)
    state = ModelState.capture(model)
    for op, pick in changes:
        mutate(model, op, pick)
    state.restore()
    torch_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert torch_enabled == before["grad_enabled"]
    assert_same(before, snapshot(model))
