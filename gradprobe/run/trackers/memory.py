"""Live tensor-storage bytes on any device, seen through the run's :class:`~.base.OpStream`.

Every op's outputs pass by; each storage not seen before is counted once and subtracted when it
dies (weak reference callback).  This works the same on CPU, CUDA and the meta device, where it
becomes an estimate that allocates nothing.  It sees tensor storages, not allocator workspaces.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from gradprobe.run.trackers.base import BACKWARD, FORWARD, Phase


def for_each_output(out: Any, track: Callable[[torch.Tensor], None]) -> None:
    """``track`` every tensor an op returned: a tensor, a tuple/list of tensors, or (rarely) something nested.
    The fast paths matter: this runs for every op of the forward and backward."""
    if isinstance(out, torch.Tensor):
        track(out)
    elif isinstance(out, (tuple, list)):
        for t in out:
            if isinstance(t, torch.Tensor):
                track(t)
            elif t is not None and not isinstance(t, (int, float, bool)):
                for leaf in tree_leaves(t):
                    if isinstance(leaf, torch.Tensor):
                        track(leaf)


def storage_key(t: torch.Tensor) -> int | None:
    """A stable identity for the storage behind ``t`` (works on meta, where data pointers are 0)."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, AttributeError):
        return None  # sparse, nested or wrapper subclasses without a plain storage


@dataclass(frozen=True)
class PhasePeaks:
    """The largest live bytes of each phase (``None``: the phase did not run)."""

    forward: int | None
    backward: int | None


class LiveBytesTracker:
    """Tracks bytes of storages created while installed, and the peak per phase (an op observer)."""

    phases = (FORWARD, BACKWARD)
    on_write = None

    def __init__(self, known: Iterable[torch.Tensor] = ()) -> None:
        self.live = 0
        self.peak = 0
        self.peaks: dict[Phase, int] = {}
        self._refs: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._known: set[int] = set()
        for t in known:
            key = storage_key(t)
            if key is not None:
                self._known.add(key)

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        """A phase's peak begins at what is alive when it starts (the backward's: what the forward left)."""
        self.peak = self.live
        try:
            yield
        finally:
            self.peaks[phase] = self.peak

    def facts(self) -> PhasePeaks:
        return PhasePeaks(self.peaks.get(FORWARD), self.peaks.get(BACKWARD))

    def after_op(self, out: Any) -> None:
        if type(out) is torch.Tensor:  # most ops: one plain tensor, without for_each_output's dispatch
            self._track(out)
        else:
            for_each_output(out, self._track)

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = storage._cdata
        if key in self._refs or key in self._known:
            return
        nbytes = storage.nbytes()
        refs = self._refs

        def _freed(_: Any, key: int = key, nbytes: int = nbytes, tracker: LiveBytesTracker = self) -> None:
            if refs.pop(key, None) is not None:
                tracker.live -= nbytes

        refs[key] = (weakref.ref(storage, _freed), nbytes)
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live
