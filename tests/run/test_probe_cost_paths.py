"""Cheaper paths of the probe run (issue 16) give the same facts as the full ones.

* ``ProbeOptions(cuts=False)`` (compare-modes' tracked runs) drops only the graph-cut facts;
* a no_grad / inference_mode run that touched no autograd node frees its outputs in place, without a
  big-stack thread; a run whose forward builds a graph anyway still gets the thread.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from fixtures import zoo
from torch import nn

import gradprobe.run.probe as probe_module
from gradprobe.run.probe import ProbeOptions, run_probe

_CUT_FIELDS = {"graph_cuts", "parameters_read", "forward_time_s", "backward_time_s"}


class _Inputs:
    """The inputs the engine takes: ``model(*args, **kwargs)``."""

    def __init__(self, *args: Any) -> None:
        self.args, self.kwargs = args, {}

    def as_user_value(self) -> Any:
        return self.args[0] if len(self.args) == 1 else self.args

    def describe(self) -> str:
        return f"{len(self.args)} tensors"


class _CutsAndGrad(nn.Module):
    """A detach cut (a parameter cut off), and an output built with grad on even inside no_grad."""

    def __init__(self, enable_grad: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.enable_grad = enable_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enable_grad:
            with torch.enable_grad():
                return self.b(self.a(x))
        return self.b(self.a(x).detach())


def _facts(model: nn.Module, x: torch.Tensor, **options: Any) -> Any:
    torch.manual_seed(0)
    return run_probe(model, _Inputs(x), ProbeOptions(**options)).facts


@pytest.mark.parametrize("grad_mode", ["grad", "no_grad", "inference_mode"])
def test_cuts_off_changes_only_the_cut_facts(grad_mode: str) -> None:
    torch.manual_seed(0)
    model = _CutsAndGrad()
    x = torch.randn(3, 4)
    full = _facts(model, x, grad_mode=grad_mode, tree_depth=1)
    lean = _facts(model, x, grad_mode=grad_mode, tree_depth=1, cuts=False)
    for field in dataclasses.fields(full):
        if field.name not in _CUT_FIELDS:
            assert getattr(lean, field.name) == getattr(full, field.name), field.name
    assert lean.graph_cuts == ()
    if grad_mode == "grad":  # the full run saw the detach that cuts off 'a' (plain torch: a gets no grad)
        plain = model.b(model.a(x).detach()).sum()
        plain.backward()
        assert model.a.weight.grad is None and model.b.weight.grad is not None
        model.zero_grad(set_to_none=True)
        assert [c.how for c in full.graph_cuts] == ["detach"]


def _releases(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = probe_module.release_on_big_stack

    def counting(holder: list, error: BaseException | None = None) -> None:
        calls.append(len(holder))
        real(holder, error)

    monkeypatch.setattr(probe_module, "release_on_big_stack", counting)
    return calls


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_no_graph_run_frees_in_place(grad_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _releases(monkeypatch)
    model = zoo.mlp()
    facts = _facts(model, model.example_input_array, grad_mode=grad_mode)
    assert facts.outputs and all(o.grad_fn is None for o in facts.outputs)
    assert calls == []


def test_graph_built_inside_no_grad_still_freed_on_big_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _releases(monkeypatch)
    model = _CutsAndGrad(enable_grad=True)
    x = torch.randn(3, 4)
    with torch.no_grad():  # plain torch: the forward's own enable_grad builds a graph
        assert model(x).grad_fn is not None
    _facts(model, x, grad_mode="no_grad", graph=False)  # graph unwalked: its depth is unknown
    assert calls and calls[0] > 0


def test_grad_run_with_graph_off_keeps_the_big_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _releases(monkeypatch)
    model = zoo.mlp()
    _facts(model, model.example_input_array, graph=False)
    assert calls and calls[0] > 0


_ROW_FIELDS = ("outputs", "buffers", "backward", "backward_skipped_reason", "loss", "mode", "grad_mode",
               "global_grad_enabled", "notes")


@pytest.mark.parametrize("factory", [zoo.resnet_small, zoo.tiny_gpt])
@pytest.mark.parametrize(("mode", "grad_mode", "backward"), [("train", "grad", True), ("train", "no_grad", False),
                                                             ("eval", "inference_mode", False)])
def test_row_facts_are_the_full_runs_figures(factory: Any, mode: str, grad_mode: str, backward: bool) -> None:
    """``row_facts`` (compare-modes' tracked runs) builds what a row reads with the full run's values, nothing else."""
    torch.manual_seed(0)
    model = factory()
    x = model.example_input_array
    options = {"mode": mode, "grad_mode": grad_mode, "backward": backward, "tensors": False, "tree_depth": 1,
               "cuts": False}
    full = _facts(model, x, **options)
    rows = _facts(model, x, **options, row_facts=True)
    for name in _ROW_FIELDS:
        assert getattr(rows, name) == getattr(full, name), name
    assert (rows.graph is None) == (full.graph is None)
    if full.graph is not None:  # a row reads the node count; its graph names no parameter nor module call
        assert (rows.graph.nodes, rows.graph.depth) == (full.graph.nodes, full.graph.depth)
    assert full.memory is not None and rows.memory is not None
    for name in ("forward_peak_bytes", "backward_peak_bytes", "saved_for_backward_bytes", "method"):
        assert getattr(rows.memory, name) == getattr(full.memory, name), name
    assert rows.parameters == () and rows.modules == () and rows.memory.by_module == ()
    # plain torch: train mode moves BatchNorm's statistics, eval and the other models leave every buffer alone
    changed = {b.name for b in rows.buffers if b.changed}
    assert changed == ({n for n, _ in model.named_buffers() if n.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked"))}
                       if mode == "train" else set())


def test_a_state_captured_once_gives_each_runs_own_facts() -> None:
    """compare-modes captures the state once and hands it to every tracked run (each starts from it): the facts
    are those of runs capturing their own, and the model comes back as found (plain torch: its state_dict)."""
    torch.manual_seed(0)
    model = zoo.resnet_small()
    x = model.example_input_array
    found = {k: v.clone() for k, v in model.state_dict().items()}
    shared = probe_module.capture_state(model, [x])
    setup = probe_module.prepare_runs(model, _Inputs(x))  # the state and every walk of the model, shared too
    options = {"tensors": False, "tree_depth": 1, "cuts": False, "row_facts": True, "seed": None}
    for mode, grad_mode in [("train", "grad"), ("eval", "no_grad"), ("train", "no_grad"), ("eval", "grad")]:
        torch.manual_seed(0)
        own = run_probe(model, _Inputs(x), ProbeOptions(mode=mode, grad_mode=grad_mode, **options)).facts
        for given in ({"state": shared}, {"setup": setup}):
            torch.manual_seed(0)
            reused = run_probe(model, _Inputs(x), ProbeOptions(mode=mode, grad_mode=grad_mode, **options),
                               **given).facts
            for name in (*_ROW_FIELDS, "graph"):
                assert getattr(reused, name) == getattr(own, name), (mode, grad_mode, name, given)
            assert reused.memory == own.memory
            assert all(torch.equal(v, found[k]) for k, v in model.state_dict().items())


def test_a_full_reset_puts_back_what_batchnorm_writes_without_a_version_bump() -> None:
    """BatchNorm's running statistics change in train mode with their version counter unmoved (plain torch, CPU):
    the cheap reset misses them, the full one (before each tracked run) puts them back."""
    from gradprobe.run.compare.start import StartState

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    start, version = bn.running_mean.clone(), bn.running_mean._version
    state = StartState(bn, torch.device("cpu"), None)
    bn.train()
    bn(torch.randn(8, 4))
    assert bn.running_mean._version == version and not torch.equal(bn.running_mean, start)
    state.reset()
    assert not torch.equal(bn.running_mean, start)
    state.reset(buffers=True)
    assert torch.equal(bn.running_mean, start) and bn.num_batches_tracked.item() == 0


class _ResetTarget(nn.Module):
    """A tied weight, a BatchNorm and a plain buffer: what StartState.reset restores."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("count", torch.zeros(3))


def test_reset_puts_back_registrations_and_every_tensor_written() -> None:
    """The checks laid out per table and per version list (issue 16) restore what the per-tensor loop did:
    a replaced parameter and buffer are registered again, in-place writes are copied back, a tensor nothing wrote
    is left alone; against the values cloned before, plain torch."""
    from gradprobe.run.compare.start import StartState

    torch.manual_seed(0)
    model = _ResetTarget()
    found = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    objects = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    state = StartState(model, torch.device("cpu"), None)
    for _ in range(2):  # twice: the versions noted after the first reset are those checked by the second
        model.a._parameters["bias"] = nn.Parameter(torch.full((4,), 7.0))
        model._buffers["count"] = torch.full((3,), 5.0)
        with torch.no_grad():
            model.a.weight.mul_(3)  # tied: b.weight too
            model.bn.running_var.add_(1)
        untouched = model.a.weight is objects["a.weight"] and model.bn.weight._version
        state.reset()
        now = model.state_dict(keep_vars=True)
        assert all(now[k] is objects[k] for k in objects)  # the registrations as found
        assert [k for k in found if not torch.equal(now[k], found[k])] == []
        assert model.b.weight is model.a.weight and untouched == model.bn.weight._version
