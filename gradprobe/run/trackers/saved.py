"""Bytes autograd keeps alive for backward, via ``saved_tensors_hooks``.

Each saved storage is counted once; storages of parameters and buffers are
excluded (they are saved by reference and cost nothing new).  A storage counts
only while it is alive: one saved by a branch whose graph was dropped during
the forward is subtracted again, so the figure is what backward will hold.

Installing any saved-tensor hooks switches off autograd's own check that a
saved tensor was not modified in place, so this tracker records ``_version``
when packing and raises autograd's error when unpacking a tensor that changed.

For attribution, each storage remembers the module calls that were running at
*every* save of it (the common prefix of the call stacks): a storage is "inside"
a call when all its saves happened inside it.  That is what
``torch.utils.checkpoint`` around the call would stop keeping, and it makes the
expected saving of checkpointing a call exact arithmetic (see ``module_memory``).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gradprobe.facts.run import ModuleMemory
from gradprobe.run.trackers.base import FORWARD, OpStream, Phase
from gradprobe.run.trackers.memory import storage_key
from gradprobe.run.trackers.modules import Call, CallInput

_sequence_nr = getattr(torch._C._autograd, "_get_sequence_nr", None)
_NO_DISPATCH = torch._C._DisableTorchDispatch
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # no __torch_dispatch__ of their own


class CallSource(Protocol):
    """Where the module calls come from (a :class:`~gradprobe.run.trackers.modules.ModuleRecorder`)."""

    def call_stack(self) -> Sequence[Call]: ...

    def call_inputs(self) -> Mapping[Call, tuple[CallInput, ...]]: ...


class _Saved:
    """One saved storage: its size, the first call that saved it, the calls enclosing every save, how many
    graph nodes still hold it (a storage the user keeps alive is not saved once its graph is gone), and the
    sequence number of the autograd node that saved it first (-1 when unknown)."""

    __slots__ = ("first", "holders", "nbytes", "prefix", "ref", "seq")

    def __init__(self, nbytes: int, prefix: tuple[Call, ...], first: Call | None, ref: Any, seq: int) -> None:
        self.nbytes = nbytes
        self.prefix = prefix
        self.first = first
        self.ref = ref
        self.seq = seq
        self.holders = 0


class _Packed:
    """What autograd keeps for one saved tensor.  It dies with the graph node holding it, and then tells the
    record: a storage whose graph was dropped inside forward (behind an argmax) is no longer saved, even when
    something else (the user's input) keeps the storage alive."""

    __slots__ = ("key", "record", "records", "tensor", "version")

    def __init__(self, tensor: torch.Tensor, version: int) -> None:
        self.tensor = tensor
        self.version = version
        self.record: _Saved | None = None
        self.key = 0
        self.records: dict[int, _Saved] | None = None

    def hold(self, key: int, record: _Saved, records: dict[int, _Saved]) -> None:
        record.holders += 1
        self.key, self.record, self.records = key, record, records

    def __del__(self) -> None:
        record, records = self.record, self.records
        if record is not None and records is not None:
            record.holders -= 1
            if record.holders == 0 and records.get(self.key) is record:
                del records[self.key]


@dataclass(frozen=True)
class SavedFacts:
    """Saved-for-backward storages alive at the end of the forward."""

    total_bytes: int
    by_call: Mapping[Call, int]  # bytes by the innermost call that first saved each storage
    records: Mapping[int, _Saved]  # storage key -> record
    input_keys: Mapping[Call, tuple[tuple[int | None, int], ...]]  # each call's inputs (key None: storage died)
    excluded: frozenset[int]  # storage keys of parameters and buffers (saved by reference, cost nothing new)

    def by_node(self) -> dict[int, int]:
        """Autograd node sequence number -> bytes of the storages that node was the first to save."""
        found: dict[int, int] = {}
        for r in self.records.values():
            if r.seq >= 0:
                found[r.seq] = found.get(r.seq, 0) + r.nbytes
        return found


class SavedTensorTracker:
    """Tracker for the forward: counts saved-for-backward bytes and attributes them to module calls.

    ``calls`` (a :class:`CallSource`, normally the run's module recorder) is asked for the running calls
    at every pack; without it nothing is attributed to a call.  The figures are frozen when the forward
    ends, before backward frees them.
    """

    phases = (FORWARD,)

    def __init__(self, exclude: Iterable[torch.Tensor] = (), calls: CallSource | None = None) -> None:
        self.total_bytes = 0
        self.by_call: dict[Call, int] = {}
        self._records: dict[int, _Saved] = {}
        self._exclude: frozenset[int] = frozenset(k for k in (storage_key(t) for t in exclude) if k is not None)
        self._calls = calls
        self._frozen: dict[int, _Saved] | None = None
        self.input_keys: dict[Call, tuple[tuple[int | None, int], ...]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        # the run's op stream, when it has one: a plain tensor's detach then skips the dispatch modes
        self.stream: OpStream | None = None

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        with self:
            yield

    def __enter__(self) -> SavedTensorTracker:
        self._frozen = None
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._freeze()

    def facts(self) -> SavedFacts:
        return SavedFacts(self.total_bytes, self.by_call, self.records, self.input_keys, self._exclude)

    def _freeze(self) -> None:
        """Fix the figures to the storages alive now (the end of the forward)."""
        self._frozen = dict(self._records)
        if self._calls is not None:  # a key whose storage died no longer names it (its address may be reused)
            self.input_keys = {call: tuple((key if ref() is not None else None, nbytes) for key, nbytes, ref in args)
                               for call, args in self._calls.call_inputs().items()}
        alive = self._frozen.values()
        self.total_bytes = sum(r.nbytes for r in alive)
        by_call: dict[Call, int] = {}
        for r in alive:
            if r.first is not None:
                by_call[r.first] = by_call.get(r.first, 0) + r.nbytes
        self.by_call = by_call

    @property
    def records(self) -> dict[int, _Saved]:
        """Storage key → saved storage, alive at the end of the forward (or now, while still active)."""
        return self._frozen if self._frozen is not None else dict(self._records)

    def _pack(self, t: torch.Tensor) -> _Packed:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, AttributeError):
            storage = None
        if storage is not None:
            key = storage._cdata
            if key not in self._exclude:
                record = self._records.get(key)
                stack = self._calls.call_stack() if self._calls is not None else None
                if record is None:
                    prefix = tuple(stack) if stack is not None else ()
                    first = prefix[-1] if prefix else None
                    records = self._records

                    def _freed(_: Any, key: int = key) -> None:
                        records.pop(key, None)

                    # the node saving a tensor is the last one made: its number is the counter minus one
                    seq = _sequence_nr() - 1 if _sequence_nr is not None else -1
                    record = self._records[key] = _Saved(storage.nbytes(), prefix, first,
                                                         weakref.ref(storage, _freed), seq)
                elif stack is not None and record.prefix:
                    prefix = record.prefix
                    n = min(len(prefix), len(stack))
                    i = 0
                    while i < n and prefix[i] == stack[i]:
                        i += 1
                    if i < len(prefix):
                        record.prefix = prefix[:i]
        # detach(): returning ``t`` itself keeps a reference cycle through a saved output's grad_fn alive
        # when no backward follows; the detached view shares t's version counter, so the check below works.
        stream = self.stream
        if stream is not None and type(t) in _PLAIN and stream.alone():
            with _NO_DISPATCH():  # ~10 µs less a saved tensor than through the op stream (issue 16)
                view = t.detach()
            stream.show(view)  # what the stream's observers would have seen of the detach
        else:
            view = t.detach()
        packed = _Packed(view, t._version)
        if storage is not None and key not in self._exclude:
            packed.hold(key, self._records[key], self._records)
        return packed

    @staticmethod
    def _unpack(packed: _Packed) -> Any:
        tensor, version = packed.tensor, packed.version
        if tensor._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{tensor.type()} {list(tensor.shape)}] is at version {tensor._version}; "
                f"expected version {version} instead. Hint: the operation that modified it ran after it "
                "was saved for backward (autograd's check, kept by gradprobe)."
            )
        return tensor


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """``layers.2`` before ``layers.10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name))


def module_memory(saved: SavedFacts | None, output_bytes: Mapping[Call, int]) -> tuple[ModuleMemory, ...]:
    """Per module call: saved bytes (innermost call), saved bytes inside it, output bytes, checkpoint saving.

    Wrapping call C in ``torch.utils.checkpoint`` (non-reentrant) stops autograd keeping every storage
    saved only inside C, and makes it keep C's positional tensor inputs instead.  So the saved bytes drop
    by ``inside(C) - inputs(C)``, where ``inputs(C)`` counts each input storage (not a parameter or
    buffer) that is not already kept by a save outside C.  Sorted by innermost saved bytes, largest first.
    """
    if saved is None:
        return tuple(ModuleMemory(k[0], k[1], 0, output_bytes[k]) for k in sorted(output_bytes))
    records = saved.records
    by_call = saved.by_call
    inside: dict[Call, int] = {}
    for r in records.values():
        for call in r.prefix:
            inside[call] = inside.get(call, 0) + r.nbytes
    saving: dict[Call, int] = {}
    for call, args in saved.input_keys.items():
        cost = 0
        seen: set[int] = set()
        for key, nbytes in args:
            if key is not None:
                if key in saved.excluded or key in seen:
                    continue
                seen.add(key)
                record = records.get(key)
                if record is not None and call not in record.prefix:
                    continue  # already kept by a save outside the call
            cost += nbytes  # checkpoint would keep it (a storage that died in the forward, or saved only inside)
        saving[call] = inside.get(call, 0) - cost
    keys = set(output_bytes) | set(by_call) | set(inside)
    ordered = sorted(keys, key=lambda k: (-by_call.get(k, 0), -inside.get(k, 0), _natural(k[0]), k[1]))
    return tuple(
        ModuleMemory(k[0], k[1], by_call.get(k, 0), output_bytes.get(k, 0), inside.get(k, 0),
                     saving.get(k, inside.get(k, 0)))
        for k in ordered
    )
