"""Modes a run can use, and the snapshot that puts the user's model back as it was.

A probe must never leave the model changed: training flags, ``requires_grad``,
``.grad``, buffers (BatchNorm statistics), optionally parameter values, the
global grad mode and the RNG are captured before a run and restored after it,
also when the run raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradprobe.errors import UsageError
from gradprobe.facts.run import GRAD_MODES, MODES


def check_mode(mode: str, grad_mode: str) -> None:
    """Reject mode names outside the six combinations."""
    if mode not in MODES:
        raise UsageError(f"--mode '{mode}' is not a mode; use train or eval")
    if grad_mode not in GRAD_MODES:
        raise UsageError(f"--grad '{grad_mode}' is not a grad mode; use grad, no_grad or inference_mode")


def grad_context(grad_mode: str) -> contextlib.AbstractContextManager[Any]:
    """``grad`` enables grad explicitly, whatever the ambient mode imported code left behind."""
    if grad_mode == "grad":
        return torch.enable_grad()
    if grad_mode == "no_grad":
        return torch.no_grad()
    if grad_mode == "inference_mode":
        return torch.inference_mode()
    raise UsageError(f"unknown grad mode '{grad_mode}'; use grad, no_grad or inference_mode")


def restore_tensor(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy values back; inference tensors can only be written inside inference mode."""
    ctx = torch.inference_mode() if dst.is_inference() else torch.no_grad()
    with ctx:
        dst.copy_(src)


def table_get(table: Any, key: str) -> Any:
    """``table.get(key)`` that also works on TorchScript's ``OrderedDictWrapper`` (it has no ``get``)."""
    try:
        return table[key]
    except KeyError:
        return None


@dataclass
class ModelState:
    """Everything a run may change on a model and in the process, captured by reference or copy."""

    model: nn.Module
    training: list[tuple[nn.Module, bool]] = field(default_factory=list)
    params: list[tuple[nn.Module, str, nn.Parameter]] = field(default_factory=list)
    requires_grad: list[tuple[nn.Parameter, bool]] = field(default_factory=list)
    grads: list[tuple[nn.Parameter, torch.Tensor | None]] = field(default_factory=list)
    param_values: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    grad_enabled: bool = True
    rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls, model: nn.Module, *, param_values: bool = False, rng: bool = True) -> ModelState:
        """Snapshot ``model``; ``param_values`` clones parameters too (needed before an optimizer step)."""
        state = cls(model=model, grad_enabled=torch.is_grad_enabled())
        seen: set[int] = set()
        for mod in model.modules():
            state.training.append((mod, mod.training))
            for pname, param in mod._parameters.items():
                if param is None:
                    continue
                state.params.append((mod, pname, param))
                if id(param) in seen:
                    continue
                seen.add(id(param))
                state.requires_grad.append((param, param.requires_grad))
                state.grads.append((param, param.grad))
                if param_values and param.device.type != "meta":
                    state.param_values.append((param, param.detach().clone()))
            for bname, buf in mod._buffers.items():
                copy = buf.detach().clone() if buf is not None and buf.device.type != "meta" else None
                state.buffers.append((mod, bname, buf, copy))
        if rng:
            state.rng = torch.random.get_rng_state()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                state.cuda_rng = torch.cuda.get_rng_state_all()
        return state

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        torch.set_grad_enabled(self.grad_enabled)
        for mod, flag in self.training:
            mod.training = flag
        for mod, pname, param in self.params:
            if table_get(mod._parameters, pname) is not param:
                mod._parameters[pname] = param
        for param, flag in self.requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        for param, grad in self.grads:
            if param.grad is not grad:
                param.grad = grad
        for param, value in self.param_values:
            restore_tensor(param, value)
        for mod, bname, buf, copy in self.buffers:
            if table_get(mod._buffers, bname) is not buf:
                mod._buffers[bname] = buf
            if buf is not None and copy is not None:
                restore_tensor(buf, copy)
        if self.rng is not None:
            torch.random.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


@contextlib.contextmanager
def preserved(model: nn.Module, *, param_values: bool = False) -> Iterator[ModelState]:
    """Run a block with the model's state restored afterwards, whatever happens inside."""
    state = ModelState.capture(model, param_values=param_values)
    try:
        yield state
    finally:
        state.restore()


def clear_grads(model: nn.Module) -> None:
    """Detach user gradients before our backward so accumulation never writes into them."""
    for param in model.parameters():
        param.grad = None
