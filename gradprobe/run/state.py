"""Modes a run can use, and the one snapshot that puts the user's model back as it was.

A probe must never leave the model changed.  :class:`ModelState` captures, before a run, everything a
run may change: training flags (TorchScript modules through their own setter), which parameters,
buffers and submodules are registered under which names, ``requires_grad`` and ``.grad`` of every
parameter, of every loose leaf (a tensor attribute with ``requires_grad=True`` that is not a
Parameter) and of any extra tensor (inputs), buffer values (BatchNorm statistics), optionally parameter
values, the global grad mode and the RNG.  :meth:`ModelState.restore` puts all of it back, also when
the run raised; :meth:`ModelState.reset_values` is the cheap between-runs reset (only what moved).

Parameter values are not copied by default (that would double a probe's memory); the engine's
:class:`~gradprobe.run.trackers.writes.ParamWriteGuard` copies a parameter on its first write instead.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from gradprobe.errors import UsageError
from gradprobe.facts.run import GRAD_MODES, MODES

_MISSING = object()


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


def inference_state(model: nn.Module) -> list[str]:
    """Names of the model's parameters and buffers that are inference tensors (made under
    ``torch.inference_mode()``): autograd refuses to save them, so a grad forward that uses one fails."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, t in named if t is not None and t.is_inference()]


def refuses_inference_tensors(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is autograd refusing inference tensors."""
    seen: BaseException | None = exc
    while seen is not None:
        if "nference tensor" in str(seen):
            return True
        seen = seen.__cause__
    return False


def version_of(t: torch.Tensor) -> int | None:
    """``t._version``, or None for an inference tensor, which has no version counter (reading it raises): such a
    tensor is taken as moved every time, so its value is always copied back."""
    return None if t.is_inference() else t._version


def restore_tensor(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy values back; inference tensors can only be written inside inference mode."""
    ctx = torch.inference_mode() if dst.is_inference() else torch.no_grad()
    with ctx:
        dst.copy_(src)


def restore_tensors(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """:func:`restore_tensor` of each ``(dst, src)``, in order: the plain tensors in one ``_foreach_copy_``
    (a ResNet-50's 159 BatchNorm buffers: 0.43 → 0.07 ms), the inference tensors and tensor subclasses one by
    one (FSDP2's DTensor parameters have no sharding rule for ``_foreach_copy_``, but ``copy_`` works)."""
    dsts: list[torch.Tensor] = []
    srcs: list[torch.Tensor] = []
    for dst, src in pairs:
        if dst.is_inference() or is_traceable_wrapper_subclass(dst):
            restore_tensor(dst, src)
        else:
            dsts.append(dst)
            srcs.append(src)
    if dsts:
        with torch.no_grad():
            torch._foreach_copy_(dsts, srcs)


def table_get(table: Any, key: str) -> Any:
    """``table.get(key)`` that also works on TorchScript's ``OrderedDictWrapper`` (it has no ``get``)."""
    try:
        return table[key]
    except KeyError:
        return None


_SCRIPTED: dict[type, bool] = {}  # by class: isinstance against ScriptModule's metaclass costs ~0.6 µs a module
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # attributes every module has: never a user's tensor


def is_scripted(mod: nn.Module) -> bool:
    """A TorchScript module: its compiled code reads ``training`` from the C++ object, not from Python."""
    kind = type(mod)
    found = _SCRIPTED.get(kind)
    if found is None:
        found = _SCRIPTED[kind] = issubclass(kind, torch.jit.ScriptModule)
    return found


def seed_generators(seed: int, device: torch.device) -> None:
    """Seed the generators a run on ``device`` draws from.  ``torch.manual_seed`` also seeds every lazy
    accelerator backend (formatting a stack trace each, ~0.2-0.4 ms): a CPU or meta run needs only the CPU
    generator."""
    if device.type in ("cpu", "meta"):
        torch.random.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def set_training(mod: nn.Module, flag: bool) -> None:
    """Set one module's own ``training`` flag (not its children's) where its code will read it.

    Plain modules get the attribute directly (cheap, skips ``nn.Module.__setattr__``).  A scripted
    module must go through its own setter, which writes the C++ attribute the compiled forward reads;
    a plain instance attribute would shadow it and leave the scripted code in the other mode.
    """
    if is_scripted(mod):
        mod.__dict__.pop("training", None)  # a shadow left by an object.__setattr__ would hide the real flag
        mod.training = flag
    else:
        object.__setattr__(mod, "training", flag)


def training_flags(model: nn.Module, mode: str) -> list[tuple[nn.Module, bool]]:
    """The flag of every module after ``model.train()`` (mode "train") or ``model.eval()``.

    Asks the model itself, since ``train()`` may be overridden (a backbone kept in eval); the caller
    restores the flags (a :class:`ModelState` does).  Apply the result with :func:`apply_training`.
    """
    model.train(mode == "train")
    return [(m, m.training) for m in model.modules()]


def apply_training(flags: Iterable[tuple[nn.Module, bool]]) -> None:
    """Set the flags :func:`training_flags` returned, module by module, TorchScript included."""
    for mod, flag in flags:
        set_training(mod, flag)


def loose_leaves(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """``(qualified name, module, attribute, tensor)`` of every tensor attribute that is a leaf with
    ``requires_grad=True`` but not a Parameter: backward fills its ``.grad``, yet only an optimizer
    handed the tensor by hand trains it.  Attributes of scripted modules are not visible and not listed.
    """
    found: list[tuple[str, nn.Module, str, torch.Tensor]] = []
    for mod_name, mod in model.named_modules():
        if not is_scripted(mod):
            _leaves_of(mod_name, mod, found)
    return found


def _leaves_of(mod_name: str, mod: nn.Module, found: list[tuple[str, nn.Module, str, torch.Tensor]]) -> None:
    attrs = mod.__dict__
    hits = [a for a in attrs.keys() - _MODULE_INTERNALS if isinstance(attrs[a], torch.Tensor)
            and attrs[a].requires_grad and _is_leaf(attrs[a]) and not isinstance(attrs[a], nn.Parameter)]
    if len(hits) > 1:  # a set difference has no order: the module's own attribute order
        order = {a: i for i, a in enumerate(attrs)}
        hits.sort(key=order.__getitem__)
    found.extend((f"{mod_name}.{a}" if mod_name else a, mod, a, attrs[a]) for a in hits)


def _is_leaf(t: torch.Tensor) -> bool:
    """``t.is_leaf``; a stale view whose base was modified in place (FSDP1 keeps such views of its flat parameter
    as module attributes between iterations) raises on access: it is not a leaf anyone trains."""
    try:
        return bool(t.is_leaf)
    except RuntimeError:
        return False


class _Slots(NamedTuple):
    """One module's training flag and registration tables, as found (a tuple: one per module per run)."""

    module: nn.Module
    training: bool  # as Python reads it
    scripted: bool | None  # a scripted module's own flag, the one its compiled code reads; None: not scripted
    shadowed: bool  # a scripted module whose instance dict already held "training" (hiding the real flag)
    params: dict[str, Any]
    buffers: dict[str, Any]
    modules: dict[str, Any]


@dataclass
class ModelState:
    """Everything a run may change on a model and in the process, captured by reference or copy."""

    model: nn.Module
    slots: list[_Slots] = field(default_factory=list)
    requires_grad: list[tuple[torch.Tensor, bool]] = field(default_factory=list)
    grads: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    param_values: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    # (module, name, buffer, value copy or None on meta); versions (by id) say which moved since
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    versions: dict[int, int] = field(default_factory=dict)
    leaves: list[tuple[str, nn.Module, str, torch.Tensor]] = field(default_factory=list)
    grad_enabled: bool = True
    rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] | None = None
    # FSDP2 (fully_shard) modules: resharded before the registrations are put back (see _restore_registrations)
    fsdp2: list[nn.Module] = field(default_factory=list)

    @classmethod
    def capture(cls, model: nn.Module, *, param_values: bool = False, rng: bool = True,
                extra: Iterable[torch.Tensor] = ()) -> ModelState:
        """Snapshot ``model``; ``param_values`` clones parameters too (needed before an optimizer step).

        ``extra`` tensors (e.g. inputs that require grad) get their ``requires_grad`` and ``.grad`` restored.
        """
        state = cls(model=model, grad_enabled=torch.is_grad_enabled())
        seen: set[int] = set()
        slots, leaves = state.slots, state.leaves
        fsdp2 = fsdp2_class()
        for mod_name, mod in model.named_modules():
            params, buffers = mod._parameters, mod._buffers
            if fsdp2 is not None and isinstance(mod, fsdp2):
                state.fsdp2.append(mod)
            if is_scripted(mod):
                flag = bool(mod._c.getattr("training"))
                slots.append(_Slots(mod, mod.training, flag, "training" in mod.__dict__, dict(params.items()),
                                    dict(buffers.items()), dict(mod._modules.items())))
            else:
                params, buffers = params.copy(), buffers.copy()
                slots.append(_Slots(mod, mod.training, None, False, params, buffers, mod._modules.copy()))
                _leaves_of(mod_name, mod, leaves)
            for param in params.values():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                state._keep_grad(param)
                state.versions[id(param)] = version_of(param)
                if param_values and param.device.type != "meta":
                    state.param_values.append((param, param.detach().clone()))
            for bname, buf in buffers.items():
                copy = buf.detach().clone() if buf is not None and buf.device.type != "meta" else None
                state.buffers.append((mod, bname, buf, copy))
                if buf is not None:
                    state.versions[id(buf)] = version_of(buf)
        for tensor in [t for *_, t in state.leaves] + list(extra):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                state._keep_grad(tensor)
        if rng:
            state.rng = torch.random.get_rng_state()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                state.cuda_rng = torch.cuda.get_rng_state_all()
        return state

    def _keep_grad(self, tensor: torch.Tensor) -> None:
        self.requires_grad.append((tensor, tensor.requires_grad))
        self.grads.append((tensor, tensor.grad))

    def clear_grads(self) -> None:
        """Detach every captured ``.grad`` (parameters, loose leaves, extra tensors) so that a backward
        accumulates into fresh tensors, never into the user's (they come back with :meth:`restore`)."""
        for tensor, _ in self.grads:
            tensor.grad = None

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        torch.set_grad_enabled(self.grad_enabled)
        for slot in self.slots:
            if slot.scripted is None:
                if slot.module.training is not slot.training:
                    if type(slot.module).__setattr__ is _MODULE_SETATTR:  # what it would do, without its checks
                        object.__setattr__(slot.module, "training", slot.training)
                    else:
                        slot.module.training = slot.training
                continue
            set_training(slot.module, slot.scripted)  # the flag the compiled code reads
            if slot.shadowed:  # found so: put the instance attribute back as it was
                object.__setattr__(slot.module, "training", slot.training)
        self._restore_registrations()
        for tensor, flag in self.requires_grad:
            if tensor.requires_grad != flag:
                tensor.requires_grad_(flag)
        for tensor, grad in self.grads:
            if tensor.grad is not grad:
                tensor.grad = grad
        restore_tensors([*self.param_values, *self._buffer_copies()])
        for _, mod, attr, tensor in self.leaves:
            if mod.__dict__.get(attr, _MISSING) is not tensor:
                mod.__dict__[attr] = tensor
        self._restore_rng()

    def reset_values(self) -> None:
        """Back to the captured registrations, buffer values, parameter values and RNG, between runs.

        Buffers are always copied back: BatchNorm's kernel updates its running statistics without
        bumping their version counter (measured, torch 2.13 CPU), so no cheap test tells they moved.
        Parameters (when captured with ``param_values``) are copied only when their version moved, so a
        model whose forward writes none pays nothing for them; writes through ``.data`` are not seen.
        """
        self._restore_registrations()
        for param, value in self.param_values:
            version = version_of(param)
            if version is None or version != self.versions[id(param)]:
                restore_tensor(param, value)
                self.versions[id(param)] = version_of(param)
        restore_tensors(self._buffer_copies())
        self._restore_rng()

    def _buffer_copies(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(buffer, its captured copy)`` of every buffer with values (not on meta)."""
        return [(buf, copy) for _, _, buf, copy in self.buffers if buf is not None and copy is not None]

    def _restore_registrations(self) -> None:
        # A forward without backward leaves FSDP2's root unit unsharded (its parameters registered unsharded until
        # the backward reshards them).  Putting the sharded ones back behind FSDP2's back made its next forward
        # skip the all-gather and mix DTensor and Tensor: reshard first (local, no collective), which registers
        # the sharded parameters again itself.
        for mod in self.fsdp2:
            mod.reshard()  # type: ignore[operator]
        for mod, _, _, _, params, buffers, modules in self.slots:
            for table, saved in ((mod._parameters, params), (mod._buffers, buffers), (mod._modules, modules)):
                if saved or table:
                    _restore_table(table, saved)

    def _restore_rng(self) -> None:
        if self.rng is not None:
            torch.random.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def fsdp2_class() -> type | None:
    """FSDP2's ``FSDPModule``, once ``torch.distributed.fsdp`` is imported (no FSDP2 module exists before)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return getattr(fsdp, "FSDPModule", None) if fsdp is not None else None


def fsdp2_modules(model: nn.Module) -> list[nn.Module]:
    """``model``'s FSDP2 (fully_shard) modules: to reshard before putting registrations back (see
    :meth:`ModelState._restore_registrations`)."""
    cls = fsdp2_class()
    return [m for m in model.modules() if isinstance(m, cls)] if cls is not None else []


_MODULE_SETATTR = nn.Module.__setattr__  # for a bool "training" it checks parameter, module and buffer tables first


def _restore_table(table: Any, saved: dict[str, Any]) -> None:
    """Make a registration table (``_parameters``, ``_buffers``, ``_modules``) hold exactly ``saved``."""
    if isinstance(table, dict):
        if table.keys() == saved.keys() and all(map(operator.is_, table.values(), saved.values())):
            return  # the common case, checked without a Python frame per entry
        for key in [k for k in table if k not in saved]:
            del table[key]
    for key, value in saved.items():  # TorchScript tables: no get, no deletion (scripted code cannot add)
        if table_get(table, key) is not value:
            table[key] = value


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
