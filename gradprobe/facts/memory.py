"""The event log of one run's tensor memory, and what it shows at the peaks: torch-free facts.

The event log (:class:`EventLog`) is recorded only when asked for (``--memory-detail``, ``--format html``):
every aten op of the forward and backward, every storage that op created (+bytes) and every storage that
died (-bytes), in order.  It holds packed integer columns (``bytes``, read through :meth:`EventLog.column`),
not a Python object per op: about 40 bytes per op for a typical model (the README gives measured figures).
The same storages count as the run's live-bytes peak counts them: tensors created during the run; the
parameters, buffers and inputs held before it are listed beside it (:attr:`EventLog.held`), never in it.

:class:`PeakAnatomy` is what was alive at one phase's peak, by category, with the largest tensors; the judges
(:mod:`gradprobe.judges.anatomy`) derive it from the log.
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]

# categories of the bytes alive at a peak, in display order; the first four add up to the peak figure
COUNTED = ("gradients", "saved", "outputs", "temporaries")
HELD = ("parameters", "buffers", "inputs")  # alive for the whole run, not part of the peak figure
CATEGORY_LABEL = {
    "gradients": "gradients",
    "saved": "saved for backward",
    "outputs": "model outputs",
    "temporaries": "temporaries",
    "parameters": "parameters",
    "buffers": "buffers",
    "inputs": "inputs",
}

_FORMATS = {
    "op_kind": "H", "op_call": "i", "call_parent": "i", "event_op": "I", "event_delta": "q", "event_storage": "I",
    "storage_event": "I", "storage_shape": "I", "storage_dtype": "B",
}


@dataclass(frozen=True)
class PhaseSpan:
    """Where one phase lies in the log: events ``[first_event, end_event)``, ops ``[first_op, end_op)``."""

    phase: str  # "forward" | "backward"
    first_event: int
    end_event: int
    first_op: int
    end_op: int
    start_bytes: int  # live bytes when the phase began (the backward's: what the forward left)


@dataclass(frozen=True)
class EventLog:
    """Every allocation and free of tensor storage in the run, in order, as packed columns.

    Per op ``o`` (numbered from 0 over forward and backward together): ``op_names[op_kind[o]]`` is the aten
    op, ``calls[op_call[o]]`` the module call that was running (forward) or whose forward made the autograd
    node being run (backward); -1: none.  Per event ``e``: ``event_op[e]`` is the op it happened in or after,
    ``event_delta[e]`` the bytes (+ created, - freed), ``event_storage[e]`` the storage.  Per storage ``s``
    (numbered as created): ``storage_event[s]`` is its creating event, ``shapes[storage_shape[s]]`` and
    ``dtypes[storage_dtype[s]]`` the tensor that created it.  Events between the phases' spans are frees
    between the forward and the backward.  ``call_parent[c]`` is the call that was running when call ``c``
    began (-1: none).  ``saved`` (storage, call index or -1), ``outputs`` (storages) and ``gradients``
    (storage, parameter name) say which storages were saved for backward when the forward ended, are the
    model's outputs, and end the run as a parameter's (or input's) ``.grad``.  ``emptied`` (storages) held no
    bytes when the forward ended although alive: resized to zero in place (FSDP2 frees its all-gather outputs
    with ``UntypedStorage.resize_(0)``, which makes no event here), so nothing holds their bytes then.
    """

    op_names: tuple[str, ...] = ()
    calls: tuple[tuple[str, int], ...] = ()
    shapes: tuple[Shape, ...] = ()
    dtypes: tuple[str, ...] = ()
    op_kind: bytes = b""
    op_call: bytes = b""
    call_parent: bytes = b""
    event_op: bytes = b""
    event_delta: bytes = b""
    event_storage: bytes = b""
    storage_event: bytes = b""
    storage_shape: bytes = b""
    storage_dtype: bytes = b""
    phases: tuple[PhaseSpan, ...] = ()
    saved: tuple[tuple[int, int], ...] = ()
    outputs: tuple[int, ...] = ()
    gradients: tuple[tuple[int, str], ...] = ()
    held: tuple[tuple[str, int], ...] = ()  # ("parameters", bytes), ("buffers", bytes), ("inputs", bytes)
    estimate: bool = False  # recorded on the meta device: sizes as a real run would have them, nothing allocated
    emptied: tuple[int, ...] = ()  # alive at the forward's end with storage resized to 0 bytes (FSDP2 reshard)

    def column(self, name: str) -> memoryview:
        """A packed column as integers (see the class docstring for the names)."""
        return memoryview(getattr(self, name)).cast(_FORMATS[name])

    @property
    def ops(self) -> int:
        return len(self.op_kind) // 2

    @property
    def events(self) -> int:
        return len(self.event_delta) // 8

    @property
    def storages(self) -> int:
        return len(self.storage_dtype)

    @property
    def nbytes(self) -> int:
        """Size of the packed columns: what the log costs to keep."""
        return sum(len(getattr(self, name)) for name in _FORMATS)

    def span(self, phase: str) -> PhaseSpan | None:
        for s in self.phases:
            if s.phase == phase:
                return s
        return None

    def op_name(self, op: int) -> str:
        return self.op_names[self.column("op_kind")[op]] if 0 <= op < self.ops else "?"

    def call_at(self, op: int) -> tuple[str, int] | None:
        if not 0 <= op < self.ops:
            return None
        c = self.column("op_call")[op]
        return self.calls[c] if c >= 0 else None


@dataclass(frozen=True)
class LiveTensor:
    """One storage alive at a peak."""

    nbytes: int
    shape: Shape
    dtype: str
    category: str  # one of COUNTED
    op: str  # the aten op that created it
    op_index: int
    module: str | None  # the module call that created it (None: outside every call)
    call: int
    phase: str  # the phase that created it
    saved_by: str | None = None  # for saved tensors: the module call that saved it ("" the model, None none)


@dataclass(frozen=True)
class ModuleBytes:
    """Bytes of saved-for-backward storages alive at a peak, by the module call that saved them first."""

    module: str
    call: int
    nbytes: int


@dataclass(frozen=True)
class PeakAnatomy:
    """What was alive at one phase's peak, measured (or, on meta, estimated) from the event log."""

    phase: str
    peak_bytes: int  # equals the categories in COUNTED added up, and the phase's peak in MemoryFact
    event: int  # the event at which the peak was reached (-1: at the phase's start)
    op_index: int
    op: str
    module: str | None  # module call running at the peak (None: outside every call)
    call: int
    categories: tuple[tuple[str, int], ...]  # (category, bytes) for COUNTED then HELD
    saved_by_module: tuple[ModuleBytes, ...]  # largest first
    top: tuple[LiveTensor, ...]  # largest first
    live_tensors: int  # storages alive at the peak (counted ones)
    estimate: bool = False

    def category(self, name: str) -> int:
        return dict(self.categories).get(name, 0)


@dataclass(frozen=True)
class KeptTensor:
    """A storage the forward created that outlived it without autograd keeping it (not saved, not an output)."""

    nbytes: int
    shape: Shape
    dtype: str
    op: str
    op_index: int
    module: str | None
    call: int
