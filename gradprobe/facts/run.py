"""Plain dataclasses describing what one probe run observed.

Facts are the contract between the torch side (target, engine, trackers) and
everything downstream (judges, renderers).  They hold only Python scalars,
strings and tuples -- never tensors -- so judges and renderers stay torch-free
and can be unit-tested with hand-made values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from gradprobe.facts.grad_health import GradHealthFacts
from gradprobe.facts.memory import EventLog

if TYPE_CHECKING:  # facts.experts imports GradState from here
    from gradprobe.facts.experts import ExpertsFact

Shape = tuple[int, ...]

MODES = ("train", "eval")
GRAD_MODES = ("grad", "no_grad", "inference_mode")


class GradState(str, Enum):
    """What a parameter's ``.grad`` held after a backward.  The values are the JSON strings (a contract).

    ``ParamFact.grad`` is ``None`` when no backward ran (the state is unknown), never ``ABSENT``.
    """

    ABSENT = "none"  # the backward ran and left .grad None: autograd never reached the parameter
    ZERO = "zero"  # a gradient whose elements are all exactly zero
    NONZERO = "nonzero"
    PRESENT = "present"  # a gradient exists but its values are unknown (the meta device)

    def __str__(self) -> str:
        return self.value

    @property
    def received(self) -> bool:
        """A gradient tensor exists (zero, nonzero or present)."""
        return self is not GradState.ABSENT


@dataclass(frozen=True)
class ParamFact:
    """One distinct ``nn.Parameter`` (tied parameters appear once, with aliases)."""

    name: str
    aliases: tuple[str, ...]
    shape: Shape
    dtype: str
    requires_grad: bool
    grad: GradState | None  # None: no backward ran, so the state is unknown
    grad_norm: float | None
    module: str  # qualified name of the owning module ("" for the root)
    module_training: bool
    numel: int
    nbytes: int

    def __post_init__(self) -> None:
        if self.grad is not None and not isinstance(self.grad, GradState):  # "none", "zero", ... from JSON or by hand
            object.__setattr__(self, "grad", GradState(self.grad))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class BufferFact:
    """A registered buffer and whether the forward changed it."""

    name: str
    shape: Shape
    dtype: str
    changed: bool | None  # None when it cannot be told
    module: str


@dataclass(frozen=True)
class TensorFact:
    """Autograd flags of one tensor produced by a module call or the model."""

    module: str  # qualified module name, "" for the model itself
    call: int  # 0 for the module's first call
    path: str  # "output", "output[1]", "output.logits"
    shape: Shape
    dtype: str
    requires_grad: bool
    grad_fn: str | None
    is_leaf: bool
    is_inference: bool
    nbytes: int


@dataclass(frozen=True)
class ModuleFact:
    """One module of the model: its type, training flag and how often it ran."""

    name: str
    type: str
    training: bool
    calls: int
    direct_params: tuple[str, ...]  # canonical names of parameters it owns directly
    requires_grad_attr: bool | None  # a plain ``module.requires_grad`` attribute, if set
    training_dependent: bool  # a type known to behave differently in train mode (Dropout, BatchNorm)
    output_grad_fn: bool | None = None  # any output tensor of any call had a grad_fn; None: no tensor output seen


def _u32(data: bytes) -> memoryview:
    return memoryview(data).cast("I")


@dataclass(frozen=True)
class GraphFact:
    """The autograd graph reachable from the loss: its nodes and edges, compactly.

    Node ``i`` (numbered in breadth-first discovery order from the roots) is an autograd node named
    ``kinds[kind_of[i]]``; its children (``next_functions`` order, ``None`` edges left out) are
    ``edges[edge_starts[i]:edge_starts[i + 1]]``.  Per-node columns are packed unsigned 32-bit
    integers (``bytes``, read through :meth:`column`): a million-node graph costs ~16 MB, not a Python
    object per node.  ``params`` names the parameter under each AccumulateGrad node (``None``: a leaf
    that is no parameter); ``call_of`` (signed, -1 for none; empty when unknown) indexes ``calls``, the
    module call that was innermost when the node was made; ``saved_nodes``/``saved_bytes`` give the bytes
    of the storages each node was the first to save for backward (parameters and buffers excluded).
    ``display_depth`` is how many levels of the graph a display should show (``--depth``; 0: counts only).
    """

    nodes: int
    depth: int
    reached_params: frozenset[str] = frozenset()  # canonical names under AccumulateGrad nodes
    kinds: tuple[str, ...] = ()
    kind_of: bytes = b""
    edge_starts: bytes = b""
    edges: bytes = b""
    roots: tuple[int, ...] = ()  # root node indices as given (a root given twice appears twice)
    params: tuple[tuple[int, str | None], ...] = ()
    calls: tuple[tuple[str, int], ...] = ()
    call_of: bytes = b""
    saved_nodes: bytes = b""  # uint32 node indices
    saved_bytes: bytes = b""  # int64 bytes, parallel to saved_nodes
    display_depth: int = 8
    # every module call of the forward with the call it ran inside (None: the outermost), in call order; what the
    # exported pictures (--graph) nest and collapse by (issue 14)
    call_tree: tuple[tuple[tuple[str, int], tuple[str, int] | None], ...] = ()

    def column(self, name: str) -> memoryview:
        """A per-node or per-edge column as integers: "kind_of", "edge_starts", "edges", "saved_nodes"
        (unsigned), "call_of" (signed), "saved_bytes" (64-bit)."""
        data = getattr(self, name)
        if name == "call_of":
            return memoryview(data).cast("i")
        if name == "saved_bytes":
            return memoryview(data).cast("q")
        return _u32(data)

    def children(self, i: int) -> Sequence[int]:
        starts = _u32(self.edge_starts)
        return _u32(self.edges)[starts[i]:starts[i + 1]]

    def kind(self, i: int) -> str:
        return self.kinds[_u32(self.kind_of)[i]]

    def call(self, i: int) -> tuple[str, int] | None:
        """The module call node ``i`` was made in (None: outside the model's calls, or not known)."""
        if not self.call_of:
            return None
        index = memoryview(self.call_of).cast("i")[i]
        return self.calls[index] if index >= 0 else None

    def saved_by_node(self) -> dict[int, int]:
        """Node index -> bytes it was the first to save, for nodes that saved any."""
        return dict(zip(_u32(self.saved_nodes), memoryview(self.saved_bytes).cast("q"), strict=True))


@dataclass(frozen=True)
class ParamChange:
    """A parameter the run changed (and gradprobe undid afterwards)."""

    name: str
    phase: str  # "forward" | "backward": when it happened
    how: str  # "written" (in place, out= or via .data), "replaced" (another Parameter under the name),
    #           "registered" (a name the model did not have), "removed" (a name forward deleted)


@dataclass(frozen=True)
class LeafFact:
    """A tensor attribute with ``requires_grad=True`` that is no Parameter: backward gives it a gradient,
    but only an optimizer handed it by hand trains it (``model.parameters()`` does not list it)."""

    name: str  # "module.attr"
    module: str
    shape: Shape
    dtype: str
    grad: GradState | None  # as ParamFact.grad
    grad_norm: float | None


@dataclass(frozen=True)
class ModuleMemory:
    """Bytes attributed to one module call (innermost module running at the time)."""

    module: str
    call: int
    saved_for_backward_bytes: int
    output_bytes: int
    inside_saved_bytes: int = 0  # storages saved only while this call ran (its submodules included)
    checkpoint_saving_bytes: int | None = None  # drop in saved bytes if the call were checkpointed


@dataclass(frozen=True)
class TrainingStepEstimate:
    """Memory of one training step: parameters, gradients, optimizer state and activations."""

    optimizer: str  # "sgd" | "momentum" | "adam"
    param_dtype: str  # dtype the parameter/gradient/optimizer figures are for
    method: str  # how param_dtype was applied: measured as is, model cast on meta, or scaled
    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    activation_peak_bytes: int  # largest of forward peak and backward peak (gradients included there)
    total_bytes: int
    # False: no backward ran, so the backward peak is unmeasured and total_bytes is a lower bound
    backward_measured: bool = True


@dataclass(frozen=True)
class MemoryApproximation:
    """A call whose meta estimate rests on a different kernel than a CPU run would use (so its bytes may differ)."""

    module: str  # innermost module running ("" for the model's own forward)
    call: int
    op: str  # the function that chose its kernel by device: "lstm", "multi_head_attention_forward"
    reason: str  # which kernel on the CPU, which on meta
    cpu_saved_bytes: int | None = None  # bytes that call alone saved for backward on CPU stand-ins (None: unmeasured)
    meta_saved_bytes: int | None = None  # the same on meta


@dataclass(frozen=True)
class MemoryFact:
    """Tensor-storage bytes seen by the trackers (not allocator workspaces)."""

    method: str
    forward_peak_bytes: int | None
    backward_peak_bytes: int | None
    saved_for_backward_bytes: int | None
    parameter_bytes: int
    gradient_bytes: int | None
    cuda_max_allocated_bytes: int | None = None
    by_module: tuple[ModuleMemory, ...] = ()
    training_step: TrainingStepEstimate | None = None
    events: EventLog | None = None  # the memory event log, when asked for (--memory-detail, --format html)
    approximate: tuple[MemoryApproximation, ...] = ()  # meta: calls that ran another kernel than the CPU would


CUT_HOW = ("no_grad", "inference_mode", "detach", "data", "reentrant_checkpoint", "non_differentiable")


@dataclass(frozen=True)
class GraphCut:
    """An op in forward that took tensors requiring grad and returned none that does: autograd stops there.

    Recorded per (module call, mechanism, op); ``parameters`` are those upstream of the cut (walked from the
    op's inputs when it ran), so a parameter without gradient can be traced to the cut that starved it.
    """

    module: str  # innermost module running ("" for the model's own forward)
    call: int
    how: str  # one of CUT_HOW
    op: str  # "detach", "data", "argmax", "linear", ...
    parameters: tuple[str, ...]  # canonical names upstream of the cut
    complete: bool = True  # False: the walk stopped at its node budget, ``parameters`` may miss some


@dataclass(frozen=True)
class RunFacts:
    """Everything one run in one mode observed."""

    target: str
    torch_version: str
    device: str
    mode: str
    grad_mode: str
    backward: bool
    backward_skipped_reason: str | None
    loss: float | None
    parameters: tuple[ParamFact, ...]
    buffers: tuple[BufferFact, ...]
    modules: tuple[ModuleFact, ...]
    tensors: tuple[TensorFact, ...]
    outputs: tuple[TensorFact, ...]
    graph: GraphFact | None
    memory: MemoryFact | None
    global_grad_enabled: bool  # the ambient grad mode found before the run
    forward_time_s: float | None = None
    backward_time_s: float | None = None
    skipped: tuple[str, ...] = ()  # trackers switched off
    notes: tuple[str, ...] = ()  # facts about loading: weights keys, unwrapped wrappers
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    nonfinite_outputs: tuple[str, ...] = ()  # output paths holding NaN/Inf
    modified_parameters: tuple[str, ...] = ()  # parameters the forward wrote into (undone after the run)
    modified_in_backward: tuple[str, ...] = ()  # parameters written during backward (an optimizer step in a hook)
    param_changes: tuple[ParamChange, ...] = ()  # every change above, plus registrations forward changed
    leaves: tuple[LeafFact, ...] = ()  # requires_grad tensor attributes that are not Parameters
    # gradprobe.run.trackers.cuts (None/empty where it did not run: grad modes other than grad)
    graph_cuts: tuple[GraphCut, ...] = ()
    parameters_read: frozenset[str] | None = None  # parameters some op of forward read (None: not tracked)
    # flags forward changed: parameters/modules keep the state as handed over, these list what forward flipped
    requires_grad_changed: tuple[str, ...] = ()  # parameters whose requires_grad forward flipped
    training_changed: tuple[str, ...] = ()  # modules whose training flag forward flipped
    zero_valued_parameters: tuple[str, ...] = ()  # all-zero parameters near one whose gradient is exactly zero
    # measured in the autograd graph (gradprobe.run.trackers.zero_factor): (parameter with an exactly zero
    # gradient, the all-zero parameters it is multiplied with on every path from the loss); None: not measured
    zero_grad_partners: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    # fused mixture-of-experts parameters: per-expert gradient states and routing (gradprobe.facts.experts)
    experts: tuple[ExpertsFact, ...] = ()
    grad_health: GradHealthFacts | None = None  # --grads: gradient flow, NaN origin (gradprobe.facts.grad_health)


@dataclass(frozen=True)
class Finding:
    """A plain-language diagnosis with a stable code."""

    code: str
    severity: str  # "error" | "warning" | "info"
    subject: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class CheckpointCandidate:
    """One module call worth wrapping in ``torch.utils.checkpoint``, with the saved bytes it would drop."""

    module: str
    call: int
    module_type: str
    inside_saved_bytes: int  # saved only while this call ran
    expected_saving_bytes: int  # the drop in saved-for-backward bytes if this call alone is checkpointed


@dataclass(frozen=True)
class CheckpointPlan:
    """Wrapping every (non-nested) call of one module type."""

    module_type: str
    calls: int
    expected_saving_bytes: int  # sum of the single-call savings
    saved_for_backward_bytes: int  # the run's total, for scale


@dataclass(frozen=True)
class InspectReport:
    """The result of ``gradprobe inspect``: the facts of one run and the judges' verdicts on them.

    Every renderer shows these verdicts as they are; none computes advice of its own.
    """

    facts: RunFacts
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    checkpoint_advice: tuple[CheckpointCandidate, ...] = ()  # best first (gradprobe.judges.checkpoint)
    checkpoint_plan: CheckpointPlan | None = None

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)
