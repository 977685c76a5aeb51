"""The forward half of the gradient-health tracker: module-call hooks that check outputs for NaN/Inf, hook the
tensors whose gradient is measured, record dead ReLU units and keep the first NaN/Inf-making call for a replay."""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.trackers.grad_health.records import CallRecord, Slot, dtype_name
from gradprobe.run.trackers.grad_stats import has_nonfinite, measurable, nonfinite_count, quiet
from gradprobe.run.trackers.nonfinite_origin import CallCopy, autocast_state, copy_value

_RELU = (nn.ReLU, nn.ReLU6)
# modules whose output is finite whenever their inputs are (bounded, or |f(x)| <= |x| elementwise, or a max/mean
# accumulated in float32): their outputs are not read again when every input was checked finite
_FINITE_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid,
                      nn.Hardswish, nn.GELU, nn.SiLU, nn.Softsign, nn.Identity, nn.Flatten, nn.Unflatten,
                      nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.Embedding, nn.LayerNorm)



class ForwardRecording:
    """Forward hooks of :class:`~gradprobe.run.trackers.grad_health.tracker.GradHealthTracker` (its state)."""

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        number = self._count.get(name, 0)
        self._count[name] = number + 1
        self._calls.append(CallRecord(name, number, type(module).__name__, self._stack[-1] if self._stack else None))
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
            inputs = floating_args(args, kwargs)
            self._inputs(index, inputs)
            outputs = [output] if isinstance(output, torch.Tensor) else [t for _, t in flatten_tensors(output)]
            clean = isinstance(module, _FINITE_PRESERVING) and self._finite_inputs(inputs)
            self._outputs(index, [t for t in outputs if is_floating(t)], clean)
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
        self._slots.append(Slot(weakref.ref(t), owner, t.numel()))
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
        values = output.detach()
        if dim == 1 and output.dim() > 2 and values.is_contiguous():  # (N, C, ...): rows of C, the fastest way
            per_unit = values.reshape(values.shape[0], units, -1).amax(dim=2).amax(dim=0)
        else:
            others = tuple(d for d in range(output.dim()) if d != dim % output.dim())
            per_unit = values.amax(dim=others) if others else values
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


def floating_args(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> list[torch.Tensor]:
    """The floating tensors among a call's arguments (a plain tuple of tensors without the pytree walk)."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return [a for a in args if is_floating(a)]
    return [t for t in tree_leaves((args, kwargs)) if is_floating(t)]


def is_floating(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
