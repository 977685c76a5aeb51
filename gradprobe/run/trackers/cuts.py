"""Where forward cuts the autograd graph, which parameters it reads, and which flags it flips.

A parameter that gets no gradient was either never read by forward, or read but cut off from the loss.
Telling which, and naming the place of the cut, needs facts gathered *while* forward runs: after it,
a detached branch's graph is gone.  A ``TorchFunctionMode`` sees every torch call above autograd
(so, unlike a dispatch mode, it sees real ``requires_grad`` flags), including the ``.data`` getter:

* each call's tensor arguments that are parameters mark them as read;
* a call whose tensor inputs require grad but whose outputs do not is a *cut*, recorded per
  (module call, mechanism, op) with the parameters upstream of it: ``detach``, ``.data``, an op under
  ``torch.no_grad()`` / ``inference_mode``, an op without derivative (``argmax``, a comparison,
  ``.item()``).  Ops inside a custom ``torch.autograd.Function``'s forward run with grad off by design
  and are no cut -- except inside ``torch.utils.checkpoint``'s reentrant ``CheckpointFunction``, whose
  parameters get no gradient when none of its inputs requires grad.

The upstream walk visits each node of the graph behind a cut's inputs once per cut, within a budget
(``_WALK_NODES`` per cut keeps the walked depth under the engine's safe-free depth, see
``gradprobe.run.trackers.release``); a cut whose walk hit the budget says so (``complete=False``).
Code TorchScript runs is invisible here, as it is to module hooks.

Measured cost (torch 2.13 CPU, a shared 2-core machine): 5-7 µs per torch call on top of the call itself;
a GPT-2-small forward makes about 290 torch calls, so the cost stays in the run-to-run noise of a probe.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from types import CodeType, FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from gradprobe.facts.run import GradState, GraphCut, RunFacts
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.trackers.base import NamedModules, first_names

__all__ = ["CutTracker", "zero_valued_partners"]

_DATA = torch._C.TensorBase.__dict__["data"]
_APPLY: CodeType = torch.autograd.function.Function.apply.__func__.__code__  # type: ignore[attr-defined]
_ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad
_VALUE_OPS = frozenset({"item", "tolist", "numpy", "__float__", "__int__", "__complex__"})
_DETACH = frozenset({"detach", "detach_"})
_WALK_NODES = 10_000  # per cut
_TOTAL_NODES = 200_000  # per run
_FRAMES = 200  # how far up the Python stack a custom Function's apply is looked for


def _checkpoint_function() -> type | None:
    try:
        from torch.utils.checkpoint import CheckpointFunction
    except ImportError:  # pragma: no cover - present in every supported torch
        return None
    return CheckpointFunction


_CHECKPOINT = _checkpoint_function()


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> list[torch.Tensor]:
    """Tensor arguments, one level into lists and tuples (``torch.cat([a, b])``, ``_VF.lstm``'s weights)."""
    found: list[torch.Tensor] = []
    values: Any = args if not kwargs else (*args, *kwargs.values())
    for a in values:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif type(a) in (list, tuple):
            found.extend(x for x in a if isinstance(x, torch.Tensor))
    return found


def _op_name(func: Any) -> str:
    if getattr(func, "__self__", None) is _DATA:
        return "data"
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name)


def _grad_off_context() -> str | None:
    """Why grad is off for this call: ``no_grad`` (the user's), ``reentrant_checkpoint``, or None (a custom
    ``autograd.Function``'s forward, where grad is off by design)."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(_FRAMES):
        if frame is None:
            break
        if frame.f_code is _APPLY:
            cls = frame.f_locals.get("cls")
            return "reentrant_checkpoint" if _CHECKPOINT is not None and cls is _CHECKPOINT else None
        frame = frame.f_back
    return "no_grad"


class _Mode(TorchFunctionMode):
    def __init__(self, tracker: CutTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if type(func) is _METHOD_WRAPPER and func.__self__ is not _DATA:
            return out  # a property getter other than .data (.shape, .dtype, ...)
        self.tracker._seen(func, args, kwargs, out)
        return out


_METHOD_WRAPPER = type(torch.Tensor.shape.__get__)  # type: ignore[attr-defined]


class CutTracker:
    """Context manager around forward; :meth:`apply` adds what it saw to the run's facts."""

    def __init__(self, model: nn.Module, names: Mapping[int, str], *, cuts: bool = True,
                 call_args: bool = True, named: NamedModules) -> None:
        """``named``: ``model.named_modules(remove_duplicate=False)``, walked once by the caller."""
        self._names = dict(names)  # id(param) -> canonical name
        self._call_args = call_args
        self._params = {id(p): p for p in model.parameters()}
        # named_modules() order, each module once under its first name
        self._named = first_names(named)
        self._modules = {id(mod): name for name, mod in self._named}
        self._model = model
        self._watch = cuts
        self._stack: list[tuple[str, int]] = []
        self._calls: dict[str, int] = {}
        self._cuts: dict[tuple[str, int, str, str], tuple[set[str], bool]] = {}
        self._read: set[str] = set()
        self._budget = _TOTAL_NODES
        self._flags_before: dict[int, bool] = {}
        self._training_before: dict[str, bool] = {}
        self._flags_after: dict[int, bool] = {}
        self._training_after: dict[str, bool] = {}
        self._handles: list[Any] = []
        self._mode: _Mode | None = None

    # ---- context
    def __enter__(self) -> CutTracker:
        self._flags_before = {pid: p.requires_grad for pid, p in self._params.items()}
        self._training_before = {name: mod.training for name, mod in self._named}
        if self._watch:
            self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
            self._mode = _Mode(self)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)
        finally:
            self._mode = None
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._stack.clear()
            self._flags_after = {pid: p.requires_grad for pid, p in self._params.items()}
            self._training_after = {name: mod.training for name, mod in self._named}

    # A parameter a module call returns (and, with ``call_args``, takes as a positional argument) counts as read,
    # even when no torch call of forward takes it (a module returning its own weight).  The module recorder's
    # hooks marked these by reading their metadata under this mode (the arguments only when it records memory);
    # they now read with torch functions off (issue 16), so these hooks mark the same parameters.
    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self._modules.get(id(module))
        if name is not None:
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            self._stack.append((name, call))
            if self._call_args:
                names = self._names
                for arg in args:
                    if id(arg) in names and isinstance(arg, torch.Tensor):
                        self._read.add(names[id(arg)])

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self._modules.get(id(module))
        if name is None:
            return
        names = self._names
        if isinstance(output, torch.Tensor):
            if id(output) in names:
                self._read.add(names[id(output)])
        elif output is not None:
            for _, t in flatten_tensors(output):
                if id(t) in names:
                    self._read.add(names[id(t)])
        while self._stack:  # a user hook that skipped our pre-hook: resynchronise on the name
            if self._stack.pop()[0] == name:
                break

    # ---- every torch call
    def _seen(self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None, out: Any) -> None:
        tensors = _tensors(args, kwargs)
        if not tensors:
            return
        names = self._names
        needs = []
        for t in tensors:
            if id(t) in names:
                self._read.add(names[id(t)])
            if t.requires_grad:
                needs.append(t)
        if not needs:
            return
        if isinstance(out, torch.Tensor):
            if out.requires_grad:
                return
            op = _op_name(func)
        elif type(out) in (list, tuple):
            outs = [o for o in out if isinstance(o, torch.Tensor)]
            if not outs or any(o.requires_grad for o in outs):
                return
            op = _op_name(func)
        else:
            op = _op_name(func)
            if op not in _VALUE_OPS:
                return  # .size(), .dim(), __bool__: no value flows on
        how = self._how(op, func)
        if how is not None:
            self._record(how, op, needs)

    def _how(self, op: str, func: Any) -> str | None:
        if op in _DETACH:
            return "detach"
        if op == "data":
            return "data"
        if torch.is_inference_mode_enabled():
            return "inference_mode"
        if not torch.is_grad_enabled():
            return _grad_off_context()
        return "non_differentiable"

    def _record(self, how: str, op: str, needs: list[torch.Tensor]) -> None:
        module, call = self._stack[-1] if self._stack else ("", 0)
        key = (module, call, how, op)
        params, complete = self._cuts.get(key, (set(), True))
        found, whole = self._upstream(needs)
        params |= found
        self._cuts[key] = (params, complete and whole)

    def _upstream(self, tensors: list[torch.Tensor]) -> tuple[set[str], bool]:
        """Canonical names of the parameters behind ``tensors``, breadth-first over their grad_fn graph."""
        names = self._names
        found = {names[id(t)] for t in tensors if t.grad_fn is None and id(t) in names}
        queue = [t.grad_fn for t in tensors if t.grad_fn is not None]
        seen = {id(n) for n in queue}
        limit = min(_WALK_NODES, self._budget)
        i = 0
        while i < len(queue) and i < limit:
            node = queue[i]
            i += 1
            if type(node) is _ACCUMULATE_GRAD:
                name = names.get(id(node.variable))
                if name is not None:
                    found.add(name)
                continue
            for child, _ in node.next_functions:
                if child is not None and id(child) not in seen:
                    seen.add(id(child))
                    queue.append(child)
        self._budget -= i
        complete = i >= len(queue)
        queue.clear()  # the last references this walk held: root-first, as the graph walker does
        return found, complete

    # ---- facts
    def cuts(self) -> tuple[GraphCut, ...]:
        return tuple(GraphCut(module, call, how, op, tuple(sorted(params)), complete)
                     for (module, call, how, op), (params, complete) in self._cuts.items())

    def apply(self, facts: RunFacts) -> RunFacts:
        """Facts with flags as handed over to forward, plus the cuts, the parameters read and the flips."""
        flipped = {pid for pid, before in self._flags_before.items() if self._flags_after.get(pid, before) != before}
        switched = tuple(name for name, before in self._training_before.items()
                         if self._training_after.get(name, before) != before)
        given = {self._names[pid]: self._flags_before[pid] for pid in flipped if pid in self._names}
        parameters = facts.parameters
        modules = facts.modules
        if given:
            parameters = tuple(replace(p, requires_grad=given[p.name]) if p.name in given else p for p in parameters)
        if switched:
            before = self._training_before
            modules = tuple(replace(m, training=before[m.name]) if m.name in switched else m for m in modules)
            parameters = tuple(replace(p, module_training=before[p.module])
                               if p.module in switched else p for p in parameters)
        return replace(
            facts, parameters=parameters, modules=modules, graph_cuts=self.cuts() if self._watch else (),
            parameters_read=frozenset(self._read) if self._watch else None,
            requires_grad_changed=tuple(sorted(given)), training_changed=switched,
            zero_valued_parameters=zero_valued_partners(self._model, facts) if facts.backward else (),
        )


def zero_valued_partners(model: nn.Module, facts: RunFacts) -> tuple[str, ...]:
    """All-zero parameters next to one whose gradient is exactly zero (in the subtree of its owner's parent).

    A product with a zero-initialised factor (LoRA's ``B = 0``) gives the other factor an exactly zero
    gradient on the first step.  Only checked near zero gradients, so a normal run reads no parameter values.
    """
    zero = [p for p in facts.parameters if p.requires_grad and p.grad is GradState.ZERO]
    if not zero:
        return ()
    scopes = {p.module.rpartition(".")[0] if p.module else "" for p in zero}
    out = []
    for name, param in model.named_parameters():
        if not any(s == "" or name.startswith(s + ".") for s in scopes):
            continue
        if param.device.type == "meta" or not (param.is_floating_point() or param.is_complex()):
            continue
        with torch.no_grad():
            if param.numel() and not bool(torch.any(param != 0)):
                out.append(name)
    return tuple(out)
