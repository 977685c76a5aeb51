"""The ``--grads`` tracker: one object installed for the forward and the backward phase, whose ``facts()`` give
:class:`~gradprobe.facts.grad_health.GradHealthFacts` (the package docstring says how it measures)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from gradprobe.facts.grad_health import GradHealthFacts, GradThresholds
from gradprobe.facts.run import RunFacts
from gradprobe.run.trackers.base import BACKWARD, FORWARD, Phase
from gradprobe.run.trackers.grad_health.backward import BackwardRecording
from gradprobe.run.trackers.grad_health.build import FactBuilding
from gradprobe.run.trackers.grad_health.forward import ForwardRecording
from gradprobe.run.trackers.grad_health.records import CallRecord, CallSource, NodeRecord, Slot
from gradprobe.run.trackers.nonfinite_origin import CallCopy


class GradHealthTracker(ForwardRecording, BackwardRecording, FactBuilding):
    """Tracker for both phases of a ``--grads`` run; ``facts()`` gives :class:`GradHealthFacts`."""

    phases = (FORWARD, BACKWARD)

    def __init__(self, model: nn.Module, calls: CallSource, device: torch.device,
                 thresholds: GradThresholds | None = None, display_depth: int = 8) -> None:
        self._model = model
        self._source = calls
        self._names = calls.names
        self._device = device
        self._thresholds = thresholds or GradThresholds()
        self._depth = display_depth
        self._calls: list[CallRecord] = []
        self._stack: list[int] = []
        self._count: dict[str, int] = {}
        self._finished = 0
        self._slots: list[Slot] = []
        self._by_key: dict[tuple[int, int], int] = {}  # (id(tensor), version) -> slot
        self._by_id: dict[int, int] = {}  # id(tensor) -> its latest slot
        self._tensor_hooks: list[Any] = []
        self._node_hooks: list[Any] = []
        self._nodes: list[NodeRecord] = []
        self._fired = 0
        self._node_rank = 0
        self._origin_done = False
        self._origin_call: int | None = None
        self._origin_copy: CallCopy | None = None
        self._backward = False
        self._facts: GradHealthFacts | None = None
        self._measure = device.type != "meta"

    # ---------------------------------------------------------------------------------------------- phases

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        if phase == FORWARD:
            handles = [register_module_forward_pre_hook(self._pre),
                       register_module_forward_hook(self._post, with_kwargs=True)]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()
                self._stack.clear()
            return
        if self._measure:
            self._watch_nodes()
        self._backward = True
        try:
            yield
        finally:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in (*self._tensor_hooks, *self._node_hooks):
            handle.remove()
        self._tensor_hooks.clear()
        self._node_hooks.clear()
        for node in self._nodes:  # nodes that never ran: no reference to the graph outlives the run
            node.node = None

    # ----------------------------------------------------------------------------------------------- facts

    def refine(self, facts: RunFacts) -> RunFacts:
        """The run's facts with ``grad_health`` filled in (the run calls this after its fact builders)."""
        return replace(facts, grad_health=self.facts())

    def facts(self) -> GradHealthFacts:
        if self._facts is None:
            self._remove_hooks()
            self._facts = self._build()
            self._origin_copy = None
        return self._facts
