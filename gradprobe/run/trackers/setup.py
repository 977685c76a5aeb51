"""Which trackers one run gets, in which order: the only place a new tracker is wired in.

The run's phases install :attr:`RunTrackers.ordered` (see :func:`~gradprobe.run.trackers.base.installed`);
the fact builders (:mod:`gradprobe.run.builders`) read each tracker's ``facts()``.  Adding a tracker means
a field here, its construction in :func:`make_trackers`, and a fact builder: never the run function.

Order matters where trackers stack: the module recorder first (others ask it which call is running),
the meta kernel fixes below the shared op stream (so live bytes see the outputs a CPU kernel gives).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradprobe.facts.grad_health import GradThresholds
from gradprobe.facts.run import MemoryApproximation, RunFacts
from gradprobe.run.trackers.base import (
    BACKWARD,
    FORWARD,
    NamedModules,
    OpObserver,
    OpStream,
    Phase,
    Tracker,
    installed,
)
from gradprobe.run.trackers.cuts import CutTracker
from gradprobe.run.trackers.events import EventLogTracker
from gradprobe.run.trackers.experts import ExpertTracker, find_fused_experts
from gradprobe.run.trackers.grad_health import GradHealthTracker
from gradprobe.run.trackers.host_values import HostInputs, HostValues
from gradprobe.run.trackers.memory import LiveBytesTracker
from gradprobe.run.trackers.meta import MetaKernelFidelity, meta_fidelity
from gradprobe.run.trackers.meta_fused import MetaFusedChoice
from gradprobe.run.trackers.modules import ModuleRecorder
from gradprobe.run.trackers.saved import SavedTensorTracker
from gradprobe.run.trackers.writes import ParamWriteGuard


class MetaKernels:
    """Tracker for a run on the meta device: CPU kernel choices and outputs in forward (see trackers.meta),
    and the inputs' CPU values followed through forward and backward (see trackers.host_values)."""

    phases = (FORWARD, BACKWARD)

    def __init__(self, recorder: ModuleRecorder, host_inputs: HostInputs | None = None) -> None:
        self.written: set[int] = set()
        pairs, unknown = host_inputs or ([], [])
        self.values = HostValues(pairs, unknown)
        stack = recorder.call_stack
        self.fused = MetaFusedChoice(lambda: stack()[-1] if stack() else ("", 0))

    @property
    def approximate(self) -> tuple[MemoryApproximation, ...]:
        """Calls whose estimate rests on another kernel than the CPU's (see trackers.meta_fused)."""
        return tuple(self.fused.approximate)

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        if phase != FORWARD:  # backward: values, and the CPU kernels' outputs (an LSTM's bias gradients)
            with self.values, MetaKernelFidelity():
                yield
            return
        with self.values, self.fused, meta_fidelity(self.fused.workspace_unknown) as kernels:
            try:
                yield
            finally:
                self.written |= kernels.written

    def facts(self) -> frozenset[int]:
        """Storage keys of buffers a kernel wrote without bumping their version (BatchNorm statistics)."""
        return frozenset(self.written)


class GraphCuts:
    """Tracker for the forward: where it cuts the graph, which parameters it reads, which flags it flips
    (:class:`~gradprobe.run.trackers.cuts.CutTracker`); it refines the finished facts (:meth:`refine`)."""

    phases = (FORWARD,)

    def __init__(self, model: nn.Module, names: Mapping[int, str], *, cuts: bool, call_args: bool = True,
                 named: NamedModules) -> None:
        self._cuts = CutTracker(model, names, cuts=cuts, call_args=call_args, named=named)

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        with self._cuts:
            yield

    def facts(self) -> CutTracker:
        return self._cuts

    def refine(self, facts: RunFacts) -> RunFacts:
        """Flags as handed over to forward, plus the cuts, the parameters read and the flags forward flipped."""
        return self._cuts.apply(facts)


@dataclass
class RunTrackers:
    """The trackers of one run (``None``: switched off by an option or not needed on this device)."""

    recorder: ModuleRecorder
    guard: ParamWriteGuard
    live: LiveBytesTracker | None = None
    saved: SavedTensorTracker | None = None
    kernels: MetaKernels | None = None
    cuts: GraphCuts | None = None
    stream: OpStream | None = None
    grad_health: GradHealthTracker | None = None  # --grads
    events: EventLogTracker | None = None  # the memory event log (--memory-detail)
    experts: ExpertTracker | None = None  # fused mixture-of-experts parameters, when the model has any
    ordered: list[Tracker] = field(default_factory=list)

    def installed(self, phase: Phase) -> contextlib.AbstractContextManager[None]:
        """Every tracker of ``phase`` installed for a block."""
        return installed(self.ordered, phase)

    def refine(self, facts: RunFacts) -> RunFacts:
        """The run's facts, refined by every tracker that has a ``refine`` (in order)."""
        for tracker in self.ordered:
            refine = getattr(tracker, "refine", None)
            if refine is not None:
                facts = refine(facts)
        return facts


def make_trackers(model: nn.Module, device: torch.device, *, memory: bool, tensors: bool, grad: bool,
                  guard: ParamWriteGuard, names: Mapping[int, str], state_tensors: Sequence[torch.Tensor],
                  input_tensors: Sequence[torch.Tensor], grads: GradThresholds | None = None,
                  depth: int = 8, events: bool = False,
                  host_inputs: HostInputs | None = None, cuts: bool = True, rows: bool = False,
                  named: NamedModules, fused: list[Any] | None = None,
                  module_calls: bool = True, saved: bool | None = None) -> RunTrackers:
    """Build the trackers the options ask for.  ``grad``: the forward runs with grad enabled (saved tensors
    and graph cuts exist only then); ``names``: id(parameter) -> canonical name; ``state_tensors``
    (parameters, buffers) cost no new bytes; ``grads`` (thresholds) switches the gradient-health tracker on,
    ``depth`` is its flow view's depth; ``events``: record the memory event log; ``host_inputs``: on meta,
    (input, its CPU copy) for each input whose values are known, and the inputs without; ``cuts``: watch every
    torch call of the forward for graph cuts and parameters read (flags flipped by forward are recorded either
    way); ``rows``: only compare-modes' row facts are built (``ProbeOptions.row_facts``): no flags flipped, no
    module inputs for the per-module memory, no call timeline, output bytes or saved bytes per call (but on
    meta).  ``named``: ``model.named_modules(remove_duplicate=False)``, the one walk every tracker shares (issue
    16); ``fused`` (:func:`find_fused_experts` of it): given when the caller has it already.  ``module_calls``:
    the module recorder's hooks are installed (off: the recorder only names modules, and sees no call; always on
    meta).  ``saved``: count saved-for-backward bytes (default: ``grad``); a no_grad forward that enables grad
    inside saves tensors too."""
    if saved is None:
        saved = grad
    # a row reads no call timeline, output bytes per call nor saved bytes per call; on meta the timeline names
    # the module of a failing backward, which a row's error quotes
    per_call = not rows or device.type == "meta"
    recorder = ModuleRecorder(named, record_tensors=tensors, record_inputs=memory and not rows,
                              record_timeline=per_call)
    found = RunTrackers(recorder=recorder, guard=guard)
    if memory:
        found.live = LiveBytesTracker(known=[*state_tensors, *input_tensors])
        if saved:
            found.saved = SavedTensorTracker(exclude=state_tensors, calls=recorder if per_call else None)
        if events:  # the same storages as the live-bytes count: its running sum reaches the same peaks
            found.events = EventLogTracker(recorder, known=[*state_tensors, *input_tensors])
    if device.type == "meta":
        found.kernels = MetaKernels(recorder, host_inputs)
    found.cuts = None if rows else GraphCuts(model, names, cuts=grad and cuts, call_args=memory, named=named)
    if fused is None:
        fused = find_fused_experts(named)
    found.experts = ExpertTracker(fused) if fused else None
    observers: list[OpObserver] = [o for o in (guard if guard.watching else None, found.live, found.events)
                                   if o is not None]
    found.stream = OpStream(observers) if observers else None
    if found.saved is not None:
        found.saved.stream = found.stream
    if grads is not None:  # after the recorder (it asks which call made a node); its ops unseen by the stream
        found.grad_health = GradHealthTracker(model, recorder, device, grads, depth)
    watch_calls = module_calls or device.type == "meta"
    candidates: list[Tracker | None] = [recorder if watch_calls else None, guard, found.live, found.saved,
                                        found.kernels, found.cuts, found.events, found.stream, found.grad_health,
                                        found.experts]
    found.ordered = [t for t in candidates if t is not None]
    return found
