"""One compare-modes session: the model, its inputs and the state every run starts from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from gradprobe.run.compare.fastpath import NestedWatch
from gradprobe.run.compare.inputs import KeptInputs
from gradprobe.run.compare.outputs import OutputDiff, Snapshot, snapshot
from gradprobe.run.compare.start import StartState
from gradprobe.run.state import grad_context

if TYPE_CHECKING:
    from gradprobe.run.compare.attribution import EarlyInputs
    from gradprobe.run.probe import RunSetup

Step = Callable[[str], None]  # reports one finished step to the progress display


class CallInputs(Protocol):
    """What the model is called with: ``model(*inputs.args, **inputs.kwargs)`` (the load layer's ExampleInputs)."""

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...


@dataclass
class Session:
    """What every run of one comparison shares; each run starts from :meth:`reset`."""

    model: nn.Module
    inputs: CallInputs  # handed on unchanged to run_probe
    kept: KeptInputs  # the user's inputs as supplied, put back before every run
    start: StartState
    step: Step
    nested: NestedWatch  # which rows took nn.TransformerEncoder's nested-tensor fast path
    # what each tracked run restores and derives from the model, taken once at the first one: every tracked run
    # starts from the same state (reset), so capturing it again per row would only repeat the work (issue 16)
    run_setup: RunSetup | None = None
    # compare_outputs by id() of the two snapshots, for those compared twice (diffs.py); they outlive the dict
    diffs: dict[tuple[int, int], OutputDiff] = field(default_factory=dict)
    early_inputs: EarlyInputs | None = None  # recorded by the eval + no_grad tracked run for the attribution

    @property
    def device(self) -> torch.device:
        return self.start.device

    @property
    def on_meta(self) -> bool:
        return self.start.device.type == "meta"

    def reset(self, buffers: bool = False) -> None:
        """Buffers, parameter values, the RNG and the inputs as at the start (``buffers``: every buffer copied
        back, see :meth:`StartState.reset`)."""
        self.start.reset(buffers)
        self.kept.reset()

    def other_random_state(self, seed: int | None) -> None:
        """The starting state, but the generators the run uses seeded with ``seed + 1`` (the initial seed + 1
        without one): every other run starts from the same RNG state, which hides sampling in eval."""
        other = (seed if seed is not None else torch.initial_seed()) + 1
        self.reset()
        for device in {torch.device("cpu"), self.device}:  # only the generators the run uses; reset after
            gen = torch.Generator(device=device)
            gen.manual_seed(other)
            if device.type == "cpu":
                torch.random.set_rng_state(gen.get_state())
            elif device.type == "cuda":
                torch.cuda.set_rng_state(gen.get_state(), device)

    def call(self) -> Any:
        """The model on its inputs, in whatever mode and grad mode are set."""
        return self.model(*self.inputs.args, **self.inputs.kwargs)

    def forward(self, mode: str, grad_mode: str, *, reset: bool = True, copy: bool = True) -> Snapshot:
        """One plain forward from the starting state (``reset=False``: as the caller left it), trackers off;
        ``copy=False``: the output uncopied, to be compared before anything else runs (:func:`snapshot`)."""
        if reset:
            self.reset()
        self.start.set_mode(mode)
        with grad_context(grad_mode):
            return snapshot(self.call(), copy=copy)
