"""The loss a run backpropagates, and why a backward cannot run.

``sum`` / ``mean`` (the default: every floating output, reduced and added up) or the user's
``module:fn(outputs, inputs) -> scalar``.  Pure torch, no trackers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradprobe.errors import RunError, UsageError, describe_exception
from gradprobe.run.inputs import RunInputs as ExampleInputs
from gradprobe.run.values import stored_values

LossFn = Callable[[Any, ExampleInputs], torch.Tensor]
Flat = list[tuple[str, torch.Tensor]]


def sum_loss(outputs: Flat, reduce: str) -> torch.Tensor | None:
    """The sum (or sum of means) of every floating output, real parts of complex ones; None when there is none."""
    terms = []
    for _, t in outputs:
        if t.is_nested:  # sum/mean are not implemented for nested tensors; their elements are values()
            t = t.values()
        if t.is_floating_point():
            value = t.float()
        elif t.is_complex():
            value = t.real.float()
        else:
            continue
        if reduce == "mean":  # sparse tensors have no mean(): average over every element, zeros included
            terms.append(value.mean() if value.layout == torch.strided else value.sum() / max(1, value.numel()))
        else:
            terms.append(value.sum())
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def make_loss(spec: str | LossFn, output: Any, flat_out: Flat, inputs: ExampleInputs) -> torch.Tensor | None:
    """The run's loss: a named reduction of ``flat_out`` or the user's function of the raw output."""
    if spec in ("sum", "mean"):
        return sum_loss(flat_out, str(spec))
    if isinstance(spec, str):
        raise UsageError(f"--loss '{spec}' is not a loss; use sum, mean or module:fn")
    try:
        loss = spec(output, inputs.as_user_value())
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise RunError(f"the loss function raised {describe_exception(exc)}", phase="loss") from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise RunError(f"the loss function returned {got}; return a scalar tensor (e.g. outputs.sum())",
                       phase="loss")
    return loss if loss.dim() == 0 else loss.reshape(())  # no gradprobe-made ViewBackward0 atop the user's graph


def backward_blocker(grad_mode: str, backward: bool, loss: torch.Tensor | None, flat_out: Flat) -> str | None:
    """Why no backward can (or should) run, in words; None when it can."""
    if grad_mode == "no_grad":
        return "the forward ran under no_grad: no graph was built"
    if grad_mode == "inference_mode":
        return "the forward ran under inference_mode: outputs are inference tensors and no graph was built"
    if loss is None:
        return "the model returned no floating-point tensor to build a loss from"
    if not loss.requires_grad:
        if any(t.is_inference() for _, t in flat_out):
            return ("the outputs are inference tensors (torch.inference_mode() inside forward, or a cached "
                    "inference tensor): no graph was built")
        return ("no output requires grad: every parameter is frozen, or the graph is cut inside forward "
                "(no_grad, detach)")
    if not backward:
        return "skipped by --no-backward"
    return None


def output_versions(spec: str | LossFn, outputs: Flat) -> dict[int, int]:
    """``id -> version`` of the outputs the default loss sums, taken when it is computed."""
    if spec not in ("sum", "mean"):
        return {}
    # inference tensors keep no version counter: they are checked elementwise
    return {id(t): t._version for _, t in outputs
            if t.is_floating_point() and not t.is_nested and not t.is_inference()}


def proven_finite(versions: dict[int, int], loss_value: float | None) -> dict[int, int]:
    """Outputs the default loss proves finite: ``id -> version`` when that loss is finite, else empty.

    The default loss adds up ``sum()`` (or ``mean()``) of every real floating output in float32: an
    element that is NaN or +-Inf makes its term, and so the total, NaN or Inf.  A finite total thus
    proves every such output finite, with no second pass over it.  The converse does not hold (finite
    values whose sum overflows float32), so a non-finite total proves nothing and :func:`nonfinite`
    checks elementwise.  Complex outputs (only the real part is summed) and a user's loss prove nothing.
    ``versions`` (from :func:`output_versions`, taken with the loss) lets :func:`nonfinite` notice an
    output written after the loss was computed (in backward, say): that one is checked elementwise.
    """
    if loss_value is None or not math.isfinite(loss_value):
        return {}
    return versions


def nonfinite(outputs: Flat, proven: Mapping[int, int] | None = None) -> tuple[str, ...]:
    """Paths of floating outputs holding NaN or Inf (meta outputs have no values).

    ``proven`` (from :func:`proven_finite`): outputs known finite at the given version, not read again.
    """
    bad = []
    for path, t in outputs:
        if t.device.type == "meta" or not (t.is_floating_point() or t.is_complex()):
            continue
        if proven and id(t) in proven and proven[id(t)] == t._version:
            continue
        with torch.no_grad():
            finite = bool(torch.isfinite(stored_values(t)).all())
        if not finite:
            bad.append(path)
    return tuple(bad)
