"""Output snapshots and their element-wise comparison: the numbers every compare-modes diff is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from gradprobe.facts.compare import Mismatch
from gradprobe.run.flatten import flatten_tensors

Snapshot = list[tuple[str, torch.Tensor]]  # detached copies of a run's output tensors, with their paths


def inexact(dtype: str) -> bool:
    """Floating-point (and complex) dtype names as :class:`TensorFact` spells them."""
    return dtype.startswith(("float", "bfloat", "complex"))


def snapshot(output: Any, *, copy: bool = True) -> Snapshot:
    """Detached copies of every output tensor: later runs and state restores must not change them.

    Sparse outputs are kept dense and nested ones as their stored elements: the elementwise comparison
    below needs strided tensors (a nested tensor has no single shape, a sparse one no ``&``).
    ``copy=False``: the tensors themselves, for a snapshot compared at once, before anything else runs or is
    restored (a 2x64x50,257 logits copy costs ~3-10 ms, issue 16).
    """
    return [(path, t if not copy or t.device.type == "meta" else t.clone()) for path, t in
            ((path, _strided(t.detach())) for path, t in flatten_tensors(output))]


def _strided(t: torch.Tensor) -> torch.Tensor:
    if t.is_nested:
        return t.values()
    if t.layout != torch.strided and t.device.type != "meta":
        return t.to_dense()
    return t


# How far two kernels computing the same function may drift apart, relative to the output's magnitude: a few
# hundred ulps in float32 (reordered sums over wide reductions and several layers), a few ulps in 16-bit types,
# whose results are rounded once per op.  A branch in forward changes outputs by far more than this.
_RTOL = {
    torch.float64: 1e-12, torch.complex128: 1e-12,
    torch.float32: 1e-5, torch.complex64: 1e-5,
    torch.float16: 1e-2, torch.complex32: 1e-2,
    torch.bfloat16: 5e-2,
}
_RTOL_OTHER = 0.25  # 8-bit floats


def tolerance(dtype: torch.dtype, magnitude: float) -> float:
    """The largest difference float rounding alone explains, for outputs of ``dtype`` up to ``magnitude``."""
    return _RTOL.get(dtype, _RTOL_OTHER) * magnitude


@dataclass(frozen=True)
class OutputDiff:
    """Two snapshots compared: the largest floating-point difference and whether integer outputs agree."""

    max_abs_diff: float | None = None  # over floating outputs; None with a mismatch or without float outputs
    ints_equal: bool | None = None  # None: there are no integer/bool outputs
    mismatch: Mismatch | None = None  # why no element-wise comparison was possible
    within_tolerance: bool | None = None  # every float output differs by no more than rounding explains
    tolerance: float | None = None  # that limit for the output closest to (or furthest past) it

    @property
    def differs(self) -> bool:
        return bool(self.max_abs_diff) or self.ints_equal is False or self.mismatch is not None


NOT_COMPARED = OutputDiff()


def compare_outputs(a: Snapshot, b: Snapshot) -> OutputDiff:
    """Element-wise comparison of two runs' outputs; NaN equals NaN."""
    if [p for p, _ in a] != [p for p, _ in b]:
        return OutputDiff(mismatch=Mismatch("structure", counts=(len(a), len(b))))
    worst: float | None = None
    ints_equal: bool | None = None
    closest: tuple[float, float] | None = None  # (diff / tolerance, tolerance) of the tensor nearest its limit
    for (path, x), (_, y) in zip(a, b, strict=True):
        if x.device.type == "meta" or y.device.type == "meta":
            return OutputDiff(mismatch=Mismatch("unknown"))
        if x.shape != y.shape or x.dtype != y.dtype:
            return OutputDiff(mismatch=Mismatch("shape", path, shapes=(tuple(x.shape), tuple(y.shape)),
                                                dtypes=(_dtype(x), _dtype(y))))
        if x.is_floating_point() or x.is_complex():
            diff = max_abs_diff(x, y) if x.numel() else 0.0
            worst = max(worst or 0.0, diff)
            tol = tolerance(x.dtype, max(_magnitude(x), _magnitude(y)))
            ratio = 0.0 if diff == 0 else (diff / tol if tol > 0 else float("inf"))
            if closest is None or ratio > closest[0]:
                closest = (ratio, tol)
        else:
            same = torch.equal(x, y)
            ints_equal = same if ints_equal is None else ints_equal and same
    if closest is None:
        return OutputDiff(worst, ints_equal)
    return OutputDiff(worst, ints_equal, within_tolerance=closest[0] <= 1.0, tolerance=closest[1])


# a snapshot is compared several times (its row's repeat, the reference, the grad-mode diffs): its magnitude
# is read once per value (keyed by identity, checked against the version counter)
_MAGNITUDES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _magnitude(t: torch.Tensor) -> float:
    """:func:`_magnitude_of`, remembered for the tensor as long as its version does not move."""
    if t.is_inference():  # no version counter to check against
        return _magnitude_of(t)
    known = _MAGNITUDES.get(t)
    if known is not None and known[0] == t._version:
        return known[1]
    value = _magnitude_of(t)
    _MAGNITUDES[t] = (t._version, value)
    return value


def _magnitude_of(t: torch.Tensor) -> float:
    """Largest finite absolute value (0 for an empty or all-NaN tensor).

    One pass without a copy when every value is finite (``aminmax``: the largest magnitude is ``max(-min, max)``,
    exactly); only a NaN or infinity takes the masked path.  On a 2x64x50,257 logits tensor the masked path
    alone took ~100 ms a call, and compare-modes compares outputs a dozen times (issue 16)."""
    if not t.numel():
        return 0.0
    if not t.is_complex():
        lo, hi = torch.aminmax(t.float() if t.dtype != torch.float64 else t)
        low, high = float(lo), float(hi)
        if math.isfinite(low) and math.isfinite(high):
            return abs(max(-low, high))  # abs: an all-zero tensor gives 0.0, never -0.0
    return _masked_magnitude(t)


def _masked_magnitude(t: torch.Tensor) -> float:
    values = t.abs() if t.is_complex() else t.float().abs() if t.dtype != torch.float64 else t.abs()
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if finite.numel() else 0.0


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """``max |x - y|`` in float32 or wider; NaN on both sides counts as equal, on one side as infinite.

    Without any NaN in ``|x - y|`` (the usual case) its maximum is the answer: one subtraction, the absolute
    value in place, one ``max`` (which propagates NaN, so a NaN anywhere sends it to the full check)."""
    if not x.is_complex() and x.dtype != torch.float64:
        x, y = x.float(), y.float()
    diff = torch.sub(x, y)
    diff = diff.abs_() if not diff.is_complex() else diff.abs()
    worst = float(diff.max())
    if not math.isnan(worst):
        return worst
    both_nan = torch.isnan(x) & torch.isnan(y) if not x.is_complex() else torch.isnan(x.abs()) & torch.isnan(y.abs())
    diff = diff.masked_fill(both_nan, 0.0)
    if bool(torch.isnan(diff).any()):  # NaN on one side only
        return float("inf")
    return float(diff.max())
