"""What the gradient-health tracker keeps while the run goes: one record per hooked tensor, module call and
watched backward node (gradients stay lazy 0-d tensors until the facts are built)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from gradprobe.run.trackers.modules import CallTimeline
from gradprobe.run.trackers.modules import dtype_name as _dtype_name

_DTYPE_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``, remembered (it runs for every output and gradient)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = _dtype_name(dtype)
    return name


class CallSource(Protocol):
    """Which call made an autograd node (a :class:`~gradprobe.run.trackers.modules.ModuleRecorder`)."""

    names: dict[int, str]

    def timeline(self) -> CallTimeline: ...


@dataclass(slots=True)
class Slot:
    """One hooked tensor (a module output or input): its forward check and the gradient that reached it."""

    ref: Any  # weak reference to the tensor
    owner: int | None  # the call that returned it first (None: an input made outside any recorded call)
    numel: int
    nonfinite: int | None = None  # NaN/Inf elements when a call returned it (None: not checked)
    norm: torch.Tensor | None = None
    rank: int | None = None
    grad_dtype: str | None = None
    grad_numel: int = 0
    zeros: torch.Tensor | None = None  # float16 gradients only
    subnormal: torch.Tensor | None = None


@dataclass(slots=True)
class CallRecord:
    module: str
    call: int
    type: str
    parent: int | None
    finished: int = -1
    out_slots: list[int] = field(default_factory=list)
    in_slots: list[int] = field(default_factory=list)
    inputs_from: list[int] = field(default_factory=list)
    outputs: int = 0
    numel: int = 0
    dtype: str = ""
    dead: tuple[torch.Tensor, int, int, int] | None = None  # (max per unit, unit dim, units, samples)


@dataclass(slots=True)
class NodeRecord:
    kind: str
    call: int | None
    rank: int = -1
    bad_in: torch.Tensor | None = None
    bad_out: torch.Tensor | None = None
    # the node itself until it runs: its saved values are read in its hook, only where it returned NaN/Inf (reading
    # them at the walk unpacked a checkpointed region's tensors early: a recompute, and a larger backward peak)
    node: Any = None
    saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # NaN/Inf, negatives, zeros (lazy)
