"""Bytes by category at each phase's peak, through torch's own FSDP/DDP memory trackers.

torch's ``FSDPMemTracker`` (``torch.distributed._tools``) already knows FSDP2's categories: it hooks FSDP's
pre-forward, post-forward, pre-backward and post-backward to tell unsharded parameters from all-gather and
reduce-scatter buffers, and it patches ``UntypedStorage.resize_`` (how FSDP allocates and frees unsharded
parameters, which a dispatch mode never sees).  It keeps one overall peak; the subclasses here add a peak per
phase of gradprobe's step (forward, backward, optimizer) and the bytes autograd saved, by module.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradprobe.facts.fit import CATEGORIES, ModuleSaved, PhaseMemory

# torch's category names → gradprobe's (facts.fit.CATEGORIES)
_CATEGORY = {
    "Sharded Param": "sharded_parameters", "Parameter": "sharded_parameters",
    "Unsharded Param": "unsharded_parameters",
    "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "Gradient": "gradients",
    "OptState": "optimizer_state", "Optstate": "optimizer_state",
    "Activation": "activations", "Temp": "temporaries",
    "All Gather": "all_gather", "Reduce Scatter": "reduce_scatter",
    "Buffer": "buffers", "Inputs": "inputs", "Input": "inputs",
    "Other": "inputs",  # MemTracker.track_external: only the inputs are passed to it
}


def _phase_mixin(base: type) -> type:
    class PhaseTracker(base):  # type: ignore[misc, valid-type]
        """``base`` plus the snapshot at the peak of each phase (what was alive, by torch's category)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.phase = "forward"
            self.extra: dict[str, int] = {}  # bytes held outside the tracker's view (DDP's buckets)
            self.extra_by_phase: dict[str, dict[str, int]] = {}  # ... in one phase only (phase → category)
            self.phase_peaks: dict[str, tuple[int, dict[str, int]]] = {}
            self.backend_bytes: list[int] = []  # storages of a backend's own, not counted (see _track)
            self._backend_seen: set[int] = set()
            self._func: Any = None

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is _DEVICE and len(args) == 1 and isinstance(args[0], _fake_tensor_type()):
                # a fake tensor's ``.device`` (half the ops of an estimate): allocates nothing, so torch's
                # bookkeeping has nothing to record; answered as FakeTensor's own handler answers it
                fake = args[0]
                return torch.device("meta") if fake.fake_mode.in_kernel_invocation else fake.fake_device
            if func in _MARKERS:  # FSDP's record_function markers: no tensor in or out, nothing to count or fake
                from torch.utils._python_dispatch import _disable_current_modes

                with _disable_current_modes():
                    return func(*args, **(kwargs or {}))
            self._func = func
            return super().__torch_dispatch__(func, types, args, kwargs)

        def _track(self, reftype: Any, t: torch.Tensor) -> None:
            """torch's bookkeeping, except for a storage the process group allocated where no dispatch mode sees it
            and that first shows up as the view a collective's ``wait()`` takes of it.  gloo's reduce-scatter
            (``ProcessGroupGloo::reduce_scatter_tensor_coalesced``) clones its input in C++, all-reduces the clone
            on its worker thread and, in ``wait()``, copies this rank's chunk of it into the output; the clone lives
            until gloo's worker drops the all-reduce work, sometimes after the next unit's all-gather.  NCCL (and
            the fake group of the simulation) holds no such tensor, so it is kept out of the categories and listed
            in ``backend_bytes``."""
            func = self._func
            if func is not None and getattr(func, "is_view", False) and _inside_collective():
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    st = None
                if st is not None and st not in self._WINFO:
                    if st.data_ptr() not in self._backend_seen:  # split() gives several views of one storage
                        self._backend_seen.add(st.data_ptr())
                        self.backend_bytes.append(st.nbytes())
                    return
            if self._in_opt and reftype is type(reftype).OPT:
                # torch files every storage created inside ``optimizer.step()`` as optimizer state, Adam's
                # intermediates (``exp_avg_sq.sqrt()``, the denominator) included; the state exists before the
                # step here (step.initial_state), so a new storage is a temporary.  Any state the step itself
                # creates is filed as state again by torch's post-step hook (_track_optimizer_states)
                reftype = type(reftype).TEMP
            super()._track(reftype, t)

        def set_phase(self, phase: str) -> None:
            """A phase's peak begins at what is alive when it starts (the backward's: what the forward left)."""
            self.phase = phase
            self._note_peak()

        def _update_peak_stats(self, peak_state: Any) -> None:
            # torch's version also keeps a peak snapshot per module, walking every module on every op (a third
            # of the run for a 7B model); only the per-phase peaks are reported here
            self._note_peak()

        def _note_peak(self) -> None:
            """Called on every op: only the totals are read, the categories copied when the phase's peak rises."""
            snaps = self._curr_mem_snap.values()
            total = sum(snap.get("Total", 0) for snap in snaps)
            best = self.phase_peaks.get(self.phase)
            if best is not None and total <= best[0]:
                return
            merged: dict[str, int] = {}
            for snap in snaps:
                for key, value in snap.items():
                    name = getattr(key, "value", key)
                    if name != "Total":
                        merged[name] = merged.get(name, 0) + value
            self.phase_peaks[self.phase] = (total, merged)

        def storage_kind(self, t: torch.Tensor) -> str | None:
            """torch's category of the storage behind ``t`` (None: not tracked)."""
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                return None
            winfo, _ = self._WINFO.get(st, (None, None))
            return None if winfo is None else str(getattr(winfo.reftype, "value", winfo.reftype))

        def phases(self) -> tuple[PhaseMemory, ...]:
            out = []
            for phase, (total, snap) in self.phase_peaks.items():
                cats = dict.fromkeys(CATEGORIES, 0)
                for name, value in snap.items():
                    cats[_CATEGORY.get(name, "temporaries")] += value
                extra = dict(self.extra)
                for name, value in self.extra_by_phase.get(phase, {}).items():
                    extra[name] = extra.get(name, 0) + value
                for name, value in extra.items():
                    cats[name] += value
                out.append(PhaseMemory(phase, total + sum(extra.values()), tuple(cats.items())))
            return tuple(out)

    return PhaseTracker


_DEVICE = torch.ops.prim.device.default
_MARKERS = (torch.ops.profiler._record_function_enter_new.default,
            torch.ops.profiler._record_function_exit._RecordFunction)


@functools.cache
def _fake_tensor_type() -> type:
    """FakeTensor, imported once (this runs on every op)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return FakeTensor


@functools.cache
def _c10d_file() -> str:
    """distributed_c10d.py's file name, compared whole (this runs on every view op)."""
    import torch.distributed.distributed_c10d as c10d

    return c10d.__file__


def _inside_collective(depth: int = 12) -> bool:
    """Whether torch.distributed's collective entry points (distributed_c10d.py) are on the Python stack."""
    c10d_file = _c10d_file()
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code.co_filename == c10d_file:
            return True
        frame = frame.f_back
    return False


def make_tracker(model: nn.Module, optimizer: Any, inputs: Any) -> Any:
    """The phase tracker for ``model``: FSDP's categories for an FSDP2 root, the plain ones otherwise (DDP)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        tracker = _phase_mixin(FSDPMemTracker)(model, optimizer)
        tracker.track_inputs(inputs)
        return tracker
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = _phase_mixin(MemTracker)()
    tracker.track_external(model, *([optimizer] if optimizer is not None else []), *inputs)
    return tracker


class SavedByModule:
    """Bytes autograd saved for backward, by the innermost module call running when they were saved.

    Counted once per storage, only storages the tracker files as activations: an unsharded parameter saved by a
    linear layer is FSDP's (freed after the unit's forward), not an activation."""

    def __init__(self, model: nn.Module, tracker: Any) -> None:
        self.tracker = tracker
        self.stack: list[str] = []
        self.bytes: dict[str, int] = {}
        self.types = {name: type(m).__name__ for name, m in model.named_modules()}
        self._seen: set[int] = set()
        self._model = model

    @contextlib.contextmanager
    def install(self) -> Iterator[None]:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        names = {id(m): name for name, m in self._model.named_modules()}

        def pre(module: nn.Module, _: Any) -> None:
            if id(module) in names:
                self.stack.append(names[id(module)])

        def post(module: nn.Module, _: Any, __: Any) -> None:
            if id(module) in names and self.stack:
                self.stack.pop()

        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield
        finally:
            for h in handles:
                h.remove()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        kind = self.tracker.storage_kind(t)
        if kind == "Activation":
            st = t.untyped_storage()
            key = st._cdata
            if key not in self._seen:
                self._seen.add(key)
                where = self.stack[-1] if self.stack else ""
                self.bytes[where] = self.bytes.get(where, 0) + st.nbytes()
        return t

    def facts(self) -> tuple[ModuleSaved, ...]:
        rows = [ModuleSaved(name, self.types.get(name, "?"), n) for name, n in self.bytes.items() if n]
        return tuple(sorted(rows, key=lambda r: -r.nbytes))
