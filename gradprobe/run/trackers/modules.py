"""Record every module call: which module is running, and the autograd flags of its outputs.

One pair of global forward hooks (as ``torch.utils.module_tracker`` does)
sees every call of every submodule, including repeated calls, without
touching the user's modules; the hooks are always removed on exit.

Other trackers and the graph walk learn which call was running through public methods:
:meth:`ModuleRecorder.call_stack` (now) and :meth:`CallTimeline.call_of` (when an autograd node
was created, from autograd's per-thread node sequence number).
"""

from __future__ import annotations

import bisect
import contextlib
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from gradprobe.facts.run import TensorFact
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.trackers.base import FORWARD, FunctionModesAside, NamedModules, Phase

Call = tuple[str, int]  # (qualified module name, 0-based call number)
CallInput = tuple[int, int, Any]  # storage key, storage bytes, weak reference to the storage
# autograd numbers the nodes it creates per thread; a node made while a call ran has a number in its range
_sequence_nr = getattr(torch._C._autograd, "_get_sequence_nr", None)


# The hooks read tensor metadata (shape, numel, grad_fn, storage): under the cut tracker's TorchFunctionMode each
# read is a Python ``__torch_function__`` call, ~10 per output tensor: 2,350 of ResNet-50's 2,630 calls a forward
# (issue 16).  The hooks run with the torch-function modes set aside (FunctionModesAside).


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


@dataclass(frozen=True)
class CallTimeline:
    """Which module call was innermost when each autograd node was made, by node sequence number.

    ``seqs[i]`` is the sequence number the next node would get when ``calls[i]`` became the innermost
    call (``None``: no call of the model was running).  Nodes made outside the forward, AccumulateGrad
    nodes (numbered apart) and runs on torch builds without the counter map to ``None``.
    """

    seqs: tuple[int, ...] = ()
    calls: tuple[Call | None, ...] = ()

    def call_of(self, seq: int) -> Call | None:
        i = bisect.bisect_right(self.seqs, seq) - 1
        return self.calls[i] if i >= 0 else None


@dataclass(frozen=True)
class ModuleCalls:
    """What the recorder saw: calls per module, output tensors and bytes, where a failing forward was."""

    names: Mapping[int, str]  # id(module) -> qualified name
    calls: Mapping[str, int]
    tensors: tuple[TensorFact, ...]
    output_bytes: Mapping[Call, int]
    graph_outputs: Mapping[str, bool]  # module -> did any output of any call have a grad_fn
    failed_in: Call | None
    timeline: CallTimeline


class ModuleRecorder:
    """Tracker for the forward: the module call stack and (optionally) every module output."""

    phases = (FORWARD,)

    def __init__(self, named: NamedModules, record_tensors: bool = True, record_inputs: bool = True,
                 record_timeline: bool = True) -> None:
        """``named``: ``model.named_modules(remove_duplicate=False)``, walked once by the caller;
        ``record_timeline``: the call timeline and each call's output bytes (off: both stay empty; the call
        stack, call counts, graph outputs and the failing call are kept)."""
        self.names: dict[int, str] = {}
        for name, mod in named:
            self.names.setdefault(id(mod), name)
        self.record_tensors = record_tensors
        self.record_inputs = record_inputs
        self.record_timeline = record_timeline
        self.stack: list[Call] = []
        self.calls: dict[str, int] = {}
        self.tensors: list[TensorFact] = []
        self.output_bytes: dict[Call, int] = {}
        self.graph_outputs: dict[str, bool] = {}
        # (storage key, storage bytes, weak reference) of each call's positional tensor arguments: what
        # torch.utils.checkpoint would keep alive if the call were wrapped in it.  The weak reference
        # tells whether the key still names that storage (a freed storage's address gets reused).
        self.inputs: dict[Call, tuple[CallInput, ...]] = {}
        self.failed_in: Call | None = None
        self._seqs: list[int] = []
        self._seq_calls: list[Call | None] = []
        self._handles: list[Any] = []

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        with self:
            yield

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

    def call_stack(self) -> Sequence[Call]:
        """The calls running now, outermost first: a live, read-only view (copy it to keep it)."""
        return self.stack

    def call_inputs(self) -> Mapping[Call, tuple[CallInput, ...]]:
        """Each call's positional tensor arguments as (storage key, bytes, weak reference to the storage)."""
        return self.inputs

    def timeline(self) -> CallTimeline:
        """Which call was innermost when each autograd node was made (see :class:`CallTimeline`)."""
        return CallTimeline(tuple(self._seqs), tuple(self._seq_calls))

    def facts(self) -> ModuleCalls:
        return ModuleCalls(self.names, self.calls, tuple(self.tensors), self.output_bytes, self.graph_outputs,
                           self.failed_in, self.timeline())

    def _mark(self) -> None:
        if _sequence_nr is not None:
            self._seqs.append(_sequence_nr())
            self._seq_calls.append(self.stack[-1] if self.stack else None)

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        with FunctionModesAside():
            self._enter(name, args)

    def _enter(self, name: str, args: Any) -> None:
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        key = (name, call)
        self.stack.append(key)
        if self.record_timeline:
            self._mark()
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
        with FunctionModesAside():
            self._leave(name, output)

    def _leave(self, name: str, output: Any) -> None:
        key = self.stack.pop()
        if key[0] != name:  # a hook of the user's skipped our pre-hook: resynchronise
            while self.stack and self.stack[-1][0] != name:
                self.stack.pop()
            key = self.stack.pop() if self.stack else (name, self.calls.get(name, 1) - 1)
        # one tensor (most calls): flatten_tensors' answer without its walk
        tensors = [("output", output)] if isinstance(output, torch.Tensor) else flatten_tensors(output)
        graph = False
        if self.record_timeline:
            self._mark()
            nbytes = 0
            for _, t in tensors:
                nbytes += t.numel() * t.element_size()
                graph = graph or t.grad_fn is not None
            self.output_bytes[key] = nbytes
        else:
            graph = any(t.grad_fn is not None for _, t in tensors)
        if tensors:  # kept even with --no-tensors: the findings explain cut-off parameters with it
            self.graph_outputs[name] = self.graph_outputs.get(name, False) or graph
        if self.record_tensors:
            self.tensors.extend(tensor_fact(key[0], key[1], path, t) for path, t in tensors)
