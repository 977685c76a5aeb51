"""Which modules make train and eval outputs differ: flip one module's own ``training`` flag at a time.

Flags come from ``model.train()``/``model.eval()`` themselves (a model may keep parts in eval).  Modules
whose code reads ``training`` are flipped first (:func:`reads_training`); then the model runs in eval with
only the modules found set to train, which must reproduce the train output exactly.  If it does not,
every other module is flipped too.  A step that cannot be done is recorded as a :class:`ReplayFailure`:
gradprobe's limitation, never a diagnosis of the model.
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from gradprobe.facts.compare import Attribution, ModuleEffect, ReplayFailure
from gradprobe.run.compare.inputs import copy_call, model_memo
from gradprobe.run.compare.kernels import only_in, op_names
from gradprobe.run.compare.outputs import OutputDiff, Snapshot, compare_outputs, snapshot
from gradprobe.run.compare.session import Session
from gradprobe.run.compare.start import set_training
from gradprobe.run.state import grad_context
from gradprobe.run.trackers.base import FunctionModesAside

Call = tuple[tuple[Any, ...], dict[str, Any]]  # a module's positional and keyword inputs


# ------------------------------------------------------------------------------ which modules read it


def _code_mentions(code: types.CodeType, name: str) -> bool:
    if name in code.co_names or name in code.co_consts:
        return True
    return any(isinstance(c, types.CodeType) and _code_mentions(c, name) for c in code.co_consts)


_READS_TRAINING: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def reads_training(cls: type) -> bool:
    """Whether any method the class (or a base below ``nn.Module``) defines reads ``training``.

    A cheap static filter for which modules to flip first; a module it misses is still found, because
    the flipped set is checked against the real train output and everything else is flipped if it falls
    short.  Compiled (TorchScript) modules cannot be read and count as reading it.
    """
    known = _READS_TRAINING.get(cls)
    if known is None:
        known = _READS_TRAINING[cls] = _scan_for_training(cls)
    return known


def _scan_for_training(cls: type) -> bool:
    if issubclass(cls, torch.jit.ScriptModule):
        return True
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr in vars(klass).values():
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            try:
                code = getattr(pyinspect.unwrap(attr), "__code__", None) if callable(attr) else None
            except ValueError:  # a __wrapped__ cycle
                continue
            if isinstance(code, types.CodeType) and _code_mentions(code, "training"):
                return True
    return False


# ------------------------------------------------------------------------------------ one module alone


def _capture_inputs(s: Session, modules: Sequence[tuple[str, nn.Module]], keep: dict[int, Any]) -> dict[str, Call]:
    """What each module received at its first call in one eval-mode, no_grad forward: copies, aliasing kept."""
    captured: dict[str, Call] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in captured:
                captured[name] = copy_call((args, kwargs), keep)[0]
        return hook

    try:
        for name, mod in modules:
            handles.append(mod.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        s.forward("eval", "no_grad")
    finally:
        for h in handles:
            h.remove()
    return captured


class EarlyInputs:
    """The first flip batch's inputs (:func:`_capture_inputs`), recorded during the eval + no_grad tracked run
    instead of one more forward, in case the attribution needs them (issue 16).

    That run starts from the same state and computes the same values; the copies are made with gradprobe's
    dispatch and function modes set aside, so no tracker sees them (its figures stay as they were).  Only on
    the CPU (a CUDA run's memory facts read the allocator) and without PyTorch's attention fast paths (the
    attribution may switch them off).  When a copy fails, nothing is kept: the attribution captures as before.
    """

    def __init__(self, s: Session) -> None:
        # the attribution's own look-ups, taken once here and reused by it (the model it runs on is the same:
        # every run puts the registrations back; issue 16)
        self.flippable = _flippable(s)
        self.batch = self.flippable[0]
        self.keep = model_memo(s.model)
        self.calls: dict[str, Call] = {}
        self.done = False

    @classmethod
    def of(cls, s: Session) -> EarlyInputs | None:
        if s.device.type != "cpu" or any(isinstance(m, _FAST_PATHS) for m in s.model.modules()):
            return None
        early = cls(s)
        return early if early.batch else None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        failed: list[bool] = []
        handles = []
        try:
            for name, mod in self.batch:
                handles.append(mod.register_forward_pre_hook(self._hook(name, failed), with_kwargs=True))
        except Exception:  # a scripted module takes no hook: the attribution's own capture meets it again
            failed.append(True)
        try:
            yield
        except BaseException:
            failed.append(True)  # the run failed: what it recorded may be partial
            raise
        finally:
            for h in handles:
                h.remove()
            self.done = not failed
            if failed:
                self.calls.clear()

    def _hook(self, name: str, failed: list[bool]) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in self.calls or failed:
                return
            try:
                with _disable_current_modes(), FunctionModesAside():
                    self.calls[name] = copy_call((args, kwargs), self.keep)[0]
            except Exception:  # the attribution's own capture meets it again and records it
                failed.append(True)
        return hook


_FAST_PATHS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


def _flip_one(s: Session, mod: nn.Module, call: Call, flags: tuple[bool, bool], keep: dict[int, Any]) -> OutputDiff:
    """The module's own output with its flag at the eval value and at the train value, same inputs and RNG."""
    eval_flag, train_flag = flags
    return compare_outputs(_replay(s, mod, call, eval_flag, keep), _replay(s, mod, call, train_flag, keep))


def _replay(s: Session, mod: nn.Module, call: Call, flag: bool, keep: dict[int, Any]) -> Snapshot:
    """One call of ``mod`` alone with its own flag set to ``flag``, from the starting state (the caller's reset
    before the first replay, each replay's own after it), under no_grad.

    Each replay gets a fresh copy of what the module received, so a module that changes its inputs or a
    cache it was handed sees them as they were at the recorded call.
    """
    before = mod.training
    try:
        args, kwargs = copy_call(call, keep)[0]
        set_training(mod, flag)
        with torch.no_grad():
            return snapshot(mod(*args, **kwargs))
    finally:
        set_training(mod, before)
        s.reset(buffers=True)  # a train-mode replay moved BatchNorm statistics without a version bump


def _effect(s: Session, name: str, mod: nn.Module, call: Call, flags: tuple[bool, bool], diff: OutputDiff,
            keep: dict[int, Any]) -> ModuleEffect:
    """A module whose flag changes its output; for a change within rounding, the ops behind it."""
    only_eval: tuple[str, ...] = ()
    only_train: tuple[str, ...] = ()
    if diff.within_tolerance:
        only_eval, only_train = only_in(op_names(lambda: _replay(s, mod, call, flags[0], keep)),
                                        op_names(lambda: _replay(s, mod, call, flags[1], keep)))
    return ModuleEffect(name, type(mod).__name__, diff.max_abs_diff, diff.ints_equal, diff.within_tolerance,
                        only_eval, only_train)


def _failure(step: str, module: str | None, exc: Exception) -> ReplayFailure:
    lines = str(exc).strip().splitlines()
    return ReplayFailure(step, module, type(exc).__name__, lines[0] if lines else "")


# ----------------------------------------------------------------------------------------- the search


@dataclass
class _Search:
    """What the flips found so far."""

    train_flags: dict[int, bool]
    eval_flags: dict[int, bool]
    keep: dict[int, Any]  # the model's own modules, parameters and buffers: never copied with an input
    effects: list[ModuleEffect] = field(default_factory=list)
    tested: list[str] = field(default_factory=list)
    failures: list[ReplayFailure] = field(default_factory=list)
    explained: bool | None = None

    def result(self, skipped: str | None = None) -> Attribution:
        return Attribution(tuple(self.effects), tuple(self.tested), self.explained, skipped, tuple(self.failures))


def attribute(s: Session, train_out: Snapshot, train_grad_mode: str, train_deterministic: bool, *,
              fast_path_off: bool = False) -> Attribution:
    """Name the modules whose output changes when only their own ``training`` flag flips.

    ``fast_path_off``: the eval reference took ``nn.TransformerEncoder``'s nested-tensor path, whose layers
    see nested tensors only and write zeros at padded positions; flips and the check then run with
    PyTorch's transformer fast paths off, so each module sees ordinary tensors and eval runs the same
    kernels as train.
    """
    with _fast_path(enabled=not fast_path_off):
        found = _attribute(s, train_out, train_grad_mode, train_deterministic)
    return replace(found, fast_path_off=fast_path_off)


@contextlib.contextmanager
def _fast_path(enabled: bool) -> Iterator[None]:
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled and before)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _attribute(s: Session, train_out: Snapshot, train_grad_mode: str, train_deterministic: bool) -> Attribution:
    known = s.early_inputs  # its flippable modules and memo are this model's, also when its recording failed
    search = _Search({id(m): f for m, f in s.start.train_flags}, {id(m): f for m, f in s.start.eval_flags},
                     known.keep if known is not None else model_memo(s.model))
    first, rest = known.flippable if known is not None else _flippable(s)
    if not first and not rest:
        return search.result(skipped="same-flags")
    early = s.early_inputs if s.early_inputs is not None and s.early_inputs.done else None
    for batch in (first, rest):
        if not batch:
            continue
        if not _flip_batch(s, batch, search, early.calls if early is not None and batch is first else None):
            break
        if not train_deterministic:
            break  # no exact check possible: the train output itself changes from run to run
        try:
            search.explained = _reproduces(s, search.effects, search.train_flags, train_out, train_grad_mode)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            search.failures.append(_failure("check", None, exc))
            break
        if search.explained:
            break
    return search.result(skipped=None if train_deterministic else "nondeterministic")


def _flippable(s: Session) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The modules whose flag differs between train() and eval(): those whose code reads ``training``, the rest."""
    train, evals = dict((id(m), f) for m, f in s.start.train_flags), dict((id(m), f) for m, f in s.start.eval_flags)
    names = {id(m): n for n, m in reversed(list(s.model.named_modules(remove_duplicate=False)))}
    flippable = [(names[id(m)], m) for m in s.model.modules() if train[id(m)] != evals[id(m)]]
    return ([(n, m) for n, m in flippable if reads_training(type(m))],
            [(n, m) for n, m in flippable if not reads_training(type(m))])


def _flip_batch(s: Session, batch: Sequence[tuple[str, nn.Module]], search: _Search,
                calls: dict[str, Call] | None = None) -> bool:
    """Flip every module of ``batch`` alone (``calls``: their inputs, already recorded); False when their inputs
    could not even be recorded."""
    try:
        if calls is None:
            calls = _capture_inputs(s, batch, search.keep)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        search.failures.append(_failure("capture", None, exc))
        return False
    s.reset(buffers=True)  # the starting state for the first replay; every replay resets after itself
    for name, mod in batch:
        if name not in calls:
            continue  # not called in forward: cannot matter
        search.tested.append(name)
        flags = (search.eval_flags[id(mod)], search.train_flags[id(mod)])
        try:
            diff = _flip_one(s, mod, calls[name], flags, search.keep)
            if diff.differs:
                search.effects.append(_effect(s, name, mod, calls[name], flags, diff, search.keep))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            search.failures.append(_failure("replay", name, exc))
    return True


def _reproduces(s: Session, effects: Iterable[ModuleEffect], train_flags: dict[int, bool], train_out: Snapshot,
                grad_mode: str) -> bool:
    """Eval mode with only ``effects`` switched to their train flags gives exactly the train output."""
    by_name = dict(s.model.named_modules())
    s.reset()
    s.start.set_mode("eval")
    for e in effects:
        mod = by_name[e.name]
        set_training(mod, train_flags[id(mod)])
    with grad_context(grad_mode):
        out = snapshot(s.call(), copy=False)  # compared at once
    diff = compare_outputs(out, train_out)
    return not diff.differs
