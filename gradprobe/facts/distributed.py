"""Plain dataclasses for runs under torchrun: what each rank observed, and the merged picture rank 0 judges.

Every rank builds a ``RankFacts`` from its own run (gradprobe.run.distributed.collect) and rank 0 gathers
them with ``dist.gather_object``: so everything here is picklable, torch-free Python values.  Names are the
parameters' original names (no ``module.`` / ``_fsdp_wrapped_module.`` / flat-parameter names) and shapes
are global; what a rank holds locally is in ``local_shape`` / ``placement``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace

from gradprobe.facts.run import (
    Finding,
    GradState,
    InspectReport,
    MemoryFact,
    ModuleFact,
    RunFacts,
)

Shape = tuple[int, ...]

NO_SHARD = "no-shard"  # the rank holds an empty shard of this parameter: no gradient there by design
WRAPPERS = ("none", "ddp", "fsdp", "fsdp1")


@dataclass(frozen=True)
class RankParam:
    """One parameter as one rank holds it."""

    name: str  # original name
    global_shape: Shape
    local_shape: Shape  # what this rank stores: the shard, (0,) for an empty shard
    placement: str  # "replicated" | "Shard(dim=0)" (FSDP2) | "flat[a:b]" (FSDP1: elements a..b-1, flattened)
    dtype: str
    requires_grad: bool
    grad: str | None  # state of what this rank holds after the step's reductions; NO_SHARD; None: no backward
    grad_norm: float | None  # norm of the gradient held here (the local shard for sharded parameters)
    local_grad: bool | None = None  # autograd produced a gradient here before any reduction (None: not observed)
    local_grad_norm: float | None = None  # norm of that local gradient (before DDP's all-reduce / FSDP's reduce)
    local_bytes: int = 0  # parameter bytes held by this rank
    digest: str | None = None  # of the values before the run (None: not compared)
    unit: str | None = None  # FSDP unit (module name) whose all-gather carries it
    # FSDP, trainable, after a backward: this rank's shard holds only zeros (an empty shard: True); None: not read
    values_zero: bool | None = None


@dataclass(frozen=True)
class RankBuffer:
    """A buffer on one rank: changed by the forward, and a digest of its values right after it."""

    name: str
    module_type: str
    changed: bool | None
    digest: str | None  # None: not compared (not floating point, or on meta)


@dataclass(frozen=True)
class RankMemory:
    """Tensor bytes one rank measured (the engine's dispatch tracker), and parameter/gradient bytes held locally."""

    rank: int
    forward_peak_bytes: int | None
    backward_peak_bytes: int | None
    saved_for_backward_bytes: int | None
    parameter_bytes: int  # local shards only
    gradient_bytes: int | None  # local gradient storage after the step's reductions
    cuda_max_allocated_bytes: int | None = None

    def values(self) -> dict[str, int | None]:
        return {
            "forward_peak_bytes": self.forward_peak_bytes, "backward_peak_bytes": self.backward_peak_bytes,
            "saved_for_backward_bytes": self.saved_for_backward_bytes, "parameter_bytes": self.parameter_bytes,
            "gradient_bytes": self.gradient_bytes, "cuda_max_allocated_bytes": self.cuda_max_allocated_bytes,
        }


@dataclass(frozen=True)
class UnitFact:
    """One FSDP unit (an FSDP2 ``fully_shard`` module or an FSDP1 ``FullyShardedDataParallel`` instance)."""

    name: str  # module name ("" for the root)
    frozen: tuple[str, ...]  # parameters it carries that do not require grad
    trainable: tuple[str, ...]
    frozen_bytes: int  # unsharded bytes of the frozen parameters (what each all-gather moves for them)
    trainable_bytes: int
    # measured on this rank during the run (None: not measured)
    all_gather_forward_bytes: int | None = None
    all_gather_backward_bytes: int | None = None
    reduce_scatter_bytes: int | None = None  # gradient bytes this rank fed into the reduce-scatter
    gradient_bytes: int | None = None  # unsharded gradient bytes autograd produced for the unit (FSDP2)
    frozen_gradient_bytes: int | None = None  # sharded gradient bytes held for frozen parameters (FSDP1)
    flat_gradient_bytes: int | None = None  # the unit's whole sharded flat gradient (FSDP1)

    @property
    def mixed(self) -> bool:
        return bool(self.frozen) and bool(self.trainable)


@dataclass(frozen=True)
class WrapperInfo:
    """The distributed wrapper the run went through, as found on the model."""

    kind: str  # one of WRAPPERS
    source: str  # "target" (the factory wrapped it) | "--wrap" (gradprobe wrapped it) | "none"
    find_unused_parameters: bool | None = None  # DDP
    broadcast_buffers: bool | None = None  # DDP
    init_sync: bool | None = None  # DDP: parameters broadcast from rank 0 at construction
    static_graph: bool | None = None  # DDP
    use_orig_params: bool | None = None  # FSDP1
    sync_module_states: bool | None = None  # FSDP1: parameters broadcast from rank 0 at construction
    sync_batchnorm: tuple[str, ...] = ()  # SyncBatchNorm modules (their statistics are all-reduced)

    @property
    def broadcasts_parameters(self) -> bool:
        """Whether the wrapper makes every rank start from rank 0's parameter values."""
        if self.kind == "ddp":
            return self.init_sync is not False
        if self.kind == "fsdp1":
            return bool(self.sync_module_states)
        return False


@dataclass(frozen=True)
class RankFacts:
    """What one rank sends to rank 0."""

    rank: int
    host: str
    params: tuple[RankParam, ...]  # registration order
    buffers: tuple[RankBuffer, ...] = ()
    memory: RankMemory | None = None
    units: tuple[UnitFact, ...] = ()
    pre_wrap_digests: tuple[tuple[str, str], ...] = ()  # (name, digest) before --wrap wrapped the model
    second_iteration_error: str | None = None  # DDP: what the second forward raised (None: not run or no error)
    second_iteration_ran: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DistFacts:
    """Every rank's facts, as rank 0 merged them."""

    world_size: int
    backend: str
    group_owner: str  # "gradprobe" (created and destroyed by gradprobe) | "target"
    wrapper: WrapperInfo
    ranks: tuple[RankFacts, ...]  # sorted by rank
    inputs_per_rank: bool = False  # --shape inputs drawn per rank (seed + rank), as a data loader would
    notes: tuple[str, ...] = ()

    def per_param(self) -> dict[str, list[RankParam | None]]:
        """name → the parameter on each rank (None where that rank lacks it), in rank 0's order, then others'."""
        order: list[str] = []
        seen: set[str] = set()
        for r in self.ranks:
            for p in r.params:
                if p.name not in seen:
                    seen.add(p.name)
                    order.append(p.name)
        out: dict[str, list[RankParam | None]] = {name: [None] * len(self.ranks) for name in order}
        for i, r in enumerate(self.ranks):
            for p in r.params:
                out[p.name][i] = p
        return out

    def per_buffer(self) -> dict[str, list[RankBuffer | None]]:
        order: list[str] = []
        for r in self.ranks:
            order += [b.name for b in r.buffers if b.name not in order]
        out: dict[str, list[RankBuffer | None]] = {name: [None] * len(self.ranks) for name in order}
        for i, r in enumerate(self.ranks):
            for b in r.buffers:
                out[b.name][i] = b
        return out


@dataclass(frozen=True)
class DistInspectReport:
    """``inspect`` under torchrun: rank 0's report on merged facts, every rank's facts, and cross-rank findings."""

    report: InspectReport  # merged: original names, global shapes, gradients merged over shards
    dist: DistFacts
    findings: tuple[Finding, ...] = field(default_factory=tuple)  # cross-rank findings (also in report.findings)

    @property
    def has_errors(self) -> bool:
        return self.report.has_errors


# --------------------------------------------------------------------------- merging (pure)


def merged_grad(states: list[tuple[str | None, float | None, str]]) -> tuple[str | None, float | None]:
    """One gradient state and norm from every rank's (state, norm, placement) of the same parameter.

    Replicated parameters hold the same (reduced) gradient on every rank: rank 0's state stands, unless a rank
    disagrees (then the worst is shown: none < zero < nonzero).  Sharded ones combine: the global norm is the
    root of the summed squares of the shard norms; ranks holding an empty shard do not count.
    """
    held = [(s, n, pl) for s, n, pl in states if s != NO_SHARD]
    if not held:
        return (NO_SHARD if states else None), None
    if all(s is None for s, _, _ in held):
        return None, None
    sharded = any(pl != "replicated" for _, _, pl in held)
    kinds = [s for s, _, _ in held]
    if not sharded:
        rank0 = held[0]
        if len(set(kinds)) == 1:
            return rank0[0], rank0[1]
        for worst in ("none", "zero", "present", "nonzero"):
            if worst in kinds:
                return worst, next(n for s, n, _ in held if s == worst)
        return rank0[0], rank0[1]
    if "nonzero" in kinds:
        total = sum((n or 0.0) ** 2 for s, n, _ in held if s == "nonzero")
        return "nonzero", total ** 0.5
    if "present" in kinds:
        return "present", None
    if all(k == "zero" for k in kinds):
        return "zero", 0.0
    if all(k in ("zero", "none") for k in kinds) and "zero" in kinds:
        return "zero", 0.0
    return kinds[0], None


def merge_run_facts(facts: RunFacts, dist: DistFacts) -> RunFacts:
    """Rank 0's ``RunFacts`` (already under original names) with parameters merged over every rank.

    The shape is the global one, the dtype the one the ranks hold; ``grad``/``grad_norm`` combine the shards;
    ``numel``/``nbytes`` are global.
    """
    per = dist.per_param()
    training = {m.name: m.training for m in facts.modules}
    params = []
    for p in facts.parameters:
        if not p.module and "." in p.name:  # an FSDP2 parameter the engine found no owner for: its name says it
            owner = p.name.rpartition(".")[0]
            p = replace(p, module=owner, module_training=training.get(owner, p.module_training))
        ranks = per.get(p.name)
        if not ranks:
            params.append(p)
            continue
        held = [r for r in ranks if r is not None]
        grad, norm = merged_grad([(r.grad, r.grad_norm, r.placement) for r in held])
        shape = held[0].global_shape if held else p.shape
        numel = 1
        for d in shape:
            numel *= d
        # the dtype the ranks hold it in: an FSDP2 root unit keeps its unsharded parameters registered from
        # forward to backward, in the MixedPrecisionPolicy's param_dtype, when the engine reads them
        dtype = held[0].dtype if held else p.dtype
        size = _dtype_size(dtype) if dtype != p.dtype else p.nbytes // p.numel if p.numel else _dtype_size(p.dtype)
        state = GradState(grad) if grad is not None and grad != NO_SHARD else None
        params.append(replace(p, shape=shape, dtype=dtype, grad=state, grad_norm=norm, numel=numel,
                              nbytes=numel * size))
    return replace(facts, parameters=tuple(params))


def zero_factors_from_shards(facts: RunFacts, dist: DistFacts) -> RunFacts:
    """Rank 0's facts with the all-zero parameters the ranks' FSDP shards show, where a gradient is exactly zero.

    A single-process run finds a zero factor (LoRA's ``B = 0``) in the autograd graph by reading the parameters'
    values.  Under FSDP (FSDP2, FSDP1) no process holds a whole parameter after the backward (each rank keeps its
    shard, the unsharded values are freed), so the engine finds none.  A parameter whose shard holds only zeros on every
    rank is all zeros: measured.  Which of them explains a zero gradient is then judged from the model's structure
    (an all-zero matrix next to the parameter, sharing a dimension with it), and worded as such
    (``zero_grad_partners`` None: not read off the graph)."""
    if dist.wrapper.kind not in ("fsdp", "fsdp1") or facts.zero_grad_partners:
        return facts
    if not any(p.requires_grad and p.grad is GradState.ZERO for p in facts.parameters):
        return facts
    zero = tuple(name for name, ranks in dist.per_param().items()
                 if ranks and all(r is not None and r.values_zero for r in ranks))
    if not zero:
        return facts
    return replace(facts, zero_grad_partners=None, zero_valued_parameters=zero)


def _dtype_size(dtype: str) -> int:
    for key, size in (("float64", 8), ("complex128", 16), ("complex64", 8), ("int64", 8), ("float16", 2),
                      ("bfloat16", 2), ("int16", 2), ("int8", 1), ("uint8", 1), ("bool", 1)):
        if key in dtype:
            return size
    return 4


# --------------------------------------------------------------------------- renaming (pure)


@dataclass(frozen=True)
class NameMap:
    """Wrapper-side names → the user's names, built by the torch side from the wrapper's own bookkeeping.

    ``modules`` maps every wrapper-side module name to the original one, or to None for the wrapper modules
    themselves (DDP, each FSDP1 ``FullyShardedDataParallel``), which disappear from the report.
    ``types`` gives the user's class name where the wrapper changed it (FSDP2's ``FSDPLinear`` → ``Linear``).
    """

    params: dict[str, str] = field(default_factory=dict)
    modules: dict[str, str | None] = field(default_factory=dict)
    buffers: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str:
        return self.params.get(name, name)

    def module(self, name: str) -> str | None:
        return self.modules.get(name, name)

    def buffer(self, name: str) -> str:
        return self.buffers.get(name, name)


def rename_run_facts(facts: RunFacts, names: NameMap) -> RunFacts:
    """``facts`` under the user's names: the wrapper modules (and the outputs they only pass through) dropped,
    the user's class names where the wrapper changed them, and every parameter, buffer and module name —
    wherever the facts hold one (parameters, modules, tensors, memory, graph, cuts, gradient health) — mapped."""
    modules: list[ModuleFact] = [replace(m, type=names.types.get(m.name, m.type)) for m in facts.modules
                                 if names.module(m.name) is not None]
    tensors = tuple(t for t in facts.tensors if names.module(t.module) is not None)
    memory: MemoryFact | None = facts.memory
    if memory is not None:
        memory = replace(memory, by_module=tuple(x for x in memory.by_module if names.module(x.module) is not None))
    graph = facts.graph
    if graph is not None and graph.call_tree:
        graph = replace(graph, call_tree=_tree_without_wrappers(graph.call_tree, names))
    kept = replace(facts, modules=tuple(modules), tensors=tensors, memory=memory, graph=graph)
    mapping = {k: v for k, v in names.modules.items() if k and v is not None and k != v}
    mapping.update({k: v for k, v in names.buffers.items() if k != v})
    mapping.update({k: v for k, v in names.params.items() if k != v})
    if not mapping:
        return kept
    return rename_strings(kept, lambda text: mapping.get(text, text))  # type: ignore[return-value]


Call = tuple[str, int]


def _tree_without_wrappers(tree: tuple[tuple[Call, Call | None], ...],
                           names: NameMap) -> tuple[tuple[Call, Call | None], ...]:
    """The graph's call tree without the wrapper modules' calls (DDP, FSDP1's wrappers): a call inside one hangs
    from the wrapper's nearest kept ancestor.  Renamed as they were, DDP's own call ``('', 1)`` and the model's
    ``('module', 1)`` both became ``('', 1)``: a call its own parent, which the pictures walked up forever."""
    parent_of = dict(tree)

    def kept(call: Call | None) -> Call | None:
        seen: set[Call] = set()
        while call is not None and names.module(call[0]) is None and call not in seen:
            seen.add(call)
            call = parent_of.get(call)
        return call if call is None or names.module(call[0]) is not None else None

    return tuple((call, kept(parent)) for call, parent in tree if names.module(call[0]) is not None)


WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def clean_name(name: str) -> str:
    """``_fsdp_wrapped_module`` / ``_checkpoint_wrapped_module`` segments removed: the name the user's model gives."""
    return ".".join(p for p in name.split(".") if p not in WRAPPER_SEGMENTS)


def rename_strings(obj: object, fn: Callable[[str], str]) -> object:
    """``obj`` (frozen dataclasses, tuples, lists, dicts, strings) with every string passed through ``fn``:
    reports whose messages carry wrapper-side names (``module.bn``) get the user's names.  A part in which no
    string changes is returned as it is (the same object): only what changed is rebuilt."""
    kind = type(obj)
    if kind is str:
        return fn(obj)  # type: ignore[arg-type]
    if kind in _PLAIN or obj is None:
        return obj
    if kind is tuple or kind is list or kind is frozenset:
        items = [x if type(x) in _PLAIN else rename_strings(x, fn) for x in obj]  # type: ignore[attr-defined]
        if all(a is b for a, b in zip(items, obj, strict=True)):  # type: ignore[call-overload]
            return obj
        return items if kind is list else kind(items)
    if kind is dict:
        pairs = [(rename_strings(k, fn), rename_strings(v, fn)) for k, v in obj.items()]  # type: ignore[attr-defined]
        if all(k2 is k and v2 is v for (k2, v2), (k, v) in zip(pairs, obj.items(), strict=True)):  # type: ignore[attr-defined]
            return obj
        return dict(pairs)
    if isinstance(obj, str):  # a str subclass (an Enum with str values)
        return fn(obj)
    found = _init_fields(kind)
    if found is None:
        return obj
    names, plain = found
    changes = {}
    for name in names:
        value = getattr(obj, name)
        if type(value) in _PLAIN or value is None:
            continue
        renamed = rename_strings(value, fn)
        if renamed is not value:
            changes[name] = renamed
    if not changes:
        return obj
    if not plain:
        return replace(obj, **changes)  # type: ignore[type-var]
    copy = object.__new__(kind)  # plain fields only (no __post_init__, no derived field): set them directly
    values = copy.__dict__
    for name in names:  # not cached properties: those are computed again from the new names
        values[name] = changes[name] if name in changes else getattr(obj, name)
    return copy


_PLAIN = frozenset({int, float, bool, bytes, complex})
_FIELDS: dict[type, tuple[tuple[str, ...], bool] | None] = {}


def _init_fields(cls: type) -> tuple[tuple[str, ...], bool] | None:
    """The ``__init__`` fields of a dataclass type and whether they are all it holds (no ``__post_init__``, no
    field outside ``__init__``, no slots); None for any other type.  Looked up once per type."""
    if cls not in _FIELDS:
        if not is_dataclass(cls):
            _FIELDS[cls] = None
        else:
            every = fields(cls)
            names = tuple(f.name for f in every if f.init)
            plain = len(names) == len(every) and not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
            _FIELDS[cls] = (names, plain)
    return _FIELDS[cls]


_DDP_PREFIX = re.compile(r"(?<![\w.])module\.")


def wrapper_text_cleaner(kind: str) -> Callable[[str], str]:
    """A function removing a wrapper's name segments from free text: ``module.`` (DDP) or
    ``_fsdp_wrapped_module.`` (FSDP1)."""
    if kind == "ddp":
        return lambda text: _DDP_PREFIX.sub("", text)
    if kind == "fsdp1":
        return lambda text: text.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")
    return lambda text: text
