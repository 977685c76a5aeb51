"""Exact statistics of gradients and weights for ``--grads``, at as few passes over memory as possible.

A parameter's gradient is read by: ``aminmax`` (max |g|, and NaN/Inf show up there), ``count_nonzero`` over
the gradient's bits as integers (about twice as fast as over floats on CPU; ``-0.0`` has nonzero bits, so an
``amin`` over the same bits says whether one exists, and only then are floats counted), and ``‖w‖`` by one
``_foreach_norm`` over the weights.  ‖g‖ is not recomputed: the run's parameter facts already hold it.
Exact NaN/Inf counts, float16 subnormals and all-zero rows/columns are counted only where these first figures
say there is something to count.  Every reduction accumulates in float32 at least.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gradprobe.facts.grad_health import FLOAT16_TINY, ParamGrad, ValueStats
from gradprobe.run.trackers.base import FunctionModesAside
from gradprobe.run.trackers.modules import dtype_name
from gradprobe.run.values import stored_values

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}
_INT_MIN = {dtype: torch.iinfo(view).min for dtype, view in _INT_VIEW.items()}  # the bits of -0.0


class quiet(FunctionModesAside):
    """gradprobe's own measurement ops: no graph, and unseen by the run's dispatch-mode trackers (their
    bytes are not the model's) and by its torch-function modes (the graph-cut tracker would take a ``detach``
    or a ``sum`` under ``no_grad`` of a module output for a cut in the user's forward, and walk the graph
    behind it; :class:`FunctionModesAside`)."""

    __slots__ = ("_grad", "_guard")

    def __enter__(self) -> None:
        super().__enter__()  # first: a mode would see _set_grad_enabled
        self._grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        self._guard = torch._C._DisableTorchDispatch()
        self._guard.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._guard.__exit__(None, None, None)
        torch._C._set_grad_enabled(self._grad)
        super().__exit__(*exc)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def measurable(t: torch.Tensor) -> bool:
    """A plain tensor with values: not meta, not a subclass (a DTensor's norm would be a collective)."""
    return type(t) in _PLAIN and not t.is_meta


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reduction accumulates in: float32 at least, float64 kept."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖ as a 0-d tensor (lazy on accelerators), float32 or wider; complex: the norm of |z|."""
    t = stored_values(t)
    if t.is_complex():
        return torch.linalg.vector_norm(t).to(torch.float64)
    return torch.linalg.vector_norm(t, dtype=wide(t.dtype))


def nonfinite_count(t: torch.Tensor) -> tuple[int, int]:
    """(NaN count, Inf count) of a floating or complex tensor."""
    t = stored_values(t)
    if t.is_complex():
        t = torch.view_as_real(t)
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def has_nonfinite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds NaN/Inf: a sum (one read, no boolean copy) is finite exactly when every value is,
    unless finite values overflow it, which the exact count then rules out."""
    t = stored_values(t)
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.numel() == 0:
        return False
    total = t.sum() if t.dtype in (torch.float32, torch.float64) else t.sum(dtype=torch.float32)
    if math.isfinite(total.item()):
        return False
    nan, inf = nonfinite_count(t)
    return nan + inf > 0


def value_stats(t: torch.Tensor) -> ValueStats:
    """min/max over the finite values, zeros, negatives, NaN and Inf of one tensor (the replay's op inputs)."""
    values = stored_values(t).detach()
    if values.is_complex():
        values = torch.view_as_real(values)
    flat = values.reshape(-1).to(wide(values.dtype))
    finite = flat[torch.isfinite(flat)]
    nan, inf = nonfinite_count(flat)
    return ValueStats(
        dtype=dtype_name(t.dtype), shape=tuple(t.shape), numel=t.numel(),
        min=float(finite.min()) if finite.numel() else None, max=float(finite.max()) if finite.numel() else None,
        zeros=int((flat == 0).sum()), negatives=int((flat < 0).sum()), nan=nan, inf=inf)


def _zero_count(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(nonzero count, smallest integer bit pattern or None) as lazy tensors: see the module docstring."""
    as_int = _INT_VIEW.get(g.dtype)
    if as_int is None or not g.is_contiguous():
        return torch.count_nonzero(g), None
    bits = g.view(as_int)
    return torch.count_nonzero(bits), bits.amin()


def _slices(g: torch.Tensor, dim: int) -> tuple[int, int]:
    """(all-zero slices along ``dim``, slices): dead units' rows (dim 0) or columns (dim 1).

    Rows: a norm per row (the fastest row reduction on CPU), its zeros confirmed element-wise (squares of
    values below 1e-23 underflow float32).  Columns: a column is all zeros when its max and min are 0."""
    n = g.shape[dim]
    if dim == 0:
        rows = g.reshape(n, -1)
        candidates = (torch.linalg.vector_norm(rows, dim=1, dtype=wide(g.dtype)) == 0).nonzero().flatten()
        return int((rows[candidates] == 0).all(dim=1).sum()) if candidates.numel() else 0, n
    others = tuple(d for d in range(g.dim()) if d != dim)
    lo, hi = g.amin(dim=others), g.amax(dim=others)
    return int(((lo == 0) & (hi == 0)).sum()), n


def param_grads(named: Sequence[tuple[str, torch.Tensor]],
                slices: Mapping[str, tuple[bool, bool]]) -> tuple[ParamGrad, ...]:
    """Gradient facts of each ``(name, parameter)``; ``slices[name]`` = (count zero rows, count zero columns)."""
    lazy: list[torch.Tensor] = []  # every lazy scalar, converted with one .tolist() per device at the end
    plan: list[tuple[str, torch.Tensor, dict[str, int], torch.Tensor | None]] = []
    with quiet():
        by_group: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for name, p in named:
            slots: dict[str, int] = {}
            g = p.grad
            values = None
            if g is not None and measurable(p) and p.is_floating_point():  # ‖w‖ only where a ratio is shown
                by_group.setdefault((p.device, p.dtype), []).append(len(plan))
            if g is not None and measurable(g) and (g.is_floating_point() or g.is_complex()):
                values = stored_values(g.detach())
                if values.is_complex():
                    slots["max"] = _push(lazy, values.abs().amax().double() if values.numel() else _zero(values))
                    slots["nonzero"] = _push(lazy, torch.count_nonzero(values))
                elif values.numel():
                    lo, hi = torch.aminmax(values)
                    slots["lo"], slots["hi"] = _push(lazy, lo), _push(lazy, hi)
                    nonzero, low_bits = _zero_count(values)
                    slots["nonzero"] = _push(lazy, nonzero)
                    if low_bits is not None:
                        slots["low_bits"] = _push(lazy, low_bits)
            plan.append((name, p, slots, values))
        norms: dict[int, torch.Tensor] = {}
        for (_, dtype), idx in by_group.items():
            found = torch._foreach_norm([plan[i][1].detach() for i in idx], 2, dtype=wide(dtype))
            norms.update(zip(idx, found, strict=True))
        weight_slot = {i: _push(lazy, n) for i, n in norms.items()}
        resolved = resolve_scalars(lazy)
        return tuple(_param_grad(name, p, gv, slots, resolved, weight_slot.get(i), slices.get(name, (False, False)))
                     for i, (name, p, slots, gv) in enumerate(plan))


def _zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float64, device=t.device)


def _push(lazy: list[torch.Tensor], t: torch.Tensor) -> int:
    lazy.append(t)
    return len(lazy) - 1


def resolve_scalars(lazy: list[torch.Tensor]) -> list[Any]:
    """Every lazy scalar as a Python number: one stack and one device-to-host copy per device and dtype
    (counts stay integers, float32 values convert exactly)."""
    out: list[float] = [0.0] * len(lazy)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(lazy):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for idx in groups.values():
        for i, v in zip(idx, torch.stack([lazy[i] for i in idx]).tolist(), strict=True):  # all 0-d
            out[i] = v
    return out


def _param_grad(name: str, p: torch.Tensor, gv: torch.Tensor | None, slots: dict[str, int], values: list[float],
                weight_slot: int | None, want: tuple[bool, bool]) -> ParamGrad:
    """``gv``: the stored values of ``p.grad`` read by :func:`param_grads` (None where it read none)."""
    g = p.grad
    weight_norm = values[weight_slot] if weight_slot is not None else None
    if not slots or g is None or gv is None:
        return ParamGrad(name, p.numel(), weight_norm, None, None, None, None,
                         dtype=dtype_name(g.dtype) if g is not None else "")
    numel = p.numel()  # a sparse gradient's implicit entries are zeros
    implicit = numel - gv.numel()
    if "max" in slots:
        max_abs = values[slots["max"]]
    elif "lo" in slots:
        lo, hi = values[slots["lo"]], values[slots["hi"]]
        max_abs = max(abs(lo), abs(hi)) if lo == lo and hi == hi else float("nan")
    else:
        max_abs = 0.0
    nan = inf = 0
    if max_abs != max_abs or max_abs == float("inf"):
        with quiet():
            nan, inf = nonfinite_count(gv)
    nonzero = int(values[slots["nonzero"]]) if "nonzero" in slots else 0
    if "low_bits" in slots and int(values[slots["low_bits"]]) == _INT_MIN[gv.dtype]:
        with quiet():
            nonzero = int(torch.count_nonzero(gv))  # a -0.0 is there: its bits counted it as nonzero
    subnormal = None
    if gv.dtype == torch.float16:
        with quiet():
            subnormal = int(((gv != 0) & (gv.abs() < FLOAT16_TINY)).sum())
    zeros = gv.numel() - nonzero + implicit
    rows = zero_rows = cols = zero_cols = None
    dense = gv if g.layout == torch.strided and not g.is_nested else None
    if zeros and dense is not None and (want[0] or want[1]):
        with quiet():
            if dense.dim() >= 1 and want[0]:
                zero_rows, rows = _slices(dense, 0)
            if dense.dim() >= 2 and want[1]:
                zero_cols, cols = _slices(dense, 1)
    return ParamGrad(name, numel, weight_norm, max_abs, zeros, nan, inf, subnormal, dtype_name(g.dtype),
                     zero_rows, rows, zero_cols, cols)
