"""What one run of the fit step is asked to do, and the inputs a loss function sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WRAPPERS = ("ddp", "fsdp")
# --mixed-precision dtype names → torch dtype attribute names
MP_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
             "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def parse_mixed_precision(text: str | None) -> tuple[str, str | None] | None:
    """``bf16`` / ``bf16,fp32`` → (param_dtype, reduce_dtype) as torch dtype names (reduce None: FSDP2 reduces
    in the param dtype); None or empty → None."""
    if text is None or not text.strip():
        return None
    from gradprobe.errors import UsageError

    parts = [part.strip().lower() for part in text.split(",")]
    if len(parts) > 2 or any(part not in MP_DTYPES for part in parts):
        raise UsageError(f"--mixed-precision '{text}': use PARAM[,REDUCE] dtypes of FSDP2's MixedPrecisionPolicy, "
                         f"each one of bf16, fp16, fp32 (e.g. bf16,fp32: all-gather and compute in bf16, "
                         f"reduce-scatter gradients in fp32)")
    return MP_DTYPES[parts[0]], MP_DTYPES[parts[1]] if len(parts) == 2 else None

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class StepSpec:
    """One run of the step: the wrapper, the units, and the levers applied (checkpointing, batch, reshard)."""

    wrap: str | None  # None: the target wraps itself
    shard: tuple[str, ...] = ()
    optimizer: str = "adam"
    estimate: bool = False
    checkpoint: tuple[str, ...] = ()  # module names run under activation checkpointing
    batch: int | None = None  # local batch (dim 0 of the inputs); None: as loaded
    # None: FSDP2's default with --wrap fsdp (every unit but the root reshards), the target's own choice otherwise;
    # True: FSDP2's default; False: no unit reshards (FSDPModule.set_reshard_after_forward on a self-wrapped target)
    reshard_after_forward: bool | None = None
    mixed_precision: tuple[str, str | None] | None = None  # FSDP2 MixedPrecisionPolicy (param_dtype, reduce_dtype)


@dataclass(frozen=True)
class StepInputs:
    """The inputs a loss function sees (gradprobe.run.inputs.RunInputs), for a step run outside the loader."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    source: str = ""

    def as_user_value(self) -> Any:
        if self.kwargs:
            return self.kwargs
        return self.args[0] if len(self.args) == 1 else self.args
