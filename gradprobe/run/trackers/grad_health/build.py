"""The gradient-health records turned into :class:`~gradprobe.facts.grad_health.GradHealthFacts`: every lazy
figure read with one copy per device, then one ``CallGrad`` per call, parameter gradients, the NaN/Inf origin."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradprobe.facts.grad_health import CallGrad, DeadUnits, GradHealthFacts, NodeGrad, NonfiniteOrigin
from gradprobe.run.trackers.grad_health.backward import WATCHED_KINDS
from gradprobe.run.trackers.grad_health.records import CallRecord
from gradprobe.run.trackers.grad_stats import param_grads, quiet, resolve_scalars
from gradprobe.run.trackers.nonfinite_origin import locate


class FactBuilding:
    """Fact building of :class:`~gradprobe.run.trackers.grad_health.tracker.GradHealthTracker` (its state)."""

    def _build(self) -> GradHealthFacts:
        lazy = Lazy()
        slot_at = [(lazy.add(s.norm), lazy.add(s.zeros), lazy.add(s.subnormal)) for s in self._slots]
        node_at = [(lazy.add(n.bad_in), lazy.add(n.bad_out)) for n in self._nodes]
        saved_at = [tuple(lazy.add(t) for t in n.saved) if n.saved is not None else None for n in self._nodes]
        dead_at = {i: lazy.add(n) for i, n in dead_counts(self._calls).items()}
        values = lazy.resolve()
        slot_values = [tuple(None if k is None else values[k] for k in at) for at in slot_at]
        calls = tuple(self._call_fact(c, slot_values, values[dead_at[i]] if i in dead_at else None)
                      for i, c in enumerate(self._calls))
        params = param_grads(named_params(self._model), self._slices(calls)) if self._measure else ()
        origin = None
        if self._origin_copy is not None:
            origin = locate(self._origin_copy, self._origin_call if self._origin_call is not None else -1)
        elif self._origin_done:
            origin = NonfiniteOrigin(call=None, note="the model's inputs held NaN/Inf")
        nodes = []
        for n, (bad_in, bad_out), saved in zip(self._nodes, node_at, saved_at, strict=True):
            if n.rank >= 0 and bad_in is not None and bad_out is not None and values[bad_in] == 0 \
                    and values[bad_out] > 0:
                bad, neg, zero = (None, None, None) if saved is None else (int(values[k]) for k in saved)
                nodes.append(NodeGrad(n.kind, n.call, n.rank, int(values[bad_out]), bad, neg, zero))
        return GradHealthFacts(
            measured=self._measure, backward=self._backward, parameters=params, calls=calls, forward_origin=origin,
            backward_nodes=tuple(sorted(nodes, key=lambda n: n.rank)), watched_kinds=tuple(sorted(WATCHED_KINDS)),
            thresholds=self._thresholds, display_depth=self._depth,
            notes=() if self._measure else ("the meta device holds no values: gradient figures need a real device",))

    def _call_fact(self, c: CallRecord, slot_values: list[tuple[Any, Any, Any]], dead_count: int | None) -> CallGrad:
        outs = [(self._slots[s], slot_values[s]) for s in c.out_slots]
        ins = [slot_values[s] for s in c.in_slots]
        half = [v for _, v in outs if v[1] is not None]
        checked = [s.nonfinite for s, _ in outs if s.nonfinite is not None]
        ranks = [s.rank for s, _ in outs if s.rank is not None]
        dead = None
        if c.dead is not None and dead_count is not None:
            per_unit, dim, units, samples = c.dead
            first: tuple[int, ...] = ()
            if dead_count:  # rare: only then the dead units' indices are read
                with quiet():
                    first = tuple((per_unit.reshape(-1) == 0).nonzero().flatten()[:8].tolist())
            dead = DeadUnits(units, dead_count, dim, samples, first)
        return CallGrad(
            module=c.module, call=c.call, type=c.type, parent=c.parent, finished=c.finished, outputs=c.outputs,
            output_numel=c.numel, output_dtype=c.dtype, nonfinite=sum(checked) if checked else None,
            grad_out_norm=combined_norm([v[0] for _, v in outs if v[0] is not None]),
            grad_in_norm=combined_norm([v[0] for v in ins if v[0] is not None]),
            grad_out_dtype=next((s.grad_dtype for s, _ in outs if s.grad_dtype), None),
            grad_out_numel=sum(s.grad_numel for s, _ in outs),
            grad_in_numel=sum(self._slots[s].grad_numel for s in c.in_slots),
            grad_out_zeros=int(sum(v[1] for v in half)) if half else None,
            grad_out_subnormal=int(sum(v[2] for v in half)) if half else None,
            backward_rank=min(ranks) if ranks else None, inputs_from=tuple(c.inputs_from), dead=dead)

    def _slices(self, calls: tuple[CallGrad, ...]) -> dict[str, tuple[bool, bool]]:
        """Parameters next to dead ReLU units: the producer's rows (its units) and the consumers' columns."""
        want: dict[str, tuple[bool, bool]] = {}
        if not any(c.dead is not None and c.dead.dead for c in calls):
            return want  # no dead unit: no parameter walk
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
                for p in direct_params(modules.get(calls[j].module)):
                    name = first.get(id(p), "")
                    want[name] = (True, want.get(name, (False, False))[1])
            for k in consumers.get(i, ()):
                for p in direct_params(modules.get(calls[k].module)):
                    name = first.get(id(p), "")
                    want[name] = (want.get(name, (False, False))[0], True)
        return want


def dead_counts(calls: list[CallRecord]) -> dict[int, torch.Tensor]:
    """Per ReLU call (index into ``calls``), its dead units as a lazy 0-d count: the units whose largest output
    over the batch is 0, counted for every call together with one comparison and one cumulative sum per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, c in enumerate(calls):
        if c.dead is not None:
            by_device.setdefault(c.dead[0].device, []).append(i)
    found: dict[int, torch.Tensor] = {}
    with quiet():
        for idx in by_device.values():
            maxima = [calls[i].dead[0].reshape(-1) for i in idx]  # type: ignore[index]
            zero = torch.cat(maxima) == 0 if len(maxima) > 1 else maxima[0] == 0
            ends = torch.cumsum(zero, 0)[torch.tensor([m.numel() for m in maxima], device=zero.device).cumsum(0) - 1]
            counts = torch.diff(ends, prepend=ends.new_zeros(1))
            found.update(zip(idx, counts.unbind(), strict=True))
    return found


def direct_params(module: nn.Module | None) -> list[torch.Tensor]:
    return [p for p in module._parameters.values() if p is not None] if module is not None else []


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each distinct parameter once, under its first qualified name (as the run's parameter facts)."""
    seen: set[int] = set()
    found = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            found.append((name, p))
    return found


def combined_norm(norms: list[float]) -> float | None:
    """‖(a, b, ...)‖ of several tensors from their norms; None when no gradient reached any of them."""
    if not norms:
        return None
    return float(sum(n * n for n in norms) ** 0.5) if len(norms) > 1 else norms[0]


class Lazy:
    """Lazy 0-d tensors turned into Python values with one copy per device and dtype."""

    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []

    def add(self, t: torch.Tensor | None) -> Any:
        if t is None:
            return None
        self.items.append(t)
        return len(self.items) - 1

    def resolve(self) -> list[Any]:
        with quiet():
            out = resolve_scalars(self.items)
        self.items.clear()
        return out
