"""The backward half of the gradient-health tracker: the norm of the gradient reaching each hooked tensor, and
post-hooks on the graph's nodes whose formula can turn finite gradients into NaN/Inf."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from gradprobe.facts.grad_health import FLOAT16_TINY
from gradprobe.run.trackers.grad_health.records import NodeRecord, dtype_name
from gradprobe.run.trackers.grad_stats import measurable, norm, quiet
from gradprobe.run.trackers.modules import Call
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


class BackwardRecording:
    """Backward hooks of :class:`~gradprobe.run.trackers.grad_health.tracker.GradHealthTracker` (its state)."""

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
                self._nodes.append(NodeRecord(kind, index_of.get(made_in) if made_in is not None else None,
                                              node=node))
                self._node_hooks.append(node.register_hook(partial(self._on_node, len(self._nodes) - 1)))
            stack.extend(child for child, _ in node.next_functions if child is not None and child not in seen)
        seen.clear()  # the graph's owners free it: no reference to a node outlives the walk

    def _on_node(self, index: int, grad_inputs: Sequence[torch.Tensor | None],
                 grad_outputs: Sequence[torch.Tensor | None]) -> None:
        record = self._nodes[index]
        record.rank = self._node_rank
        self._node_rank += 1
        node, record.node = record.node, None  # autograd releases its saved values right after this hook
        with quiet():
            record.bad_in = nonfinite_total(grad_outputs)
            record.bad_out = nonfinite_total(grad_inputs)
            bad = record.bad_out
            # the saved values are read only where this node returned NaN/Inf (known at once on the CPU; on an
            # accelerator the counts stay lazy instead of syncing on every watched node)
            if node is not None and bad is not None and (bad.device.type != "cpu" or bool(bad)):
                saved = saved_values(node, record.kind)
                if saved:
                    record.saved = saved_counts(saved)


_SAVED_NAMES: dict[str, tuple[str, ...]] = {}


def saved_values(node: Any, kind: str) -> tuple[torch.Tensor, ...] | None:
    """The forward values a watched node saved for its formula (``_saved_self``, ``_saved_result``, ...), read in
    its hook after it ran, before autograd releases them (a checkpointed region's, unpacked once already, are
    skipped). A NaN that the forward made and a later ``torch.where`` or mask kept out of the module's output is
    only seen here."""
    names = _SAVED_NAMES.get(kind)
    if names is None:
        names = _SAVED_NAMES[kind] = tuple(a for a in dir(node) if a.startswith("_saved_"))
    values: list[torch.Tensor] = []
    for name in names:
        try:
            v = getattr(node, name)
        except Exception:  # freed, or a saved-tensors hook refuses to unpack: nothing to read
            continue
        if isinstance(v, torch.Tensor) and measurable(v) and v.is_floating_point() and v.numel():
            values.append(v.detach())
    return tuple(values) or None


def saved_counts(values: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NaN/Inf, negatives and zeros over ``values``, as lazy 0-d tensors."""
    counts = []
    for v in values:
        v = stored_values(v)
        counts.append((torch.isfinite(v).logical_not().sum(), (v < 0).sum(), (v == 0).sum()))
    if len(counts) == 1:
        return counts[0]
    bad, neg, zero = (torch.stack([c[k].to(counts[0][k].device) for c in counts]).sum() for k in range(3))
    return bad, neg, zero


def nonfinite_total(grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """NaN/Inf elements over the gradients, as a lazy 0-d tensor."""
    counts = [torch.isfinite(stored_values(g)).logical_not().sum() for g in grads
              if g is not None and measurable(g) and (g.is_floating_point() or g.is_complex())]
    if not counts:
        return None
    return torch.stack([c.to(counts[0].device) for c in counts]).sum()
