"""Record every module call: which module is running, and the autograd flags of its outputs.

One pair of global forward hooks (as ``torch.utils.module_tracker`` does)
sees every call of every submodule, including repeated calls, without
touching the user's modules; the hooks are always removed on exit.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from gradprobe.facts.run import TensorFact
from gradprobe.run.flatten import flatten_tensors


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``float32``."""
    return str(dtype).removeprefix("torch.")


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    """``tuple(t.shape)``; a nested tensor's ragged dimensions are -1 (it has no single size there)."""
    if not t.is_nested:
        return tuple(t.shape)
    dims = []
    for d in range(t.dim()):
        try:
            size = t.size(d)
        except RuntimeError:  # strided nested tensors raise for an irregular dimension
            size = -1
        dims.append(size if isinstance(size, int) else -1)  # jagged ones give a symbolic size
    return tuple(dims)


def tensor_fact(module: str, call: int, path: str, t: torch.Tensor) -> TensorFact:
    """Autograd flags of one tensor, read outside any dispatch mode's view."""
    grad_fn = t.grad_fn
    return TensorFact(
        module=module,
        call=call,
        path=path,
        shape=shape_of(t),
        dtype=dtype_name(t.dtype),
        requires_grad=t.requires_grad,
        grad_fn=type(grad_fn).__name__ if grad_fn is not None else None,
        is_leaf=t.is_leaf,
        is_inference=t.is_inference(),
        nbytes=t.numel() * t.element_size(),
    )


class ModuleRecorder:
    """Context manager tracking the module call stack and (optionally) every module output."""

    def __init__(self, model: nn.Module, record_tensors: bool = True, record_inputs: bool = True) -> None:
        self.names: dict[int, str] = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(mod), name)
        self.record_tensors = record_tensors
        self.record_inputs = record_inputs
        self.stack: list[tuple[str, int]] = []
        self.calls: dict[str, int] = {}
        self.tensors: list[TensorFact] = []
        self.output_bytes: dict[tuple[str, int], int] = {}
        self.graph_outputs: dict[str, bool] = {}  # module → did any output of any call have a grad_fn
        # (storage key, storage bytes, weak reference) of each call's positional tensor arguments: what
        # torch.utils.checkpoint would keep alive if the call were wrapped in it.  The weak reference
        # tells whether the key still names that storage (a freed storage's address gets reused).
        self.inputs: dict[tuple[str, int], tuple[tuple[int, int, weakref.ref[Any]], ...]] = {}
        self.failed_in: tuple[str, int] | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> ModuleRecorder:
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post),
        ]
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if exc_type is not None and self.stack:
            self.failed_in = self.stack[-1]
        self.stack.clear()

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        key = (name, call)
        self.stack.append(key)
        if self.record_inputs:
            found = []
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    try:
                        storage = arg.untyped_storage()
                    except (RuntimeError, NotImplementedError):
                        continue
                    found.append((storage._cdata, storage.nbytes(), weakref.ref(storage)))
            if found:
                self.inputs[key] = tuple(found)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.names.get(id(module))
        if name is None or not self.stack:
            return
        key = self.stack.pop()
        if key[0] != name:  # a hook of the user's skipped our pre-hook: resynchronise
            while self.stack and self.stack[-1][0] != name:
                self.stack.pop()
            key = self.stack.pop() if self.stack else (name, self.calls.get(name, 1) - 1)
        tensors = flatten_tensors(output)
        self.output_bytes[key] = sum(t.numel() * t.element_size() for _, t in tensors)
        if tensors:  # kept even with --no-tensors: the findings explain cut-off parameters with it
            self.graph_outputs[name] = self.graph_outputs.get(name, False) or any(
                t.grad_fn is not None for _, t in tensors)
        if self.record_tensors:
            self.tensors.extend(tensor_fact(key[0], key[1], path, t) for path, t in tensors)
