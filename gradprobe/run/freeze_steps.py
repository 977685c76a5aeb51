"""The optimizer side of freeze-check: param-group membership and the steps a training loop runs.

``optimizer_facts`` runs ``STEPS`` iterations of what user code does: the gradients as backward left
them (a parameter backward does not reach keeps its ``.grad``: ``None`` stays ``None``, a stale one
stays), ``optimizer.step()``, then the optimizer's own ``zero_grad()``.  gradprobe never puts a
gradient on a parameter itself.  In plain PyTorch a frozen parameter keeps ``.grad=None``, so
torch.optim skips it and creates no state for it: it stays bit-identical however the optimizer is
configured.  What does move it is measured here: a stale ``.grad``, state from a resumed checkpoint
(momentum, Adam's averages) together with a ``.grad``, weight decay on a zero ``.grad``, a shared storage.

The caller restores the model; the user's ``.grad`` tensors are never written (the steps use copies),
and tensors in the param groups that are not the model's are put back here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, TargetError, describe_exception
from gradprobe.facts.freeze import OptimizerFacts, OptimizerGroup, OptimizerParam, OptimizerState
from gradprobe.facts.run import GradState
from gradprobe.run.probe import param_names
from gradprobe.run.state import restore_tensor

OptimizerSource = torch.optim.Optimizer | Callable[[nn.Module], Any]
STEPS = 3  # step 1 applies what backward left (stale .grad included); later steps what zero_grad() left


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


def _values(t: torch.Tensor) -> torch.Tensor:
    return t.coalesce()._values() if t.is_sparse else t


def _any_nonzero(t: torch.Tensor) -> bool:
    return t.device.type != "meta" and t.numel() > 0 and bool((_values(t) != 0).any())


def _grad_state(g: torch.Tensor) -> GradState:
    if g.device.type == "meta":
        return GradState.PRESENT
    return GradState.NONZERO if _any_nonzero(g) else GradState.ZERO


def _state(entry: dict[str, Any] | None) -> OptimizerState:
    """The tensor entries of one parameter's optimizer state, which of them are nonzero, and their bytes."""
    if not entry:
        return OptimizerState()
    tensors = {k: v for k, v in entry.items() if isinstance(v, torch.Tensor)}
    keys = tuple(k for k, v in tensors.items() if k != "step" and v.numel() > 0)
    return OptimizerState(keys=keys, nonzero=tuple(k for k in keys if _any_nonzero(tensors[k])),
                          nbytes=sum(v.numel() * v.element_size() for v in tensors.values()))


def _equal(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Bit-level equality, NaN equal to NaN."""
    if before.is_floating_point() or before.is_complex():
        return bool((torch.isnan(before) == torch.isnan(after)).all()) and torch.equal(
            torch.nan_to_num(before), torch.nan_to_num(after))
    return torch.equal(before, after)


def _delta(before: torch.Tensor, after: torch.Tensor) -> float:
    """The largest absolute difference (NaN positions count as 0)."""
    if not before.numel():
        return 0.0
    if before.is_floating_point() or before.is_complex():
        return float((after.detach() - before).abs().nan_to_num().max())
    return float((after.detach().double() - before.double()).abs().max())


def _call(what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise RunError(f"{what} raised {describe_exception(exc)}; freeze-check calls it as a training loop does, "
                       f"without a closure, on the gradients of one forward/backward") from exc


@contextmanager
def _foreign_kept(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Tensors in the param groups that are not the model's: values and ``.grad`` put back afterwards."""
    saved = [(t, t.detach().clone(), t.grad) for t in tensors if t.device.type != "meta"]
    for t, _, grad in saved:
        if grad is not None:
            t.grad = grad.clone()
    try:
        yield
    finally:
        for t, value, grad in saved:
            restore_tensor(t, value)
            t.grad = grad


def _membership(opt: torch.optim.Optimizer, params: dict[int, nn.Parameter]
                ) -> tuple[dict[int, list[int]], list[torch.Tensor]]:
    """Param-group indices per model parameter (one per listing), and the tensors that are not the model's."""
    membership: dict[int, list[int]] = {}
    foreign: dict[int, torch.Tensor] = {}
    for gi, group in enumerate(opt.param_groups):
        for p in group["params"]:
            if id(p) in params:
                membership.setdefault(id(p), []).append(gi)
            else:
                foreign[id(p)] = p
    return membership, list(foreign.values())


def _run_steps(opt: torch.optim.Optimizer, params: dict[int, nn.Parameter], grads: dict[int, torch.Tensor],
               start: dict[int, torch.Tensor]) -> tuple[dict[int, int], GradState | None]:
    """``STEPS`` training iterations; the first step that changed each parameter, and what zero_grad() left."""
    for p in params.values():  # copies: the optimizer and zero_grad(set_to_none=False) write into .grad
        if p.grad is not None:
            p.grad = p.grad.detach().clone()
    moved: dict[int, int] = {}
    keeps: GradState | None = None
    for k in range(1, STEPS + 1):
        for pid, p in params.items():  # backward accumulates into .grad; parameters it does not reach keep theirs
            g = grads.get(pid)
            if g is not None:
                p.grad = g.detach().clone() if p.grad is None else p.grad + g
        _call("optimizer.step()", opt.step)
        for pid, p in params.items():
            if pid not in moved and not _equal(start[pid], p):
                moved[pid] = k
        had = [p for p in params.values() if p.grad is not None]
        _call("optimizer.zero_grad()", opt.zero_grad)
        if keeps is None and had:
            keeps = GradState.ABSENT if all(p.grad is None for p in had) else GradState.ZERO
    return moved, keeps


def optimizer_facts(model: nn.Module, opt: torch.optim.Optimizer, grads: dict[int, torch.Tensor],
                    label: str) -> OptimizerFacts:
    """Membership, then the steps a training loop runs on the gradients of the train-mode backward."""
    names = param_names(model)
    params = {id(p): p for p in model.parameters()}
    membership, foreign = _membership(opt, params)
    groups = tuple(OptimizerGroup(gi, len(g["params"]), _settings(g)) for gi, g in enumerate(opt.param_groups))
    kind = type(opt).__name__
    before = {pid: _state(opt.state.get(params[pid])) for pid in membership}
    stale = {pid: _grad_state(p.grad) for pid, p in params.items() if p.grad is not None and pid not in grads}
    if any(p.device.type == "meta" for p in params.values()):
        rows = tuple(OptimizerParam(names[pid][0], tuple(membership.get(pid, ())), pid in grads, None, None,
                                    stale_grad=stale.get(pid), state_before=before.get(pid, OptimizerState()))
                     for pid in params)
        return OptimizerFacts(kind, label, groups, rows, len(foreign),
                              steps_skipped="parameters are on the meta device: values are unknown, so the "
                                            "optimizer steps were not run")
    start = {pid: p.detach().clone() for pid, p in params.items()}
    with _foreign_kept(foreign):
        moved, keeps = _run_steps(opt, params, grads, start)
    after = {pid: _state(opt.state.get(params[pid])) for pid in membership}
    rows = []
    for pid, p in params.items():
        rows.append(OptimizerParam(
            name=names[pid][0], groups=tuple(membership.get(pid, ())), had_grad=pid in grads, moved=pid in moved,
            delta=_delta(start[pid], p) if pid in moved else 0.0, moved_step=moved.get(pid), stale_grad=stale.get(pid),
            state_before=before.get(pid, OptimizerState()), state_after=after.get(pid, OptimizerState())))
    return OptimizerFacts(kind, label, groups, tuple(rows), len(foreign), steps=STEPS, zero_grad_keeps=keeps)
