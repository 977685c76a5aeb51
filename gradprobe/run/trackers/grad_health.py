"""Tracker for ``--grads``: per module call, NaN/Inf in the forward and the gradient norm reaching it in backward.

Forward (a pair of global module hooks, removed on exit): every call's floating output is checked for NaN/Inf
(a sum per output, exact counts only when it is not finite); outputs and inputs that require grad get a tensor
hook (``Tensor.register_hook``) that records the norm of the gradient reaching them.  A tensor is hooked once,
however many calls return or take it (a Sequential returns its last child's output), keyed by identity and
version (an in-place ReLU makes a new version with its own gradient).  No graph is retained and no extra
backward runs.  ReLU/ReLU6 calls also record, per unit, whether any sample activated it.

The first call that returned NaN/Inf from finite inputs keeps a copy of its inputs: after the run the op that
made the value is located by running that call once more (:mod:`gradprobe.run.trackers.nonfinite_origin`).

Backward: before it starts, the graph under the model's outputs is walked once and the nodes whose formula can
turn finite gradients into NaN/Inf (sqrt, pow, div, log, norms, custom ``autograd.Function``\\ s, ...) get a
post-hook recording whether they did.  The tracker's own ops run under ``no_grad`` and out of sight of the
run's dispatch modes, so the memory figures are the model's.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._pytree import tree_leaves

from gradprobe.facts.grad_health import (
    FLOAT16_TINY,
    CallGrad,
    DeadUnits,
    GradHealthFacts,
    GradThresholds,
    NodeGrad,
    NonfiniteOrigin,
)
from gradprobe.facts.run import RunFacts
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.trackers.base import BACKWARD, FORWARD, Phase
from gradprobe.run.trackers.grad_stats import has_nonfinite, measurable, nonfinite_count, norm, param_grads, quiet
from gradprobe.run.trackers.modules import Call, CallTimeline
from gradprobe.run.trackers.modules import dtype_name as _dtype_name
from gradprobe.run.trackers.nonfinite_origin import CallCopy, autocast_state, copy_value, locate
from gradprobe.run.values import stored_values

# backward formulas that can turn finite incoming gradients into NaN/Inf (a division by the input or the
# result, a log, a power, a norm at zero); custom autograd.Function nodes are watched too
WATCHED_KINDS = frozenset({
    "SqrtBackward0", "RsqrtBackward0", "PowBackward0", "PowBackward1", "PowBackward2", "DivBackward0",
    "DivBackward1", "DivBackward2", "DivBackward3", "ReciprocalBackward0", "LogBackward0", "Log2Backward0",
    "Log10Backward0", "Log1PBackward0", "XlogyBackward0", "NormBackward0", "NormBackward1", "NormBackward2",
    "NormBackward3", "LinalgVectorNormBackward0", "LinalgNormBackward0", "AcosBackward0", "AsinBackward0",
    "AtanhBackward0", "AcoshBackward0", "Atan2Backward0", "CdistBackward0", "StdBackward0", "VarBackward0",
    "ProdBackward0", "ProdBackward1", "CumprodBackward0", "ExpBackward0", "Exp2Backward0",
    "LgammaBackward0", "DigammaBackward0", "ErfinvBackward0", "AngleBackward0", "SgnBackward0", "TanBackward0",
})
_RELU = (nn.ReLU, nn.ReLU6)
# modules whose output is finite whenever their inputs are (bounded, or |f(x)| <= |x| elementwise, or a max/mean
# accumulated in float32): their outputs are not read again when every input was checked finite
_FINITE_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid,
                      nn.Hardswish, nn.GELU, nn.SiLU, nn.Softsign, nn.Identity, nn.Flatten, nn.Unflatten,
                      nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.Embedding, nn.LayerNorm)


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``, remembered (it runs for every output and gradient)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = _dtype_name(dtype)
    return name


class CallSource(Protocol):
    """Which call made an autograd node (a :class:`~gradprobe.run.trackers.modules.ModuleRecorder`)."""

    names: dict[int, str]

    def timeline(self) -> CallTimeline: ...


@dataclass
class _Slot:
    """One hooked tensor (a module output or input): its forward check and the gradient that reached it."""

    ref: Any  # weak reference to the tensor
    owner: int | None  # the call that returned it first (None: an input made outside any recorded call)
    numel: int
    nonfinite: int | None = None  # NaN/Inf elements when a call returned it (None: not checked)
    norm: torch.Tensor | None = None
    rank: int | None = None
    grad_dtype: str | None = None
    grad_numel: int = 0
    zeros: torch.Tensor | None = None  # float16 gradients only
    subnormal: torch.Tensor | None = None


@dataclass
class _Call:
    module: str
    call: int
    type: str
    parent: int | None
    finished: int = -1
    out_slots: list[int] = field(default_factory=list)
    in_slots: list[int] = field(default_factory=list)
    inputs_from: list[int] = field(default_factory=list)
    outputs: int = 0
    numel: int = 0
    dtype: str = ""
    dead: tuple[torch.Tensor, int, int, int] | None = None  # (max per unit, unit dim, units, samples)


@dataclass
class _Node:
    kind: str
    call: int | None
    rank: int = -1
    bad_in: torch.Tensor | None = None
    bad_out: torch.Tensor | None = None


class GradHealthTracker:
    """Tracker for both phases of a ``--grads`` run; ``facts()`` gives :class:`GradHealthFacts`."""

    phases = (FORWARD, BACKWARD)

    def __init__(self, model: nn.Module, calls: CallSource, device: torch.device,
                 thresholds: GradThresholds | None = None, display_depth: int = 8) -> None:
        self._model = model
        self._source = calls
        self._names = calls.names
        self._device = device
        self._thresholds = thresholds or GradThresholds()
        self._depth = display_depth
        self._calls: list[_Call] = []
        self._stack: list[int] = []
        self._count: dict[str, int] = {}
        self._finished = 0
        self._slots: list[_Slot] = []
        self._by_key: dict[tuple[int, int], int] = {}  # (id(tensor), version) -> slot
        self._by_id: dict[int, int] = {}  # id(tensor) -> its latest slot
        self._tensor_hooks: list[Any] = []
        self._node_hooks: list[Any] = []
        self._nodes: list[_Node] = []
        self._fired = 0
        self._node_rank = 0
        self._origin_done = False
        self._origin_call: int | None = None
        self._origin_copy: CallCopy | None = None
        self._backward = False
        self._facts: GradHealthFacts | None = None
        self._measure = device.type != "meta"

    # ---------------------------------------------------------------------------------------------- phases

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        if phase == FORWARD:
            handles = [register_module_forward_pre_hook(self._pre),
                       register_module_forward_hook(self._post, with_kwargs=True)]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()
                self._stack.clear()
            return
        if self._measure:
            self._watch_nodes()
        self._backward = True
        try:
            yield
        finally:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in (*self._tensor_hooks, *self._node_hooks):
            handle.remove()
        self._tensor_hooks.clear()
        self._node_hooks.clear()

    # --------------------------------------------------------------------------------------------- forward

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        number = self._count.get(name, 0)
        self._count[name] = number + 1
        self._calls.append(_Call(name, number, type(module).__name__, self._stack[-1] if self._stack else None))
        self._stack.append(len(self._calls) - 1)

    def _post(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        while self._stack and self._calls[self._stack[-1]].module != name:  # a user hook skipped our pre-hook
            self._stack.pop()
        if not self._stack:
            return
        index = self._stack.pop()
        call = self._calls[index]
        call.finished = self._finished
        self._finished += 1
        with quiet():
            inputs = _tensors(args, kwargs)
            self._inputs(index, inputs)
            outputs = [output] if isinstance(output, torch.Tensor) else [t for _, t in flatten_tensors(output)]
            clean = isinstance(module, _FINITE_PRESERVING) and self._finite_inputs(inputs)
            self._outputs(index, [t for t in outputs if _floating(t)], clean)
            if isinstance(module, _RELU):
                self._dead_units(index, output)
            if not self._origin_done and self._measure and any(self._slots[s].nonfinite for s in call.out_slots):
                self._origin(index, module, args, kwargs, inputs)

    def _known(self, t: torch.Tensor, exact: bool) -> int | None:
        slot = self._by_key.get((id(t), t._version)) if exact else self._by_id.get(id(t))
        if slot is None or self._slots[slot].ref() is not t:
            return None
        return slot

    def _new_slot(self, t: torch.Tensor, owner: int | None) -> int:
        slot = len(self._slots)
        self._slots.append(_Slot(weakref.ref(t), owner, t.numel()))
        self._by_key[(id(t), t._version)] = slot
        self._by_id[id(t)] = slot
        if t.requires_grad and self._measure and measurable(t):
            self._tensor_hooks.append(t.register_hook(partial(self._on_grad, slot)))
        return slot

    def _inputs(self, index: int, inputs: list[torch.Tensor]) -> None:
        call = self._calls[index]
        for t in inputs:
            if isinstance(t, nn.Parameter):
                continue
            slot = self._known(t, exact=False)  # an in-place call sees its input at a newer version
            if slot is not None:
                owner = self._slots[slot].owner
                if owner is not None and owner not in call.inputs_from:
                    call.inputs_from.append(owner)
            elif t.requires_grad:
                slot = self._new_slot(t, None)
            if slot is not None and slot not in call.in_slots:
                call.in_slots.append(slot)

    def _finite_inputs(self, inputs: list[torch.Tensor]) -> bool:
        """Every floating input is a tensor already checked and found finite (no new read)."""
        for t in inputs:
            slot = self._known(t, exact=False)
            if slot is None or self._slots[slot].nonfinite != 0:
                return False
        return bool(inputs)

    def _outputs(self, index: int, outputs: list[torch.Tensor], clean: bool = False) -> None:
        call = self._calls[index]
        for t in outputs:
            slot = self._known(t, exact=True)
            if slot is None:
                slot = self._new_slot(t, index)
            record = self._slots[slot]
            if record.nonfinite is None and self._measure and measurable(t):
                record.nonfinite = 0 if clean else sum(nonfinite_count(t)) if has_nonfinite(t) else 0
            if slot not in call.out_slots:
                call.out_slots.append(slot)
                call.outputs += 1
                call.numel += t.numel()
                call.dtype = call.dtype or dtype_name(t.dtype)

    def _dead_units(self, index: int, output: Any) -> None:
        """Per unit, the largest output of a ReLU over the batch: 0 means no sample activated it."""
        if not isinstance(output, torch.Tensor) or not measurable(output) or not output.is_floating_point() \
                or output.numel() == 0:
            return
        call = self._calls[index]
        producer = self._calls[call.inputs_from[0]] if call.inputs_from else None
        if output.dim() == 0:
            return
        last = output.dim() <= 2 or (producer is not None and producer.type in {c.__name__ for c in _FEATURES_LAST})
        dim = -1 if last else 1
        units = output.shape[dim]
        others = tuple(d for d in range(output.dim()) if d != dim % output.dim())
        per_unit = output.detach().amax(dim=others) if others else output.detach()
        call.dead = (per_unit, dim, units, output.numel() // max(units, 1))

    def _origin(self, index: int, module: nn.Module, args: Any, kwargs: Any, inputs: list[torch.Tensor]) -> None:
        """The first call returning NaN/Inf: the origin when its inputs were finite (kept for a replay)."""
        bad_input = False
        for t in inputs:
            slot = self._known(t, exact=True)
            checked = self._slots[slot].nonfinite if slot is not None else None
            if (checked if checked is not None else (measurable(t) and has_nonfinite(t))):
                bad_input = True
                break
        if not bad_input:
            self._origin_done = True
            self._origin_call = index
            devices = list({t.device for t in inputs} | {self._device})
            self._origin_copy = CallCopy(module, copy_value(args), copy_value(kwargs),
                                         autocast_state(tuple({"cpu", *(d.type for d in devices)})), devices)
        elif self._calls[index].parent is None:  # the model's own inputs held NaN/Inf
            self._origin_done = True
            self._origin_call = None

    # -------------------------------------------------------------------------------------------- backward

    def _on_grad(self, slot: int, grad: torch.Tensor) -> None:
        record = self._slots[slot]
        record.rank = self._fired
        self._fired += 1
        if not measurable(grad):
            return
        with quiet():
            values = stored_values(grad)
            record.norm = norm(values)
            record.grad_dtype = dtype_name(grad.dtype)
            record.grad_numel = values.numel()
            if grad.dtype == torch.float16:
                record.zeros = (values == 0).sum()
                record.subnormal = ((values != 0) & (values.abs() < FLOAT16_TINY)).sum()

    def _watch_nodes(self) -> None:
        """Post-hooks on the nodes under the model's outputs that can make NaN/Inf from finite gradients."""
        timeline = self._source.timeline()
        index_of = {(c.module, c.call): i for i, c in enumerate(self._calls)}
        stack: list[Any] = []
        for call in self._calls:
            if call.parent is None:
                for slot in call.out_slots:
                    t = self._slots[slot].ref()
                    if t is not None and t.grad_fn is not None:
                        stack.append(t.grad_fn)
        seen: set[Any] = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            kind = type(node).__name__
            if kind in WATCHED_KINDS or isinstance(node, torch.autograd.function.BackwardCFunction):
                made_in: Call | None = timeline.call_of(node._sequence_nr()) if timeline.seqs else None
                self._nodes.append(_Node(kind, index_of.get(made_in) if made_in is not None else None))
                self._node_hooks.append(node.register_hook(partial(self._on_node, len(self._nodes) - 1)))
            stack.extend(child for child, _ in node.next_functions if child is not None and child not in seen)
        seen.clear()  # the graph's owners free it: no reference to a node outlives the walk

    def _on_node(self, index: int, grad_inputs: Sequence[torch.Tensor | None],
                 grad_outputs: Sequence[torch.Tensor | None]) -> None:
        record = self._nodes[index]
        record.rank = self._node_rank
        self._node_rank += 1
        with quiet():
            record.bad_in = _bad(grad_outputs)
            record.bad_out = _bad(grad_inputs)

    # ----------------------------------------------------------------------------------------------- facts

    def refine(self, facts: RunFacts) -> RunFacts:
        """The run's facts with ``grad_health`` filled in (the run calls this after its fact builders)."""
        return replace(facts, grad_health=self.facts())

    def facts(self) -> GradHealthFacts:
        if self._facts is None:
            self._remove_hooks()
            self._facts = self._build()
            self._origin_copy = None
        return self._facts

    def _build(self) -> GradHealthFacts:
        lazy = _Lazy()
        slot_at = [(lazy.add(s.norm), lazy.add(s.zeros), lazy.add(s.subnormal)) for s in self._slots]
        node_at = [(lazy.add(n.bad_in), lazy.add(n.bad_out)) for n in self._nodes]
        dead_at = {i: lazy.add(c.dead[0]) for i, c in enumerate(self._calls) if c.dead is not None}
        values = lazy.resolve()
        slot_values = [tuple(None if k is None else values[k] for k in at) for at in slot_at]
        calls = tuple(self._call_fact(c, slot_values, values[dead_at[i]] if i in dead_at else None)
                      for i, c in enumerate(self._calls))
        params = param_grads(_named_params(self._model), self._slices(calls)) if self._measure else ()
        origin = None
        if self._origin_copy is not None:
            origin = locate(self._origin_copy, self._origin_call if self._origin_call is not None else -1)
        elif self._origin_done:
            origin = NonfiniteOrigin(call=None, note="the model's inputs held NaN/Inf")
        nodes = []
        for n, (bad_in, bad_out) in zip(self._nodes, node_at, strict=True):
            if n.rank >= 0 and bad_in is not None and bad_out is not None and values[bad_in] == 0 \
                    and values[bad_out] > 0:
                nodes.append(NodeGrad(n.kind, n.call, n.rank, int(values[bad_out])))
        return GradHealthFacts(
            measured=self._measure, backward=self._backward, parameters=params, calls=calls, forward_origin=origin,
            backward_nodes=tuple(sorted(nodes, key=lambda n: n.rank)), watched_kinds=tuple(sorted(WATCHED_KINDS)),
            thresholds=self._thresholds, display_depth=self._depth,
            notes=() if self._measure else ("the meta device holds no values: gradient figures need a real device",))

    def _call_fact(self, c: _Call, slot_values: list[tuple[Any, Any, Any]], maxima: Any) -> CallGrad:
        outs = [(self._slots[s], slot_values[s]) for s in c.out_slots]
        ins = [slot_values[s] for s in c.in_slots]
        half = [v for _, v in outs if v[1] is not None]
        checked = [s.nonfinite for s, _ in outs if s.nonfinite is not None]
        ranks = [s.rank for s, _ in outs if s.rank is not None]
        dead = None
        if c.dead is not None and maxima is not None:
            _, dim, units, samples = c.dead
            flags = [m == 0 for m in (maxima if isinstance(maxima, list) else [maxima])]
            dead = DeadUnits(units, sum(flags), dim, samples, tuple(i for i, f in enumerate(flags) if f)[:8])
        return CallGrad(
            module=c.module, call=c.call, type=c.type, parent=c.parent, finished=c.finished, outputs=c.outputs,
            output_numel=c.numel, output_dtype=c.dtype, nonfinite=sum(checked) if checked else None,
            grad_out_norm=_combined([v[0] for _, v in outs if v[0] is not None]),
            grad_in_norm=_combined([v[0] for v in ins if v[0] is not None]),
            grad_out_dtype=next((s.grad_dtype for s, _ in outs if s.grad_dtype), None),
            grad_out_numel=sum(s.grad_numel for s, _ in outs),
            grad_in_numel=sum(self._slots[s].grad_numel for s in c.in_slots),
            grad_out_zeros=int(sum(v[1] for v in half)) if half else None,
            grad_out_subnormal=int(sum(v[2] for v in half)) if half else None,
            backward_rank=min(ranks) if ranks else None, inputs_from=tuple(c.inputs_from), dead=dead)

    def _slices(self, calls: tuple[CallGrad, ...]) -> dict[str, tuple[bool, bool]]:
        """Parameters next to dead ReLU units: the producer's rows (its units) and the consumers' columns."""
        want: dict[str, tuple[bool, bool]] = {}
        modules = dict(self._model.named_modules(remove_duplicate=False))
        first = {id(p): n for n, p in reversed(list(self._model.named_parameters(remove_duplicate=False)))}
        consumers: dict[int, list[int]] = {}
        for k, c in enumerate(calls):
            for j in c.inputs_from:
                consumers.setdefault(j, []).append(k)
        for i, c in enumerate(calls):
            if c.dead is None or not c.dead.dead:
                continue
            for j in c.inputs_from:
                for p in _direct(modules.get(calls[j].module)):
                    name = first.get(id(p), "")
                    want[name] = (True, want.get(name, (False, False))[1])
            for k in consumers.get(i, ()):
                for p in _direct(modules.get(calls[k].module)):
                    name = first.get(id(p), "")
                    want[name] = (want.get(name, (False, False))[0], True)
        return want


def _direct(module: nn.Module | None) -> list[torch.Tensor]:
    return [p for p in module._parameters.values() if p is not None] if module is not None else []


def _named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each distinct parameter once, under its first qualified name (as the run's parameter facts)."""
    seen: set[int] = set()
    found = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            found.append((name, p))
    return found


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> list[torch.Tensor]:
    """The floating tensors among a call's arguments (a plain tuple of tensors without the pytree walk)."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return [a for a in args if _floating(a)]
    return [t for t in tree_leaves((args, kwargs)) if _floating(t)]


def _floating(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def _bad(grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """NaN/Inf elements over the gradients, as a lazy 0-d tensor."""
    counts = [torch.isfinite(stored_values(g)).logical_not().sum() for g in grads
              if g is not None and measurable(g) and (g.is_floating_point() or g.is_complex())]
    if not counts:
        return None
    return torch.stack([c.to(counts[0].device) for c in counts]).sum()


def _combined(norms: list[float]) -> float | None:
    """‖(a, b, ...)‖ of several tensors from their norms; None when no gradient reached any of them."""
    if not norms:
        return None
    return float(sum(n * n for n in norms) ** 0.5) if len(norms) > 1 else norms[0]


class _Lazy:
    """Lazy tensors (0-d, or a small per-unit vector) turned into Python values with one copy per device."""

    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []

    def add(self, t: torch.Tensor | None) -> Any:
        if t is None:
            return None
        self.items.append(t)
        return len(self.items) - 1

    def resolve(self) -> list[Any]:
        out: list[Any] = [None] * len(self.items)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(self.items):
            groups.setdefault((t.device, t.dtype), []).append(i)
        with quiet():
            for idx in groups.values():  # one copy per device and dtype: counts stay integers
                flat = torch.cat([self.items[i].reshape(-1) for i in idx]).tolist()
                pos = 0
                for i in idx:
                    n = self.items[i].numel()
                    out[i] = flat[pos] if self.items[i].dim() == 0 else flat[pos:pos + n]
                    pos += n
        self.items.clear()
        return out
