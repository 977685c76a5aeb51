"""What one run of the fit step is asked to do, and the inputs a loss function sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WRAPPERS = ("ddp", "fsdp")
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
    reshard_after_forward: bool = True


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
