"""The event log of tensor memory: every storage created and freed, per op, with the op and module call.

An op observer on the run's shared :class:`~.base.OpStream` (no second dispatch mode): ``before_op`` notes the
op and the module call, ``after_op`` the storages it created, and a weak reference per storage notes its
death.  It counts exactly the storages :class:`~.memory.LiveBytesTracker` counts (the same rule: a storage
not held before the run, counted once, until it dies), so the log's running sum reaches the same peaks.

Columns are ``array`` objects appended in place: per op 6 bytes, per event 16, per storage 9; the per-storage
weak reference lives only while the storage does.  Which module call ran an op: in the forward the module
recorder's call stack; in the backward the autograd node being run (``torch._C._current_autograd_node``),
mapped through its sequence number to the call whose forward made it (the recorder's
:class:`~.modules.CallTimeline`).
"""

from __future__ import annotations

import contextlib
import weakref
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from gradprobe.facts.memory import EventLog, PhaseSpan
from gradprobe.run.trackers.base import BACKWARD, FORWARD, Phase
from gradprobe.run.trackers.memory import for_each_output, storage_key
from gradprobe.run.trackers.modules import Call, CallTimeline, dtype_name, shape_of

_current_node = getattr(torch._C, "_current_autograd_node", None)
_NO_SEQUENCE = 2**64 - 1  # AccumulateGrad nodes carry this number: no forward call made them


class CallSource(Protocol):
    """What the event log asks the module recorder (a :class:`~.modules.ModuleRecorder` fits)."""

    def call_stack(self) -> Sequence[Call]: ...

    def timeline(self) -> CallTimeline: ...


class EventLogTracker:
    """Records the event log of the forward and backward (a tracker and an op observer)."""

    phases = (FORWARD, BACKWARD)
    on_write = None  # OpObserver: it needs every op (before_op, the stream's optional hook), not only writes

    def __init__(self, calls: CallSource, known: Iterable[torch.Tensor] = ()) -> None:
        self._calls = calls
        self._known: set[int] = {k for k in (storage_key(t) for t in known) if k is not None}
        self.op_kind = array("H")
        self.op_call = array("i")
        self.event_op = array("I")
        self.event_delta = array("q")
        self.event_storage = array("I")
        self.storage_event = array("I")
        self.storage_shape = array("I")
        self.storage_dtype = array("B")
        self.call_parent = array("i")
        self._op_names: list[str] = []
        self._op_index: dict[Any, int] = {}
        self._calls_seen: list[Call] = []
        self._call_index: dict[Call, int] = {}
        self._shapes: dict[tuple[int, ...], int] = {}
        self._dtypes: dict[torch.dtype, int] = {}
        self._alive: dict[int, tuple[Any, int]] = {}  # storage key -> (weak reference, storage index)
        self._last_top: Any = None
        self._last_call = -1
        self._last_node: Any = None
        self._timeline: CallTimeline | None = None
        self._phase: Phase | None = None
        self._open = True
        self.live = 0
        self.spans: list[PhaseSpan] = []
        self.at_forward_end: dict[int, int] = {}  # storage key -> index, for the storages alive then
        self.emptied: list[int] = []  # indices of storages alive at the forward's end but resized to 0 bytes

    # ------------------------------------------------------------------ tracker
    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        self._phase = phase
        first_event, first_op, start = len(self.event_delta), len(self.op_kind), self.live
        self._last_top, self._last_call, self._last_node = None, -1, None
        if phase == BACKWARD:
            self._timeline = self._calls.timeline()
        try:
            yield
        finally:
            self._phase = None
            self._last_top = self._last_node = None
            self.spans.append(PhaseSpan(phase, first_event, len(self.event_delta), first_op, len(self.op_kind),
                                        start))
            if phase == FORWARD:
                self.at_forward_end = {key: index for key, (_, index) in self._alive.items()}
                self.emptied = sorted(index for ref, index in self._alive.values()
                                      if (st := ref()) is not None and st.nbytes() == 0
                                      and self.event_delta[self.storage_event[index]] > 0)
            else:
                self._open = False  # frees after the backward are not part of the run

    def facts(self) -> EventLogTracker:
        return self

    def close(self) -> None:
        """Record nothing more (frees after the run)."""
        self._open = False

    # ------------------------------------------------------------------ op observer
    def before_op(self, func: Any, args: Any, kwargs: Any) -> None:
        kind = self._op_index.get(func)
        if kind is None:
            kind = self._intern_op(func)
        self.op_kind.append(kind)
        if self._phase == FORWARD:
            stack = self._calls.call_stack()
            top = stack[-1] if stack else None
            if top is not self._last_top:
                self._last_top = top
                index = self._call_index.get(top) if top is not None else -1
                self._last_call = index if index is not None else self._intern_stack(stack)
        elif _current_node is not None:
            node = _current_node()
            if node is not self._last_node:
                self._last_node = node
                self._last_call = self._backward_call(node)
        self.op_call.append(self._last_call)

    def after_op(self, out: Any) -> None:
        for_each_output(out, self._track)

    # ------------------------------------------------------------------ internals
    def _intern_op(self, func: Any) -> int:
        name = str(func).removesuffix(".default")
        kind = self._op_index[func] = len(self._op_names)
        self._op_names.append(name)
        return kind

    def _intern_stack(self, stack: Sequence[Call]) -> int:
        """Index of the innermost call, interning it and every enclosing call not seen yet (outermost first)."""
        parent = -1
        for call in stack:
            index = self._call_index.get(call)
            if index is None:
                index = self._call_index[call] = len(self._calls_seen)
                self._calls_seen.append(call)
                self.call_parent.append(parent)
            parent = index
        return parent

    def _backward_call(self, node: Any) -> int:
        if node is None or self._timeline is None:
            return -1
        seq = node._sequence_nr()
        if seq == _NO_SEQUENCE:
            return -1
        call = self._timeline.call_of(seq)
        return self._call_index.get(call, -1) if call is not None else -1

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = storage._cdata
        if key in self._alive or key in self._known:
            return
        nbytes = storage.nbytes()
        index = len(self.storage_dtype)
        try:
            shape = tuple(t.shape)
        except RuntimeError:
            shape = shape_of(t)
        shape_id = self._shapes.get(shape)
        if shape_id is None:
            shape_id = self._shapes[shape] = len(self._shapes)
        dtype_id = self._dtypes.get(t.dtype)
        if dtype_id is None:
            dtype_id = self._dtypes[t.dtype] = len(self._dtypes)
        self.storage_event.append(len(self.event_delta))
        self.storage_shape.append(shape_id)
        self.storage_dtype.append(dtype_id)
        self.event_op.append(len(self.op_kind) - 1)
        self.event_delta.append(nbytes)
        self.event_storage.append(index)
        self.live += nbytes
        alive = self._alive

        def _freed(_: Any, key: int = key, nbytes: int = nbytes, index: int = index,
                   log: EventLogTracker = self) -> None:
            if alive.pop(key, None) is not None and log._open:
                log.live -= nbytes
                log.event_op.append(max(len(log.op_kind) - 1, 0))
                log.event_delta.append(-nbytes)
                log.event_storage.append(index)

        alive[key] = (weakref.ref(storage, _freed), index)

    # ------------------------------------------------------------------ facts
    def index_of(self, t: torch.Tensor) -> int | None:
        """The storage index of a tensor alive now that the log saw created, else None."""
        key = storage_key(t)
        found = self._alive.get(key) if key is not None else None
        return found[1] if found is not None else None

    def event_log(self, *, saved: Mapping[int, Call | None] | None, outputs: Sequence[torch.Tensor],
                  gradients: Sequence[tuple[str, torch.Tensor]], held: Sequence[tuple[str, int]],
                  estimate: bool) -> EventLog:
        """The log as facts.  ``saved``: storage key -> call that first saved it, for the storages saved for
        backward when the forward ended (keys valid then); ``outputs``/``gradients``: tensors alive now."""
        self._open = False
        saved_pairs = []
        if saved:
            for key, call in saved.items():
                index = self.at_forward_end.get(key)
                if index is not None:
                    saved_pairs.append((index, self._call_index.get(call, -1) if call is not None else -1))
        output_indices = sorted({i for i in (self.index_of(t) for t in outputs) if i is not None})
        grad_pairs = sorted({(i, name) for name, g in gradients if (i := self.index_of(g)) is not None})
        shapes = [()] * len(self._shapes)
        for shape, i in self._shapes.items():
            shapes[i] = shape
        dtypes = [""] * len(self._dtypes)
        for dtype, i in self._dtypes.items():
            dtypes[i] = dtype_name(dtype)
        return EventLog(
            op_names=tuple(self._op_names), calls=tuple(self._calls_seen), shapes=tuple(shapes), dtypes=tuple(dtypes),
            op_kind=self.op_kind.tobytes(), op_call=self.op_call.tobytes(), call_parent=self.call_parent.tobytes(),
            event_op=self.event_op.tobytes(), event_delta=self.event_delta.tobytes(),
            event_storage=self.event_storage.tobytes(), storage_event=self.storage_event.tobytes(),
            storage_shape=self.storage_shape.tobytes(), storage_dtype=self.storage_dtype.tobytes(),
            phases=tuple(self.spans), saved=tuple(sorted(saved_pairs)), outputs=tuple(output_indices),
            gradients=tuple(grad_pairs), held=tuple(held), estimate=estimate, emptied=tuple(self.emptied),
        )


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` not in ``seen`` (which is updated)."""
    total = 0
    for t in tensors:
        key = storage_key(t)
        if key is None or key in seen:
            continue
        seen.add(key)
        try:
            total += t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
    return total


def run_event_log(tracker: EventLogTracker, model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                  outputs: Sequence[torch.Tensor], saved_first: Mapping[int, Call | None] | None,
                  estimate: bool) -> EventLog:
    """The event log of a run, with the model's outputs, gradients and held storages marked (after the backward,
    before the model's state is restored).  ``saved_first``: saved storage key -> the call that first saved it."""
    named = list(model.named_parameters(remove_duplicate=False))
    gradients = [(name, p.grad) for name, p in named if p.grad is not None]
    gradients += [(f"input {i}", t.grad) for i, t in enumerate(inputs) if t.requires_grad and t.grad is not None]
    seen: set[int] = set()
    held = [("parameters", _storage_bytes((p for _, p in named), seen)),
            ("buffers", _storage_bytes((b for b in model.buffers() if b is not None), seen)),
            ("inputs", _storage_bytes(inputs, seen))]
    return tracker.event_log(saved=saved_first, outputs=outputs, gradients=gradients, held=held, estimate=estimate)


def call_tree(timeline: CallTimeline) -> tuple[tuple[Call, Call | None], ...]:
    """Every module call with the call it ran inside, from the recorder's timeline of innermost calls.

    The recorder marks the innermost call when a call begins (the new call) and when it ends (the enclosing
    one again), so the mark just before a call's first mark is the call that was running when it began.
    """
    found: dict[Call, Call | None] = {}
    previous: Call | None = None
    for call in timeline.calls:
        if call is not None and call not in found:
            found[call] = previous
        previous = call
    return tuple(found.items())
