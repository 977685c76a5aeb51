"""Per-rank memory of one sharded training step, for one or more world sizes: torch-free facts.

``gradprobe inspect TARGET --wrap fsdp --world-size 8,64`` measures rank 0 of an N-rank job in one process
(gradprobe.run.fit): through torch's fake process group with only the local shards allocated (method
``simulated``), or, with ``--device meta``, the same run under a fake-tensor mode that allocates nothing
(method ``estimated``).  Either way the wrapper's own code decides padding, unsharded units, prefetch and the
collective buffers; the bytes are counted by category as they are created, resized and freed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# categories in display order; together they add up to a phase's peak figure
CATEGORIES = ("sharded_parameters", "unsharded_parameters", "gradients", "optimizer_state", "activations",
              "all_gather", "reduce_scatter", "allreduce_buckets", "temporaries", "buffers", "inputs")
LABEL = {
    "sharded_parameters": "sharded parameters",
    "unsharded_parameters": "unsharded parameters",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
    "all_gather": "all-gather buffers",
    "reduce_scatter": "reduce-scatter buffers",
    "allreduce_buckets": "all-reduce buckets",
    "temporaries": "temporaries",
    "buffers": "buffers",
    "inputs": "inputs",
}
MEANING = {
    "sharded_parameters": "this rank's slice of every parameter (dim 0 padded to the world size); DDP: the "
                          "whole model",
    "unsharded_parameters": "parameters all-gathered for the units computing now (and prefetched ones), freed "
                            "again after each unit unless reshard_after_forward is off",
    "gradients": "this rank's gradient shards (DDP: full gradients), kept until the optimizer step",
    "optimizer_state": "the optimizer's state tensors for this rank's shards (Adam: two copies + step)",
    "activations": "tensors the forward created that are still alive: what autograd saved for backward, "
                   "and the outputs",
    "all_gather": "the flat buffer an all-gather writes before FSDP copies it out into the parameters",
    "reduce_scatter": "the flat buffer of a unit's unsharded gradients handed to reduce-scatter",
    "allreduce_buckets": "DDP's gradient buckets (one flat copy of the gradients it all-reduces), allocated "
                         "when DDP is built",
    "temporaries": "tensors the backward (or optimizer) creates and frees: gradients of activations, "
                   "unsharded gradients on their way to reduce-scatter",
    "buffers": "module buffers (BatchNorm statistics, rotary tables)",
    "inputs": "the local batch",
}
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class PhaseMemory:
    """The bytes alive at one phase's peak, by category (``CATEGORIES``); ``total`` is their sum."""

    phase: str
    total: int
    categories: tuple[tuple[str, int], ...]

    def get(self, name: str) -> int:
        return dict(self.categories).get(name, 0)

    def dominant(self) -> str:
        return max(self.categories, key=lambda c: c[1])[0] if self.categories else "activations"


@dataclass(frozen=True)
class ModuleSaved:
    """Bytes a module call's own ops saved for backward (not counting its children's), on this rank."""

    module: str
    module_type: str
    nbytes: int


@dataclass(frozen=True)
class RankFit:
    """Rank 0's memory for one world size: the peak of each phase and of the whole step."""

    world_size: int
    rank: int
    method: str  # "simulated" | "estimated"
    wrapper: str  # "fsdp" | "ddp"
    units: tuple[str, ...]  # FSDP units (module names, "" the root)
    local_batch: int | None
    phases: tuple[PhaseMemory, ...]
    saved_by_module: tuple[ModuleSaved, ...] = ()
    seconds: float = 0.0
    checkpointed: tuple[str, ...] = ()  # units run under activation checkpointing
    reshard_after_forward: bool | None = None
    # FSDP2 MixedPrecisionPolicy of the units: (param_dtype, reduce_dtype) names, None in one: the parameter's own
    # dtype ("mixed": units differ); None: no policy (or DDP)
    mixed_precision: tuple[str | None, str | None] | None = None

    def phase(self, name: str) -> PhaseMemory | None:
        return next((p for p in self.phases if p.phase == name), None)

    @property
    def step(self) -> PhaseMemory:
        """The whole step's peak: the largest of the phases."""
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak(self) -> int:
        return self.step.total if self.phases else 0


@dataclass(frozen=True)
class Lever:
    """One way to bring the peak down, with the peak it gives, measured by running the step again."""

    kind: str  # "checkpoint" | "reshard_after_forward" | "batch" | "world_size"
    text: str  # what to do, in words
    peak: int | None  # the peak per rank with it (None: not applicable)
    fits: bool
    detail: str = ""


@dataclass(frozen=True)
class BudgetVerdict:
    budget: int
    world_size: int  # the world size whose peak is judged (the largest over budget, else the smallest)
    peak: int
    fits: bool
    dominant: str  # the category with the most bytes at the step's peak
    dominant_bytes: int
    levers: tuple[Lever, ...] = ()
    chosen: Lever | None = None  # the cheapest lever that fits
    method: str = ""  # how the judged peak was found: "simulated" (real kernels) | "estimated" (meta)


@dataclass(frozen=True)
class FitReport:
    target: str
    rows: tuple[RankFit, ...]
    optimizer: str
    verdict: BudgetVerdict | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def method(self) -> str:
        return self.rows[0].method if self.rows else "simulated"
