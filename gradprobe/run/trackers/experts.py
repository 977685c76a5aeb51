"""Fused mixture-of-experts parameters: which tokens each expert got, and each expert slice's gradient.

A module holds fused experts when its own parameters have a leading dimension equal to its expert count:
the count comes from an attribute the module carries (``num_experts``, ``num_local_experts``... as
``transformers``' ``MixtralExperts`` and ``Qwen2MoeExperts`` do), from its ``config``, or, failing both,
from the shape (two or more 3-D parameters of a module whose name says "expert", sharing the leading size).

Routing is measured, not assumed: the router's top-k indices are handed to the experts module (``experts(
hidden, top_k_index, top_k_weights)``), so a forward pre-hook counts, per expert, the assignments of the
integer index tensor it receives.  After the backward, each fused parameter's gradient is read slice by
slice (``grad[e]``): exactly zero, nonzero or absent, and its norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from gradprobe.facts.experts import ExpertParamGrads, ExpertsFact
from gradprobe.facts.run import GradState, RunFacts
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.trackers.base import FORWARD, NamedModules, Phase, first_names
from gradprobe.run.trackers.grads import local_tensor

_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "num_routed_experts", "n_experts",
                "moe_num_experts", "num_experts_per_layer")


@dataclass
class _Experts:
    """One module with fused expert parameters, and the routing its calls received."""

    name: str
    module: nn.Module
    count: int
    recognised_by: str
    params: list[tuple[str, nn.Parameter]]
    calls: list[_Call] = field(default_factory=list)


@dataclass
class _Call:
    """One call's routing: the expert index of each (token, slot), and which tokens' outputs got a gradient."""

    index: torch.Tensor  # int64 (tokens, k) on CPU
    gradient: torch.Tensor | None = None  # bool (tokens,): the module's output row got a nonzero gradient


_MISSING = object()
_MODULE_GETATTR = nn.Module.__getattr__
_PLAIN_LOOKUP: dict[tuple[type, str], bool] = {}  # (module class, attribute) -> found without class-level hooks


def _attribute(mod: nn.Module, attr: str) -> Any:
    """``getattr(mod, attr, None)``, without ``nn.Module.__getattr__`` raising (and formatting) an AttributeError
    for an attribute the module lacks: ~2 µs each, 16 per convolution, 0.85 ms of a ResNet-50 run (issue 16).
    The same lookup: a class attribute or descriptor, or a module class with its own attribute hooks, gets the
    real ``getattr``; else the instance dict, then the parameters, buffers and submodules, as ``__getattr__``."""
    kind = type(mod)
    plain = _PLAIN_LOOKUP.get((kind, attr))
    if plain is None:
        plain = _PLAIN_LOOKUP[(kind, attr)] = (
            kind.__getattribute__ is object.__getattribute__ and kind.__getattr__ is _MODULE_GETATTR
            and getattr(kind, attr, _MISSING) is _MISSING)
    if not plain:
        return getattr(mod, attr, None)
    found = mod.__dict__.get(attr, _MISSING)
    if found is not _MISSING:
        return found
    for table in ("_parameters", "_buffers", "_modules"):
        entries = mod.__dict__.get(table)
        if entries is not None and attr in entries:
            return entries[attr]
    return None


def _declared_count(mod: nn.Module) -> tuple[int, str] | None:
    for attr in _COUNT_ATTRS:
        value = _attribute(mod, attr)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value, attr
    config = _attribute(mod, "config")
    for attr in _COUNT_ATTRS:
        value = getattr(config, attr, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value, f"config.{attr}"
    return None


def find_fused_experts(named: NamedModules) -> list[_Experts]:
    """Every module whose own parameters carry a leading expert dimension (``named``:
    ``model.named_modules(remove_duplicate=False)``, walked once by the caller)."""
    found = []
    for name, mod in first_names(named):
        if isinstance(mod, torch.jit.ScriptModule):  # compiled: no Python hooks with keyword arguments
            continue
        own = [(k, p) for k, p in mod._parameters.items() if p is not None and p.dim() >= 3]
        if not own:
            continue
        declared = _declared_count(mod)
        if declared is not None:
            count, how = declared
            fused = [(k, p) for k, p in own if p.shape[0] == count]
        else:
            leading = {p.shape[0] for _, p in own}
            if len(own) < 2 or len(leading) != 1 or "expert" not in (name + type(mod).__name__).lower():
                continue
            count, how, fused = next(iter(leading)), "shape", own
            if count < 2:
                continue
        if fused:
            prefix = f"{name}." if name else ""
            found.append(_Experts(name, mod, count, how, [(prefix + k, p) for k, p in fused]))
    return found


class ExpertTracker:
    """Counts routed tokens per expert in forward; reads each expert slice's gradient in :meth:`refine`."""

    phases = (FORWARD,)

    def __init__(self, found: list[_Experts]) -> None:
        self.found = found

    @contextlib.contextmanager
    def install(self, phase: Phase) -> Iterator[None]:
        handles = [e.module.register_forward_pre_hook(self._hook(e), with_kwargs=True) for e in self.found]
        handles += [e.module.register_forward_hook(self._output_hook(e)) for e in self.found]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _hook(e: _Experts) -> Any:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # gradprobe's own ops: outside the run's dispatch modes, so the byte counts never see them
            with _disable_current_modes(), torch.no_grad():
                _count(e, args, kwargs)
        return hook

    @staticmethod
    def _output_hook(e: _Experts) -> Any:
        """Watch the gradient reaching each token's output row, to tell tokens the loss ignores."""
        def hook(_: nn.Module, _args: Any, output: Any) -> None:
            if not e.calls or e.calls[-1].gradient is not None:
                return
            call = e.calls[-1]
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, torch.Tensor) or not out.requires_grad or not out.dim() \
                    or out.shape[0] != call.index.shape[0]:
                return

            def on_grad(grad: torch.Tensor) -> None:
                with _disable_current_modes(), torch.no_grad():
                    call.gradient = (grad.detach().reshape(grad.shape[0], -1) != 0).any(dim=1).cpu()
            out.register_hook(on_grad)
        return hook

    def facts(self) -> list[_Experts]:
        return self.found

    def refine(self, facts: RunFacts) -> RunFacts:
        """The run's facts with one :class:`ExpertsFact` per fused-experts module."""
        return replace(facts, experts=tuple(_fact(e, facts.backward) for e in self.found))


def _count(e: _Experts, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Keep one call's routing: the integer expert-index tensor the module received."""
    index = _routing_index(args, kwargs, e.count)
    if index is not None:
        # a copy: holding the model's own tensor would keep it alive through backward (its bytes in the peaks)
        kept = index.detach().reshape(index.shape[0] if index.dim() else 1, -1).to("cpu", torch.int64, copy=True)
        e.calls.append(_Call(kept))


def _per_expert(index: torch.Tensor, count: int) -> torch.Tensor:
    flat = index.reshape(-1)
    flat = flat[(flat >= 0) & (flat < count)]  # count (or -1) marks an empty slot in some kernels
    return torch.bincount(flat, minlength=count)[:count]


def _routing_index(args: tuple[Any, ...], kwargs: Mapping[str, Any], count: int) -> torch.Tensor | None:
    """The first integer tensor among the module's inputs whose values are expert numbers (0..count)."""
    for _, t in flatten_tensors((args, dict(kwargs))):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.device.type == "meta":
            continue
        if not t.numel():
            continue
        low, high = int(t.min()), int(t.max())
        if low >= -1 and high <= count:
            return t
    return None


def _fact(e: _Experts, did_backward: bool) -> ExpertsFact:
    params = tuple(_slices(name, p, e.count, did_backward) for name, p in e.params)
    if not e.calls:
        return ExpertsFact(e.name, type(e.module).__name__, e.count, e.recognised_by, params)
    with torch.no_grad():
        tokens = sum(_per_expert(c.index, e.count) for c in e.calls)
        watched = did_backward and all(c.gradient is not None for c in e.calls)
        with_grad = sum(_per_expert(c.index[c.gradient], e.count) for c in e.calls) if watched else None  # type: ignore[index]
    return ExpertsFact(
        module=e.name, type=type(e.module).__name__, experts=e.count, recognised_by=e.recognised_by,
        parameters=params, tokens=tuple(int(n) for n in tokens.tolist()),  # type: ignore[union-attr]
        routed_rows=sum(int(c.index.shape[0]) for c in e.calls), top_k=int(e.calls[0].index.shape[1]),
        tokens_with_gradient=None if with_grad is None else tuple(int(n) for n in with_grad.tolist()),  # type: ignore[union-attr]
    )


def _slices(name: str, p: nn.Parameter, count: int, did_backward: bool) -> ExpertParamGrads:
    grad = local_tensor(p.grad) if did_backward else None
    if grad is None or grad.device.type == "meta" or grad.layout != torch.strided or grad.shape[0] != count:
        state = GradState.PRESENT if grad is not None else GradState.ABSENT
        if not did_backward:
            return ExpertParamGrads(name, tuple(p.shape), (), ())
        return ExpertParamGrads(name, tuple(p.shape), (state,) * count, (None,) * count)
    with torch.no_grad():
        flat = grad.detach().reshape(count, -1)
        nonzero = (flat != 0).any(dim=1).tolist()
        wide = torch.float64 if flat.dtype == torch.float64 else torch.float32
        norms = torch.linalg.vector_norm(flat.to(wide), dim=1).tolist()
    states = tuple(GradState.NONZERO if nz else GradState.ZERO for nz in nonzero)
    return ExpertParamGrads(name, tuple(p.shape), states, tuple(float(n) for n in norms))
