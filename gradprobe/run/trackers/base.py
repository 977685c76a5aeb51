"""The one interface every tracker implements, and the one dispatch mode that op-level trackers share.

A run has phases (``forward``, ``backward``).  A :class:`Tracker` names the phases it observes; the run
installs every tracker around each phase it names, in list order (:func:`installed`), and reads what it
saw through its ``facts()`` afterwards.  A tracker never reads another tracker's internals: one that
needs another's view (the saved-tensor tracker needs the current module call) takes it through a
public method, as torch's ``mem_tracker`` uses ``ModTracker``.

Trackers that must see every aten op (live bytes, parameter writes) do not each push a
``TorchDispatchMode``: a second mode costs a Python frame per op (measured +1.0 ms on a 1.6 ms
tiny-GPT forward+backward).  They implement :class:`OpObserver` and share one :class:`OpStream`,
which calls ``after_op`` for every op and ``on_write`` only for the rare ops that write an argument.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

FORWARD = "forward"
BACKWARD = "backward"
Phase = str  # FORWARD | BACKWARD


@runtime_checkable
class Tracker(Protocol):
    """Observes some phases of one run and reports what it saw."""

    phases: tuple[Phase, ...]

    def install(self, phase: Phase) -> contextlib.AbstractContextManager[Any]:
        """A context manager active for the whole ``phase``; it must undo everything it installed."""
        ...

    def facts(self) -> Any:
        """What it observed, as plain values (call after the phases)."""
        ...


WrittenArgs = tuple[tuple[int, str, bool], ...]  # (position, name, keyword-only) of each argument an op writes
# keyed by id(): OpOverload hashes in Python (~0.3 µs an op); torch keeps every overload alive for good
_WRITES: dict[int, WrittenArgs] = {}


def written_args(func: Any) -> WrittenArgs:
    """The arguments ``func`` writes (``Tensor(a!)`` in its schema: in-place ops, ``out=``, ``_foreach_*_``)."""
    found = _WRITES.get(id(func))
    if found is None:
        schema = getattr(func, "_schema", None)
        found = () if schema is None else tuple(
            (i, a.name, a.kwarg_only) for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write)
        _WRITES[id(func)] = found
        _KEEP.append(func)  # an id stays valid only while its object lives
    return found


class FunctionModesAside:
    """Sets the torch-function modes aside for a block and puts them back in order: gradprobe's own reads and
    measurement ops stay out of the graph-cut tracker's ``TorchFunctionMode`` (issue 16), while a tensor
    subclass's own ``__torch_function__`` still answers them.  A plain class: it runs in module hooks, where
    ``contextlib`` costs more."""

    __slots__ = ("_modes",)

    def __enter__(self) -> None:
        depth = torch._C._len_torch_function_stack()
        self._modes = [torch._C._pop_torch_function_stack() for _ in range(depth)] if depth else None

    def __exit__(self, *exc: object) -> None:
        if self._modes:
            for mode in reversed(self._modes):  # popped top first: pushed back bottom first
                torch._C._push_on_torch_function_stack(mode)


_KEEP: list[Any] = []

NamedModules = Sequence[tuple[str, torch.nn.Module]]  # (name, module) pairs of a walk of the model


def first_names(named: NamedModules) -> list[tuple[str, torch.nn.Module]]:
    """``model.named_modules()`` from ``model.named_modules(remove_duplicate=False)``: each module once, under
    its first name, in the same order (a repeated module's subtree holds only modules already seen under its
    first name).  Lets the trackers of a run share one walk of the model (issue 16)."""
    seen: set[int] = set()
    found = []
    for name, mod in named:
        if id(mod) not in seen:
            seen.add(id(mod))
            found.append((name, mod))
    return found
_dispatch_modes = torch._C._len_torch_dispatch_stack


class OpObserver(Protocol):
    """A tracker that sees aten ops through the run's :class:`OpStream`; either callback may be ``None``.

    ``on_write(func, written, args, kwargs)`` runs before each op that writes an argument (``written``:
    :func:`written_args`), ``after_op(out)`` after every op.  Ops an observer issues itself inside these
    callbacks are seen by no tracker of the stream."""

    phases: tuple[Phase, ...]
    on_write: Callable[[Any, WrittenArgs, tuple[Any, ...], dict[str, Any]], None] | None
    after_op: Callable[[Any], None] | None


@contextlib.contextmanager
def installed(trackers: Sequence[Tracker], phase: Phase) -> Iterator[None]:
    """Install every tracker that observes ``phase``, in order; uninstall in reverse, also on error."""
    with contextlib.ExitStack() as stack:
        for tracker in trackers:
            if phase in tracker.phases:
                stack.enter_context(tracker.install(phase))
        yield


class OpStream(TorchDispatchMode):
    """One ``TorchDispatchMode`` calling every observer of the current phase, before and after each op.

    A tracker itself (install it after the trackers whose outputs it must see adjusted, e.g. the meta
    kernel fixes).  Inside a dispatch mode autograd flags are invisible: every tensor looks like
    ``requires_grad=False``; observers take sizes and storages from here, flags from module hooks.
    """

    def __init__(self, observers: Sequence[OpObserver]) -> None:
        super().__init__()
        self.observers = list(observers)
        self.phases: tuple[Phase, ...] = tuple(sorted({p for o in self.observers for p in o.phases}))
        self._on_write: list[Callable[[Any, WrittenArgs, tuple[Any, ...], dict[str, Any]], None]] = []
        self._after: Callable[[Any], None] | None = None
        # optional ``before_op(func, args, kwargs)`` before every op: only the memory event log (issue 14) needs
        # the op itself; an observer without the attribute costs nothing here
        self._before: Callable[[Any, Any, Any], None] | None = None
        self._active = False

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode otherwise wraps __torch_dispatch__ in torch._disable_dynamo, whose first call imports
        # torch._dynamo: measured 1.1 s of CPU in every CLI run. gradprobe never compiles inside this mode.
        return False

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        active = [o for o in self.observers if phase in o.phases]
        self._on_write = [o.on_write for o in active if o.on_write is not None]
        after = [o.after_op for o in active if o.after_op is not None]
        self._after = after[0] if len(after) == 1 else (_fan_out(after) if after else None)
        before = [b for b in (getattr(o, "before_op", None) for o in active) if b is not None]
        self._before = before[0] if len(before) == 1 else (_fan_out_before(before) if before else None)
        self._active = True
        try:
            with self:
                yield
        finally:
            self._active = False

    def facts(self) -> None:
        return None

    def alone(self) -> bool:
        """Whether an op issued now would be seen by this mode only, and by its observers for its outputs
        only (no ``before_op``): then :meth:`show` of its output stands for running it through the mode."""
        return self._active and self._before is None and _dispatch_modes() == 1

    def show(self, out: Any) -> None:
        """Show the output of an op run with dispatch off (see :meth:`alone`) to the current observers."""
        if self._after is not None:
            self._after(out)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # runs for every op of the forward and backward: one dictionary look-up unless the op writes
        if kwargs is None:
            kwargs = {}
        if self._before is not None:
            self._before(func, args, kwargs)
        if self._on_write:
            written = _WRITES.get(id(func))
            if written is None:
                written = written_args(func)
            if written:
                for on_write in self._on_write:
                    on_write(func, written, args, kwargs)
        out = func(*args, **kwargs)
        if self._after is not None:
            self._after(out)
        return out


def _fan_out_before(calls: Sequence[Callable[[Any, Any, Any], None]]) -> Callable[[Any, Any, Any], None]:
    def each(func: Any, args: Any, kwargs: Any) -> None:
        for call in calls:
            call(func, args, kwargs)
    return each


def _fan_out(calls: Sequence[Callable[[Any], None]]) -> Callable[[Any], None]:
    def each(out: Any) -> None:
        for call in calls:
            call(out)
    return each
