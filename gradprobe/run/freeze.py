"""The torch side of freeze-check: one train-mode forward/backward, then the optimizer steps.

The probe engine gives the gradient facts; ``freeze_steps`` adds what only a real optimizer shows:
param-group membership and the steps a training loop runs on those gradients.  Parameter values,
gradients, flags, buffers and the optimizer's state are all put back afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError
from gradprobe.facts.freeze import FreezeFacts
from gradprobe.facts.run import RunFacts
from gradprobe.run.freeze_steps import OptimizerSource, build_optimizer, optimizer_facts
from gradprobe.run.inputs import RunInputs as ExampleInputs
from gradprobe.run.probe import LossFn, ProbeOptions, param_names, run_probe
from gradprobe.run.state import ModelState

__all__ = ["OptimizerSource", "build_optimizer", "run_freeze"]


def run_freeze(model: nn.Module, inputs: ExampleInputs, *, optimizer: OptimizerSource | None = None,
               optimizer_label: str = "optimizer", loss: str | LossFn = "sum", seed: int | None = 0,
               target: str = "", memory_detail: bool = False) -> FreezeFacts:
    """Collect the facts freeze-check judges; the model and the optimizer are left exactly as found.

    ``memory_detail`` also records what only the pictures need (the HTML report): memory with its event log and
    the grad_fn graph.  Off by default, so the checks cost what they always did.
    """
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
            options = ProbeOptions(mode="train", grad_mode="grad", loss=loss, backward=True, memory=memory_detail,
                                   tensors=True, graph=memory_detail, seed=seed, memory_detail=memory_detail)
            run = run_probe(model, inputs, options, target).facts
        finally:
            for h in hooks:
                h.remove()
        if not run.backward and run.loss is None and run.device != "meta":
            raise RunError(f"freeze-check needs a backward: {run.backward_skipped_reason}; pass --loss MOD:fn "
                           f"returning a scalar from the outputs")
        run, flags_after = _flags_as_given(model, run, flags)
        opt_facts = optimizer_facts(model, opt, grads, optimizer_label) if opt is not None else None
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
    flipped = set(run.requires_grad_changed)  # the engine already reports these as handed over to forward
    for p in run.parameters:
        given = before.get(p.name, p.requires_grad)
        if p.name in flipped:
            after[p.name] = not p.requires_grad
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
