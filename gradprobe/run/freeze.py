"""The torch side of freeze-check: one train-mode forward/backward, then the optimizer steps.

The probe engine gives the gradient facts; this module adds what only a real optimizer shows:
param-group membership, one ``step()`` on the computed gradients, and the mid-training trap
(``zero_grad(set_to_none=False)`` and a second step).  Parameter values, gradients, flags, buffers
and the optimizer's state are all put back afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, TargetError, describe_exception
from gradprobe.facts.freeze import FreezeFacts, OptimizerFacts, OptimizerGroup, OptimizerParam
from gradprobe.facts.run import RunFacts
from gradprobe.load.target import ExampleInputs
from gradprobe.run.probe import LossFn, ProbeOptions, param_names, run_probe
from gradprobe.run.state import ModelState

OptimizerSource = torch.optim.Optimizer | Callable[[nn.Module], Any]


def build_optimizer(source: OptimizerSource, model: nn.Module, label: str) -> torch.optim.Optimizer:
    """An optimizer instance as given, or the one a factory returns when called with the model."""
    if isinstance(source, torch.optim.Optimizer):
        return source
    if not callable(source):
        raise TargetError(f"--optimizer '{label}' is a {type(source).__name__}, not a function(model) returning "
                          f"a torch.optim.Optimizer")
    try:
        opt = source(model)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise TargetError(f"--optimizer '{label}' raised {describe_exception(exc)}; it is called with the model "
                          f"and must return a torch.optim.Optimizer") from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise TargetError(f"--optimizer '{label}' returned {type(opt).__name__}, not a torch.optim.Optimizer; "
                          f"return e.g. torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])")
    return opt


def run_freeze(model: nn.Module, inputs: ExampleInputs, *, optimizer: OptimizerSource | None = None,
               optimizer_label: str = "optimizer", loss: str | LossFn = "sum", seed: int | None = 0,
               target: str = "") -> FreezeFacts:
    """Collect the facts freeze-check judges; the model and the optimizer are left exactly as found."""
    state = ModelState.capture(model, param_values=True)
    opt: torch.optim.Optimizer | None = None
    opt_backup: dict[str, Any] | None = None
    try:
        if optimizer is not None:
            opt = build_optimizer(optimizer, model, optimizer_label)
            opt_backup = copy.deepcopy(opt.state_dict())
        grads: dict[int, torch.Tensor] = {}
        flags = {id(p): p.requires_grad for p in model.parameters()}  # as handed over: what an optimizer sees
        hooks = [p.register_post_accumulate_grad_hook(lambda t, pid=id(p): grads.__setitem__(pid, t.grad))
                 for p in model.parameters() if p.requires_grad]
        try:
            options = ProbeOptions(mode="train", grad_mode="grad", loss=loss, backward=True, memory=False,
                                   tensors=True, graph=False, seed=seed)
            run = run_probe(model, inputs, options, target).facts
        finally:
            for h in hooks:
                h.remove()
        if not run.backward and run.loss is None and run.device != "meta":
            raise RunError(f"freeze-check needs a backward: {run.backward_skipped_reason}; pass --loss MOD:fn "
                           f"returning a scalar from the outputs")
        run, flags_after = _flags_as_given(model, run, flags)
        opt_facts = _optimizer_facts(model, opt, grads, optimizer_label) if opt is not None else None
        return FreezeFacts(run, opt_facts, flags_after=flags_after, buffer_aliases=_buffer_aliases(model))
    finally:
        try:
            if opt is not None and opt_backup is not None:
                opt.load_state_dict(opt_backup)
        finally:
            state.restore()


def _flags_as_given(model: nn.Module, run: RunFacts, flags: dict[int, bool]) -> tuple[RunFacts, dict[str, bool]]:
    """Parameter facts with ``requires_grad`` as handed over; the flags forward changed, as forward left them.

    The engine reads flags after forward: a forward calling ``requires_grad_(False)`` would otherwise pass
    a parameter that any optimizer built before the first forward holds and trains.
    """
    before = {names[0]: flags[pid] for pid, names in param_names(model).items() if pid in flags}
    after: dict[str, bool] = {}
    params = []
    for p in run.parameters:
        given = before.get(p.name, p.requires_grad)
        if given != p.requires_grad:
            after[p.name] = p.requires_grad
            p = dataclasses.replace(p, requires_grad=given)
        params.append(p)
    return (dataclasses.replace(run, parameters=tuple(params)) if after else run), after


def _buffer_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every name of every buffer, keyed by each of them (a module registered twice has two names)."""
    names: dict[int, list[str]] = {}
    for name, buf in model.named_buffers(remove_duplicate=False):
        known = names.setdefault(id(buf), [])
        if name not in known:
            known.append(name)
    return {n: tuple(ns) for ns in names.values() for n in ns}


def _settings(group: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for key, value in group.items():
        if key == "params" or value is None:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, int, float, str)) or (
                isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)):
            out.append((key, str(value)))
    return tuple(out)


def _nonzero_state(state: dict[str, Any] | None) -> tuple[str, ...]:
    if not state:
        return ()
    keys = []
    for key, value in state.items():
        if key == "step" or not isinstance(value, torch.Tensor) or value.numel() == 0:
            continue
        if value.device.type != "meta" and bool((value != 0).any()):
            keys.append(key)
    return tuple(keys)


def _changed(before: torch.Tensor, after: torch.Tensor) -> tuple[bool, float]:
    """Bit-level change (NaN equal to NaN) and the largest absolute difference."""
    if before.is_floating_point() or before.is_complex():
        same_nan = torch.isnan(before) == torch.isnan(after)
        equal = bool(same_nan.all()) and torch.equal(torch.nan_to_num(before), torch.nan_to_num(after))
        delta = float((after.detach() - before).abs().nan_to_num().max()) if before.numel() else 0.0
    else:
        equal = torch.equal(before, after)
        delta = float((after.detach().double() - before.double()).abs().max()) if before.numel() else 0.0
    return not equal, delta


def _step(opt: torch.optim.Optimizer, what: str) -> None:
    try:
        opt.step()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise RunError(f"{what} raised {describe_exception(exc)}; freeze-check calls step() without a closure on "
                       f"the gradients of one forward/backward") from exc


def _optimizer_facts(model: nn.Module, opt: torch.optim.Optimizer, grads: dict[int, torch.Tensor],
                     label: str) -> OptimizerFacts:
    names = param_names(model)
    params = {id(p): p for p in model.parameters()}
    membership: dict[int, list[int]] = {}
    foreign = 0
    for gi, group in enumerate(opt.param_groups):
        for p in group["params"]:
            if id(p) in params:
                membership.setdefault(id(p), []).append(gi)
            else:
                foreign += 1
    groups = tuple(OptimizerGroup(gi, len(g["params"]), _settings(g)) for gi, g in enumerate(opt.param_groups))
    kind = type(opt).__name__
    if any(p.device.type == "meta" for p in params.values()):
        rows = tuple(OptimizerParam(names[pid][0], tuple(membership.get(pid, ())), pid in grads, None, None, None,
                                    None) for pid in params)
        return OptimizerFacts(kind, label, groups, rows, foreign,
                              steps_skipped="parameters are on the meta device: values are unknown, so the "
                                            "optimizer steps were not run")
    # the real step, on the gradients of the train-mode backward (None where autograd gave none)
    for pid, p in params.items():
        p.grad = grads.get(pid)
    before = {pid: p.detach().clone() for pid, p in params.items()}
    _step(opt, "optimizer.step()")
    moved = {pid: _changed(before[pid], p) for pid, p in params.items()}
    # the mid-training trap: a parameter that had gradients before it was frozen keeps a zero .grad
    opt.zero_grad(set_to_none=False)
    for pid in membership:
        p = params[pid]
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    state = {pid: _nonzero_state(opt.state.get(params[pid])) for pid in membership}
    before = {pid: p.detach().clone() for pid, p in params.items()}
    _step(opt, "the second optimizer.step() (after zero_grad(set_to_none=False))")
    trap = {pid: _changed(before[pid], p) for pid, p in params.items()}
    rows = tuple(OptimizerParam(
        name=names[pid][0], groups=tuple(membership.get(pid, ())), had_grad=pid in grads,
        moved=moved[pid][0], delta=moved[pid][1], trap_moved=trap[pid][0], trap_delta=trap[pid][1],
        state=state.get(pid, ()),
    ) for pid in params)
    return OptimizerFacts(kind, label, groups, rows, foreign)
