"""Which aten op made the forward's first NaN/Inf: one module call run again under a checking dispatch mode.

The gradient-health tracker finds the first module call (in the order calls return) whose output held
NaN/Inf although its inputs were finite, and keeps a copy of that call's inputs and autocast state.  After
the run's phases, :func:`locate` calls the module once more on the copy, under ``no_grad`` with the RNG
forked, and :class:`_FirstNonfinite` checks every op's output: the first op that made NaN from inputs
without NaN (a NaN number argument, such as a fill value, counts as made here), or Inf from finite inputs, is
the origin.  Its tensor inputs are described as they were
before the op ran, and the op is recomputed in float64: a finite result there means the op overflowed its
dtype.  This costs one extra forward of one call, only when a run made NaN/Inf.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from gradprobe.errors import describe_exception
from gradprobe.facts.grad_health import NonfiniteOrigin
from gradprobe.run.trackers.grad_stats import nonfinite_count, value_stats
from gradprobe.run.trackers.modules import dtype_name

AutocastState = tuple[tuple[str, bool, torch.dtype], ...]


def autocast_state(devices: tuple[str, ...]) -> AutocastState:
    """(device type, enabled, dtype) of autocast now, for the devices a call may run on."""
    found = []
    for device in devices:
        try:
            found.append((device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)))
        except (RuntimeError, TypeError):  # a device type this build does not know
            continue
    return tuple(found)


def copy_value(value: Any) -> Any:
    """Tensors of an argument structure detached and cloned (the call may change its inputs later)."""
    return tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


@dataclass
class CallCopy:
    """What is needed to run one module call again: the module, a copy of its arguments, autocast."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    autocast: AutocastState
    devices: list[torch.device] = field(default_factory=list)


def _floats(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]


def _scalars(args: Any, kwargs: Any) -> list[float]:
    return [float(v) for v in tree_leaves((args, kwargs)) if isinstance(v, float | int) and not isinstance(v, bool)]


class _FirstNonfinite(TorchDispatchMode):
    """Checks every op's output; records the first that made NaN (inputs without NaN) or Inf (finite inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: NonfiniteOrigin | None = None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as gradprobe.run.trackers.base.OpStream: no torch._dynamo import

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.found is not None:
            return func(*args, **kwargs)
        inputs = _floats((args, kwargs))
        before = [nonfinite_count(t) for t in inputs]
        scalars = _scalars(args, kwargs)
        mutable = func._schema.is_mutable
        stats = [value_stats(t) for t in inputs] if mutable else None
        wide_args = tree_map(_wide, (args, kwargs)) if mutable else None
        out = func(*args, **kwargs)
        outputs = _floats(out) or (inputs if mutable else [])
        if not outputs:
            return out
        made = [nonfinite_count(t) for t in outputs]
        nan_in = sum(n for n, _ in before)  # a NaN number argument (a fill value) makes this op the origin
        inf_in = sum(i for _, i in before) + sum(math.isinf(s) for s in scalars)
        made_nan = sum(n for n, _ in made) if nan_in == 0 else 0
        made_inf = sum(i for _, i in made) if nan_in == 0 and inf_in == 0 else 0
        if made_nan or made_inf:
            wide_max = _recompute(func, wide_args if wide_args is not None else tree_map(_wide, (args, kwargs)))
            self.found = NonfiniteOrigin(
                call=None, op=str(func), inputs=tuple(stats if stats is not None else map(value_stats, inputs)),
                scalars=tuple(scalars), made_nan=made_nan, made_inf=made_inf, dtype=dtype_name(outputs[0].dtype),
                wide_max_abs=wide_max if wide_max is not None and math.isfinite(wide_max) else None,
                wide_finite=None if wide_max is None else math.isfinite(wide_max), **_masked_slices(func, args),
                **_reduced(func, args, kwargs, outputs))
        return out


_SOFTMAX = frozenset({"_softmax", "_log_softmax", "softmax", "log_softmax"})


def _masked_slices(func: Any, args: Any) -> dict[str, int]:
    """Softmax ops: the slices along their dim that are all -Inf (softmax of such a row is 0/0 = NaN)."""
    name = str(func).split(".")
    if len(name) < 2 or name[1] not in _SOFTMAX or len(args) < 2 or not isinstance(args[0], torch.Tensor) \
            or not isinstance(args[1], int) or args[0].dim() == 0:
        return {}
    t = args[0].detach()
    masked = (t == float("-inf")).all(dim=args[1])
    return {"neg_inf_slices": int(masked.sum()), "slices": masked.numel()}


_SPREAD = frozenset({"std", "var", "std_mean", "var_mean"})


def _reduced(func: Any, args: Any, kwargs: dict[str, Any], outputs: list[torch.Tensor]) -> dict[str, Any]:
    """std/var: how many values each result reduces, and the correction (1 unless given)."""
    name = str(func).split(".")
    if len(name) < 2 or name[1] not in _SPREAD or not args or not isinstance(args[0], torch.Tensor) or not outputs:
        return {}
    correction = kwargs.get("correction")
    return {"reduced": args[0].numel() // max(1, outputs[0].numel()),
            "correction": 1.0 if correction is None else float(correction)}


def _wide(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().to(torch.float64, copy=True)
    return v


def _recompute(func: Any, wide_args: tuple[Any, Any]) -> float | None:
    """The op's largest |result| in float64 (NaN when it is not finite there either); None if it cannot run."""
    args, kwargs = wide_args
    kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "out")}
    try:
        out = func(*args, **kwargs)
    except Exception:  # an op with dtype-bound arguments: no float64 version
        return None
    results = _floats(out) or _floats(args)
    if not results:
        return None
    values = [r.detach().abs().to(torch.float64) for r in results if r.numel()]
    if not values:
        return None
    if any(not bool(torch.isfinite(v).all()) for v in values):
        return float("nan")
    return max(float(v.max()) for v in values)


@contextlib.contextmanager
def _autocast(state: AutocastState) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for device, enabled, dtype in state:
            stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        yield


def locate(copy: CallCopy, call: int) -> NonfiniteOrigin:
    """Run the call again on its copied inputs and return the op that made the first NaN/Inf."""
    mode = _FirstNonfinite()
    cuda = [d for d in copy.devices if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), _autocast(copy.autocast), mode:
            copy.module(*copy.args, **copy.kwargs)
    except Exception as exc:
        if mode.found is None:
            return NonfiniteOrigin(call=call, note=f"running the call again raised {describe_exception(exc)}")
    if mode.found is None:
        return NonfiniteOrigin(call=call, note="running the call again on a copy of its inputs gave finite values "
                                               "(its inputs changed during the call, or the NaN depends on "
                                               "randomness)")
    return replace(mode.found, call=call)
