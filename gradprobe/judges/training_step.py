"""Memory of a whole training step: parameters + gradients + optimizer state + activations.

``training_step`` is a pure function of the facts (no torch).  The step's peak is taken as

    parameters + optimizer state + max(activation peak, gradients)

where the activation peak is the larger of the forward peak and the backward peak measured by the
live-storage tracker (the backward peak already holds the gradients as they are made, and neither
peak counts parameters or inputs).  Optimizer state is what ``torch.optim`` allocates lazily at the
first step with ``zeros_like(param)``, so it has the parameters' dtype: SGD none, SGD with momentum
one copy of the trainable parameters, Adam/AdamW two (``exp_avg``, ``exp_avg_sq``).  The optimizer's
own temporaries during ``step()`` (foreach kernels) are not counted.

``--param-dtype``: on the meta device the run itself is cast (``gradprobe.run.estimate.cast_floating``),
so every figure is measured in that dtype (``cast=True``); on a real device only the parameter,
gradient and optimizer figures are *scaled* to the dtype and the activations stay as measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gradprobe.errors import UsageError
from gradprobe.facts.run import MemoryFact, ParamFact, TrainingStepEstimate

OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2}  # copies of the trainable parameters
PARAM_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}  # bytes per element
_FLOATING = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def check_options(optimizer_state: str, param_dtype: str | None) -> None:
    """Reject unknown names before anything runs."""
    if optimizer_state not in OPTIMIZER_STATES:
        raise UsageError(f"--optimizer-state '{optimizer_state}' is not known; use {', '.join(OPTIMIZER_STATES)}")
    if param_dtype is not None and param_dtype not in PARAM_DTYPES:
        raise UsageError(f"--param-dtype '{param_dtype}' is not supported; use {', '.join(PARAM_DTYPES)}")


def _size_in(p: ParamFact, dtype: str | None) -> int:
    """Bytes of ``p`` if stored in ``dtype`` (only floating parameters change dtype)."""
    if dtype is None or p.dtype not in _FLOATING:
        return p.nbytes
    return p.numel * PARAM_DTYPES[dtype]


def training_step(memory: MemoryFact, params: Sequence[ParamFact], optimizer_state: str = "adam",
                  param_dtype: str | None = None, *, cast: bool = False) -> TrainingStepEstimate:
    """The memory one training step needs; ``cast`` says the run itself used ``param_dtype`` (meta)."""
    check_options(optimizer_state, param_dtype)
    scale = param_dtype if (param_dtype is not None and not cast) else None
    trainable = [p for p in params if p.requires_grad]
    parameter_bytes = sum(_size_in(p, scale) for p in params) if scale else memory.parameter_bytes
    trainable_bytes = sum(_size_in(p, scale) for p in trainable)
    measured_grads = memory.gradient_bytes
    if measured_grads is None:  # no backward ran: every trainable parameter would get a gradient
        gradient_bytes = trainable_bytes
    elif scale:
        gradient_bytes = sum(_size_in(p, scale) for p in trainable if p.grad is not None and p.grad.received)
    else:
        gradient_bytes = measured_grads
    forward = memory.forward_peak_bytes or 0
    backward = memory.backward_peak_bytes or 0
    if backward and measured_grads is not None and scale:
        backward = backward - measured_grads + gradient_bytes
    activation_peak = max(forward, backward)
    optimizer_bytes = OPTIMIZER_STATES[optimizer_state] * trainable_bytes
    dtypes = sorted({p.dtype for p in params if p.dtype in _FLOATING})
    dtype = param_dtype or (dtypes[0] if len(dtypes) == 1 else "/".join(dtypes) or "none")
    if param_dtype is None:
        method = "parameters in their own dtype; optimizer state as torch.optim makes it (zeros_like)"
    elif cast:
        method = f"model and floating inputs cast to {param_dtype} for the meta run"
    else:
        method = (f"parameter, gradient and optimizer bytes scaled to {param_dtype}; activations as measured "
                  f"in the model's own dtype (use --device meta to cast the whole run)")
    if measured_grads is None:
        method += ("; no backward ran, so the backward peak is not measured and the total is a lower bound "
                   "(the larger of the forward peak and every trainable parameter's gradient)")
    return TrainingStepEstimate(
        optimizer=optimizer_state, param_dtype=dtype, method=method, parameter_bytes=parameter_bytes,
        gradient_bytes=gradient_bytes, optimizer_state_bytes=optimizer_bytes, activation_peak_bytes=activation_peak,
        total_bytes=parameter_bytes + optimizer_bytes + max(activation_peak, gradient_bytes),
        backward_measured=measured_grads is not None,
    )


def with_training_step(memory: MemoryFact | None, params: Sequence[ParamFact], optimizer_state: str,
                       param_dtype: str | None, *, cast: bool) -> MemoryFact | None:
    """``memory`` with its ``training_step`` filled in (None stays None: --no-memory)."""
    if memory is None:
        return None
    return replace(memory, training_step=training_step(memory, params, optimizer_state, param_dtype, cast=cast))
