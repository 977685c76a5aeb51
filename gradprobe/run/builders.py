"""Fact builders: from what the trackers and the model show after a run to torch-free facts.

Each builder reads one tracker's ``facts()`` (or the model itself) and returns frozen dataclasses of
:mod:`gradprobe.facts.run`; none runs the model or installs anything.  They run outside every tracker,
after the backward and before the model's state is restored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from gradprobe.facts.run import (
    BufferFact,
    LeafFact,
    MemoryFact,
    ModuleFact,
    ParamChange,
    ParamFact,
)
from gradprobe.run.state import ModelState, table_get
from gradprobe.run.trackers.base import BACKWARD, FORWARD, NamedModules, Phase, first_names
from gradprobe.run.trackers.grads import grad_states, stored_bytes
from gradprobe.run.trackers.memory import PhasePeaks, storage_key
from gradprobe.run.trackers.modules import Call, ModuleCalls, dtype_name, shape_of
from gradprobe.run.trackers.saved import SavedFacts, module_memory
from gradprobe.run.values import tensor_changed

_TRAINING_DEPENDENT: tuple[type, ...] = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every qualified parameter name (tied parameters have several) → the Parameter, in model order."""
    return dict(model.named_parameters(remove_duplicate=False))


def param_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(param)`` → every qualified name it has (tied parameters have several), in model order."""
    return names_by_id(model.named_parameters(remove_duplicate=False))


def names_by_id(named: Iterable[tuple[str, nn.Parameter]] | Mapping[str, nn.Parameter]) -> dict[int, list[str]]:
    """``id(param)`` → its names, from ``(name, param)`` pairs or a name → param mapping."""
    names: dict[int, list[str]] = {}
    for name, param in (named.items() if isinstance(named, Mapping) else named):
        known = names.setdefault(id(param), [])
        if name not in known:  # an overridden named_parameters may yield the same (name, param) twice
            known.append(name)
    return names


def _owners_and_flags(named: NamedModules) -> tuple[dict[int, str], dict[str, bool]]:
    """``id(param)`` → the first module owning it directly, and each module's training flag, in one pass."""
    owners: dict[int, str] = {}
    training: dict[str, bool] = {}
    for mod_name, mod in named:
        training[mod_name] = mod.training
        for param in mod._parameters.values():
            if param is not None:
                owners.setdefault(id(param), mod_name)
    return owners, training


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def param_facts(model: nn.Module, named: Mapping[str, nn.Parameter], names: Mapping[int, list[str]],
                did_backward: bool, modules: NamedModules,
                now: Mapping[str, nn.Parameter] | None = None) -> tuple[tuple[ParamFact, ...], int]:
    """One fact per distinct parameter as the model holds them now (``named``: :func:`named_params`), and
    the bytes of their gradients (``modules``: ``model.named_modules(remove_duplicate=False)``).

    ``now``: the parameters registered after the backward.  Where another tensor is registered under a
    parameter's name by then and only that one holds a gradient, the gradient is read from it: FSDP2's root
    unit keeps its unsharded parameters registered from forward to backward, then registers the sharded ones
    again and gives them the (reduce-scattered) gradient, leaving the unsharded ones without any."""
    params = {id(p): p for p in named.values()}
    owner_of, training = _owners_and_flags(modules)
    holders = [_grad_holder(p, names.get(pid), now) for pid, p in params.items()]
    states = iter(grad_states(holders) if did_backward else ())
    facts = []
    grad_bytes = 0
    for (pid, param), holder in zip(params.items(), holders, strict=True):
        grad, norm = next(states) if did_backward else (None, None)
        if holder.grad is not None:
            grad_bytes += stored_bytes(holder.grad)  # a sparse gradient: its indices and values only
        owner = owner_of.get(pid, "")
        all_names = names.get(pid) or ["?"]
        facts.append(ParamFact(
            name=all_names[0], aliases=tuple(all_names[1:]), shape=tuple(param.shape),
            dtype=dtype_name(param.dtype), requires_grad=param.requires_grad, grad=grad, grad_norm=norm,
            module=owner, module_training=training.get(owner, model.training), numel=param.numel(),
            nbytes=_nbytes(param),
        ))
    return tuple(facts), grad_bytes


def _grad_holder(param: nn.Parameter, names: list[str] | None,
                 now: Mapping[str, nn.Parameter] | None) -> nn.Parameter:
    """The tensor holding ``param``'s gradient after the backward: itself, or the one registered in its place since
    (see :func:`param_facts`) when only that one has a gradient."""
    if now is None or param.grad is not None:
        return param
    for name in names or ():
        current = now.get(name)
        if current is not None and current is not param and current.grad is not None:
            return current
    return param


def _buffer_changed(current: torch.Tensor, before: torch.Tensor | None, version: int | None) -> bool | None:
    if before is None:  # meta: values unknown, an in-place update still bumps the version counter
        return None if version is None else current._version != version
    return tensor_changed(before, current)


def buffer_facts(state: ModelState, module_names: Mapping[int, str],
                 written_on_meta: frozenset[int] = frozenset()) -> tuple[BufferFact, ...]:
    """Every registered buffer and whether the run changed it (values, or a reassignment)."""
    facts = []
    known = _unchanged_in_batch(state)
    for mod, bname, buf, before in state.buffers:
        mod_name = module_names.get(id(mod), "")
        current = table_get(mod._buffers, bname)
        full = f"{mod_name}.{bname}" if mod_name else bname
        if buf is None and current is None:
            continue  # a None slot (BatchNorm without running stats) is no buffer: state_dict has no entry
        changed: bool | None
        if buf is None:
            changed = True  # the forward created it
        elif current is not buf:
            # reassigned (not in-place): changed only if the values differ; on meta values are unknown
            changed = True if before is None or current is None else _buffer_changed(current, before, None)
        else:
            changed = known.get(id(buf))
            if changed is None:
                changed = _buffer_changed(current, before, state.versions.get(id(buf)))
            if changed is False and storage_key(current) in written_on_meta:
                changed = True  # written on meta by a kernel that does not bump the version (BatchNorm stats)
        shape = tuple(current.shape) if current is not None else ()
        facts.append(BufferFact(full, shape, dtype_name(current.dtype) if current is not None else "none",
                                changed, mod_name))
    return tuple(facts)


_BATCHED = (torch.float32, torch.float64)


def _unchanged_in_batch(state: ModelState) -> dict[int, bool]:
    """``id(buffer)`` → whether its values changed, for the float32/float64 dense buffers still registered, from
    one ``max |after - before|`` per device and dtype (a ResNet-50's 106 BatchNorm statistics: ~1.5 ms less than
    comparing each).  0 means equal (as ``torch.equal``: -0.0 equals 0.0), a positive figure that some value
    differs while neither side holds a NaN: :func:`tensor_changed`'s answer either way.  A NaN figure (a NaN on
    either side, or inf - inf) is left out: :func:`tensor_changed` decides it."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for mod, bname, buf, before in state.buffers:
        if buf is None or before is None or buf.dtype not in _BATCHED or buf.layout != torch.strided \
                or buf.is_nested or table_get(mod._buffers, bname) is not buf:
            continue
        if before.shape != buf.shape or before.dtype != buf.dtype or before.device != buf.device \
                or before.layout != torch.strided or before.is_nested:
            continue
        groups.setdefault((buf.device, buf.dtype), []).append((id(buf), buf, before))
    found: dict[int, bool] = {}
    for group in groups.values():
        with torch.no_grad():
            diffs = torch._foreach_sub([a for _, a, _ in group], [b for _, _, b in group])
            largest = torch.stack(torch._foreach_norm(diffs, float("inf"))).tolist()
        for (key, _, _), value in zip(group, largest, strict=True):
            if value == value:  # not NaN
                found[key] = value != 0
    return found


def _is_training_dependent(mod: nn.Module) -> bool:
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return bool(mod.track_running_stats)
    if isinstance(mod, nn.RNNBase):
        return mod.dropout > 0
    return isinstance(mod, _TRAINING_DEPENDENT)


def module_facts(names: Mapping[int, list[str]], calls: ModuleCalls,
                 modules: NamedModules) -> tuple[ModuleFact, ...]:
    """Every module: type, training flag, how often it ran, its own parameters, its outputs' graph
    (``modules``: ``model.named_modules(remove_duplicate=False)``)."""
    facts = []
    for mod_name, mod in first_names(modules):
        attr = mod.__dict__.get("requires_grad")
        facts.append(ModuleFact(
            name=mod_name, type=type(mod).__name__, training=mod.training, calls=calls.calls.get(mod_name, 0),
            direct_params=tuple((names.get(id(p)) or ["?"])[0] for p in mod._parameters.values() if p is not None),
            requires_grad_attr=attr if isinstance(attr, bool) else None,
            training_dependent=_is_training_dependent(mod),
            output_grad_fn=calls.graph_outputs.get(mod_name),
        ))
    return tuple(facts)


def memory_fact(device: torch.device, peaks: PhasePeaks, saved: SavedFacts | None,
                output_bytes: Mapping[Call, int], parameter_bytes: int, gradient_bytes: int | None) -> MemoryFact:
    """Tensor bytes of the run: peaks per phase, saved for backward, parameters, gradients, per module."""
    return MemoryFact(
        method=f"tensor storage bytes via TorchDispatchMode on {device.type}"
               + (" (estimate: no memory allocated)" if device.type == "meta" else ""),
        forward_peak_bytes=peaks.forward,
        backward_peak_bytes=peaks.backward,
        saved_for_backward_bytes=saved.total_bytes if saved is not None else 0,
        parameter_bytes=parameter_bytes,
        gradient_bytes=gradient_bytes,
        cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        by_module=module_memory(saved, output_bytes),
    )


def leaf_facts(leaves: Sequence[tuple[str, nn.Module, str, torch.Tensor]], module_names: Mapping[int, str],
               did_backward: bool) -> tuple[LeafFact, ...]:
    """The loose leaves found at the start of the run, with their gradient state after backward."""
    tensors = [t for *_, t in leaves]
    states = grad_states(tensors) if did_backward else [(None, None)] * len(tensors)
    return tuple(
        LeafFact(name=name, module=module_names.get(id(mod), ""), shape=shape_of(t), dtype=dtype_name(t.dtype),
                 grad=grad, grad_norm=norm)
        for (name, mod, _, t), (grad, norm) in zip(leaves, states, strict=True)
    )


def param_changes(before: Mapping[str, nn.Parameter], after: Mapping[str, nn.Parameter],
                  written: Mapping[int, Sequence[Phase]]) -> tuple[ParamChange, ...]:
    """Registrations forward changed (``before``/``after``: names → parameters around the forward) and
    parameters written in each phase (``written``: ``id(parameter)`` → phases, by the write guard)."""
    changes = []
    for name, param in after.items():
        old = before.get(name)
        if old is None:
            changes.append(ParamChange(name, FORWARD, "registered"))
        elif old is not param:
            changes.append(ParamChange(name, FORWARD, "replaced"))
    changes += [ParamChange(name, FORWARD, "removed") for name in before if name not in after]
    first_name: dict[int, str] = {}
    for name, param in before.items():
        first_name.setdefault(id(param), name)
    for pid, phases in written.items():
        name = first_name.get(pid)
        if name is not None:
            changes += [ParamChange(name, phase, "written") for phase in (FORWARD, BACKWARD) if phase in phases]
    return tuple(changes)


def written_in(changes: Sequence[ParamChange], phase: Phase) -> tuple[str, ...]:
    """Names of the parameters written in ``phase``, in model order as found."""
    return tuple(c.name for c in changes if c.how == "written" and c.phase == phase)
