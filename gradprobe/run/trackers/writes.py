"""Copy-on-first-write of parameter values: whatever the run writes into a parameter is undone.

A forward may write into its own weights (an EMA, a weight normalisation done in place, a ``.data``
update), and a backward may step an optimizer from a ``register_post_accumulate_grad_hook`` (PyTorch's
"optimizer step in backward" recipe).  Copying every parameter before every run would double a probe's
memory; instead this op observer looks at each aten op's schema, and when an argument the op writes
(``Tensor(a!)``: in-place ops, ``out=``, ``_foreach_*_`` lists) shares its storage with a parameter,
it copies that parameter once, before the op runs.  :meth:`ParamWriteGuard.undo` copies the values
back after the run; :meth:`ParamWriteGuard.facts` says which parameters were written in which phase.

Writes through ``.data`` are seen too (the op's argument shares the parameter's storage), unlike the
version counter.  Not seen: kernels that write an argument their schema does not mark as written.
Cost: nothing per op beyond the shared dispatch mode's schema look-up (the guard is called only for ops
that write an argument); copies only of written parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from gradprobe.run.state import restore_tensor
from gradprobe.run.trackers.base import BACKWARD, FORWARD, Phase, WrittenArgs
from gradprobe.run.trackers.memory import storage_key


class ParamWriteGuard:
    """Op observer: copies a parameter before the first op that writes into its storage (both phases)."""

    phases = (FORWARD, BACKWARD)
    after_op = None

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self._watched: dict[int, list[torch.Tensor]] = {}  # storage key -> the parameters on that storage
        for p in params:
            key = storage_key(p)
            if key is not None and all(q is not p for q in self._watched.get(key, ())):
                self._watched.setdefault(key, []).append(p)
        self._copies: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._written: dict[int, list[Phase]] = {}  # storage key -> phases that wrote it, in order
        self._phase: Phase = FORWARD

    @property
    def watching(self) -> bool:
        """Whether there is anything to guard (a model without parameters needs no observer)."""
        return bool(self._watched)

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        self._phase = phase
        yield

    def on_write(self, func: Any, written: WrittenArgs, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for pos, name, kwarg_only in written:
            value = kwargs.get(name) if kwarg_only or pos >= len(args) else args[pos]
            if isinstance(value, torch.Tensor):
                self._hit(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, torch.Tensor):
                        self._hit(item)

    def _hit(self, t: torch.Tensor) -> None:
        key = storage_key(t)
        params = self._watched.get(key) if key is not None else None
        if params is None:
            return
        phases = self._written.setdefault(key, [])  # type: ignore[arg-type]
        if self._phase not in phases:
            phases.append(self._phase)
        if key not in self._copies:
            self._copies[key] = [(p, p.detach().clone()) for p in params]  # type: ignore[index]

    def facts(self) -> dict[int, tuple[Phase, ...]]:
        """``id(parameter)`` → the phases that wrote into it, for every parameter written."""
        return {id(p): tuple(self._written[key]) for key, params in self._watched.items() if key in self._written
                for p in params}

    def undo(self) -> None:
        """Copy every written parameter's first-seen values back (safe to call more than once)."""
        copies, self._copies = self._copies, {}
        for pairs in copies.values():
            for param, value in pairs:
                restore_tensor(param, value)
