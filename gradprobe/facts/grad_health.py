"""Gradient health of one run (``inspect --grads``): plain, torch-free facts.

What the gradient-health tracker (:mod:`gradprobe.run.trackers.grad_health`) measured in one forward and
one backward: per parameter the gradient's largest magnitude, exact zeros and non-finite values and the
weight's norm; per module call in forward order whether its output held NaN/Inf and the norm of the gradient
that reached its output and its inputs; where the first non-finite value was made.  Judges
(:mod:`gradprobe.judges.grad_health`) and renderers read them; nothing here imports torch.

Figures are exact values of this one run, computed in float32 or wider (float64 stays float64) for
half-precision tensors.  ``None`` means "not measured" (no backward, the meta device, a tensor subclass).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# largest finite value per dtype (torch.finfo(dtype).max), for overflow wording without importing torch
DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
             "float64": 1.7976931348623157e308}
FLOAT16_TINY = 6.103515625e-05  # smallest normal float16 (torch.finfo(torch.float16).tiny)


@dataclass(frozen=True)
class GradThresholds:
    """When the judges speak up (documented in the README; ``--grad-factor`` sets ``factor``)."""

    factor: float = 1e3  # vanishing/exploding: the gradient norm falls/rises by more than this across the blocks
    subnormal_share: float = 0.01  # fp16 underflow: share of subnormal values in a float16 gradient
    dead_min_samples: int = 16  # dead units: fewer samples per unit than this -> "inactive in this batch" (info)
    dead_share: float = 0.05  # dead units: a warning from this share of a layer's units on, info below it


def _rms(norm: float | None, numel: int) -> float | None:
    return None if norm is None or numel <= 0 else norm / numel ** 0.5


@dataclass(frozen=True)
class ParamGrad:
    """Gradient facts of one parameter (joined with ``ParamFact`` by ``name``; its ``grad_norm`` is ‖g‖)."""

    name: str
    numel: int
    weight_norm: float | None  # ‖w‖ (float32 or wider)
    max_abs: float | None  # max |g|; NaN when the gradient holds NaN
    zeros: int | None  # elements exactly 0 (+0.0 and -0.0)
    nan: int | None
    inf: int | None
    subnormal: int | None = None  # float16 gradients: nonzero values below 6.1e-05 (None for other dtypes)
    dtype: str = ""  # the gradient's dtype
    zero_rows: int | None = None  # all-zero slices along dim 0 (output units); measured next to dead ReLU units
    rows: int | None = None
    zero_cols: int | None = None  # all-zero slices along dim 1 (input units) of a 2-D+ weight
    cols: int | None = None

    @property
    def zero_share(self) -> float | None:
        return None if self.zeros is None or not self.numel else self.zeros / self.numel

    @property
    def nonfinite(self) -> int | None:
        return None if self.nan is None or self.inf is None else self.nan + self.inf


@dataclass(frozen=True)
class DeadUnits:
    """A ReLU call's units whose output was 0 for every sample of the batch (pre-activations all <= 0)."""

    units: int
    dead: int
    dim: int  # the unit dimension of the output (1: channels, -1: features)
    samples: int  # values per unit in this batch (batch x positions)
    first_dead: tuple[int, ...] = ()  # indices of up to 8 dead units


@dataclass(frozen=True)
class CallGrad:
    """One module call, in forward order (order of call start: parents before their children)."""

    module: str
    call: int  # 0 for the module's first call
    type: str
    parent: int | None  # index (in GradHealthFacts.calls) of the innermost call running when this one started
    finished: int  # rank in which calls returned (the innermost first): "first in forward order"
    outputs: int  # floating tensors in the output
    output_numel: int
    output_dtype: str
    nonfinite: int | None  # NaN/Inf elements in the output when it returned (None: not measured, e.g. meta)
    grad_out_norm: float | None  # ‖gradient reaching its output tensors‖ (None: no gradient reached them)
    grad_in_norm: float | None  # ‖gradient at its floating input tensors‖ (sum over every consumer of them)
    grad_out_dtype: str | None = None
    grad_out_numel: int = 0  # elements of the gradient(s) reaching its output
    grad_in_numel: int = 0
    grad_out_zeros: int | None = None  # float16 gradients only: exact zeros and subnormals at its output
    grad_out_subnormal: int | None = None
    backward_rank: int | None = None  # order in which the gradient reached its output (0: first, near the loss)
    inputs_from: tuple[int, ...] = ()  # calls whose outputs it took as inputs
    dead: DeadUnits | None = None  # ReLU / ReLU6 calls only

    @property
    def grad_out_rms(self) -> float | None:
        """Root-mean-square per element of the gradient at its output: comparable across layer sizes."""
        return _rms(self.grad_out_norm, self.grad_out_numel)

    @property
    def grad_in_rms(self) -> float | None:
        return _rms(self.grad_in_norm, self.grad_in_numel)

    @property
    def label(self) -> str:
        name = self.module or "(model)"
        return f"{name} #{self.call}" if self.call else name


@dataclass(frozen=True)
class ValueStats:
    """Statistics of one tensor input of an op (values before the op ran)."""

    dtype: str
    shape: tuple[int, ...]
    numel: int
    min: float | None
    max: float | None
    zeros: int
    negatives: int
    nan: int
    inf: int


@dataclass(frozen=True)
class NonfiniteOrigin:
    """Where the forward first made NaN/Inf: the module call, and the aten op inside it when located.

    Located by running that one call again on a copy of its inputs (no_grad, same autocast, RNG forked)
    under a dispatch mode that checks every op's output: the first op that made NaN from inputs without
    NaN, or Inf from finite inputs.  ``wide_max_abs`` is the op's largest |result| recomputed in float64
    (finite there: an overflow of ``dtype``).
    """

    call: int | None  # index in GradHealthFacts.calls; None: the model's inputs already held NaN/Inf
    op: str | None = None  # "aten.log.default"; None when the replay did not locate it (see ``note``)
    inputs: tuple[ValueStats, ...] = ()
    scalars: tuple[float, ...] = ()  # the op's non-tensor numeric arguments
    made_nan: int = 0
    made_inf: int = 0
    dtype: str = ""  # the op's output dtype
    wide_max_abs: float | None = None  # float64 recomputation: largest |result| (None: not finite or not run)
    wide_finite: bool | None = None
    note: str = ""
    # softmax/log_softmax: slices along the op's dim whose values are all -Inf (a fully masked attention row),
    # and the slices there are; None for other ops
    neg_inf_slices: int | None = None
    slices: int | None = None
    # std/var: values reduced into each result and the correction (N - correction <= 0 divides 0 by 0); None else
    reduced: int | None = None
    correction: float | None = None


@dataclass(frozen=True)
class NodeGrad:
    """A backward node that received only finite gradients and returned a non-finite one."""

    kind: str  # "SqrtBackward0"
    call: int | None  # index in GradHealthFacts.calls of the call whose forward made it
    rank: int  # order among the watched nodes that ran
    nonfinite_out: int  # NaN/Inf elements in what it returned
    # the forward values the node saved for its formula (``_saved_self``, ``_saved_result``, ...), read before the
    # backward: NaN/Inf there were made in the forward and hidden from the module's output (torch.where, a mask);
    # negatives and zeros say which edge of the op's domain it was at. None: nothing saved could be read
    saved_nonfinite: int | None = None
    saved_negatives: int | None = None
    saved_zeros: int | None = None


@dataclass(frozen=True)
class GradHealthFacts:
    """Everything ``--grads`` measured in one run."""

    measured: bool  # False on meta (no values), or when no backward ran (then only forward facts)
    backward: bool
    parameters: tuple[ParamGrad, ...] = ()
    calls: tuple[CallGrad, ...] = ()
    forward_origin: NonfiniteOrigin | None = None  # None: every module output was finite
    backward_nodes: tuple[NodeGrad, ...] = ()  # watched nodes that turned finite gradients non-finite
    watched_kinds: tuple[str, ...] = ()  # node kinds the tracker watched in backward
    thresholds: GradThresholds = field(default_factory=GradThresholds)
    display_depth: int = 8  # module levels the flow view shows (--depth)
    notes: tuple[str, ...] = ()

    @functools.cached_property
    def repeated(self) -> frozenset[str]:
        """Modules called more than once (their calls are numbered in messages)."""
        return frozenset(c.module for c in self.calls if c.call > 0)

    @functools.cached_property
    def consumers(self) -> dict[int, tuple[int, ...]]:
        """Call index -> the calls that took its output as an input."""
        found: dict[int, list[int]] = {}
        for k, c in enumerate(self.calls):
            for i in c.inputs_from:
                found.setdefault(i, []).append(k)
        return {i: tuple(ks) for i, ks in found.items()}
