"""Casting a meta-device model and its inputs to another dtype for a training-step estimate.

The arithmetic of the estimate is torch-free and lives in :mod:`gradprobe.judges.training_step`
(re-exported here for existing callers).  On the meta device the model and its floating inputs are
*cast* for the run (:func:`cast_floating`), so every figure, activations included, is measured in
that dtype and mixed-dtype code (an RMSNorm computing in float32) is still right; the user's tensors
are restored afterwards.  On a real device casting would destroy the weights: nothing is cast there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gradprobe.errors import UsageError
from gradprobe.judges.training_step import (
    OPTIMIZER_STATES,
    PARAM_DTYPES,
    check_options,
    training_step,
    with_training_step,
)

__all__ = ["OPTIMIZER_STATES", "PARAM_DTYPES", "cast_floating", "check_options", "training_step",
           "with_training_step"]


@contextlib.contextmanager
def cast_floating(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                  dtype_name: str) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Cast the floating parameters, buffers and inputs of a *meta* model to ``dtype_name``, then undo it.

    Meta tensors hold no values, so the round trip loses nothing; the Parameter objects stay the same
    (only ``.data`` is swapped), so tied weights stay tied and ``requires_grad`` is untouched.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    swapped: list[tuple[torch.Tensor, torch.dtype]] = []
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or not t.is_floating_point() or t.dtype == dtype:
            continue
        if t.device.type != "meta":
            raise UsageError("--param-dtype casts only a model on the meta device; use --device meta")
        seen.add(id(t))
        swapped.append((t, t.dtype))
        t.data = t.data.to(dtype)

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == "meta":
            return value.to(dtype)
        if isinstance(value, tuple):
            return tuple(cast(v) for v in value)
        if isinstance(value, list):
            return [cast(v) for v in value]
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    try:
        yield cast(args), cast(kwargs)
    finally:
        for t, original in swapped:
            t.data = t.data.to(original)
