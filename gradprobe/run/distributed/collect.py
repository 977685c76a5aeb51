"""One rank's facts around a run through the wrapper: ``with RankCollector(wrapped): <the engine's run>``.

What the engine cannot see from outside the wrapper is taken where the wrapper exposes it, cheaply:

* DDP: a tensor hook per trainable parameter sees the gradient autograd computed on this rank *before*
  the reducer all-reduces it (presence and norm) — used/unused per rank.
* FSDP2: each unit's ``FSDPParamGroup.unshard``/``post_backward`` are wrapped on the instance: the
  all-gather output bytes per phase, and the unsharded gradients (local, before the reduce-scatter),
  with the sharded gradient each rank keeps afterwards (state and norm read for all of them at once).
* FSDP1: the flat gradient of every unit after FSDP's final backward callback: per original parameter the
  slice this rank holds, and the bytes it spends on frozen parameters; and a tensor hook on each forward view
  of the flat parameter (``fsdp1_local``): which parameters autograd reached on this rank, before the reduction.
* every wrapper: a forward hook on the model digests the buffers right after the forward (BatchNorm
  statistics), and parameter values are digested before the run where no wrapper broadcasts them.

Observers that compute (norms, digests) do it with the engine's dispatch modes switched off, so that their
temporaries never count in the run's measured memory.

Everything installed is removed on exit; facts come out as ``gradprobe.facts.distributed.RankFacts``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from gradprobe.facts.distributed import NO_SHARD, RankBuffer, RankFacts, RankMemory, RankParam, UnitFact
from gradprobe.facts.run import RunFacts
from gradprobe.run.distributed.fsdp1_local import hook_forward_views
from gradprobe.run.distributed.wrappers import Wrapped, element_size, numel
from gradprobe.run.trackers.base import FunctionModesAside, OpStream
from gradprobe.run.trackers.grad_stats import quiet
from gradprobe.run.trackers.grads import local_tensor
from gradprobe.run.trackers.zero_factor import all_zeros


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _norm(t: torch.Tensor) -> float:
    """The 2-norm of a gradient in its own dtype (one read, no float64 copy), as a Python float."""
    return float(torch.linalg.vector_norm(t.detach()))


def digest_tensors(tensors: list[torch.Tensor]) -> list[str | None]:
    """A cheap fingerprint of each tensor's values (norm and sum in its own dtype, computed the same way on every
    rank; integer and bool tensors: their sum and sum of squares as int64): equal values give equal digests;
    different ones almost surely differ.  One ``_foreach_norm`` and one
    stacked sum per call, one conversion to Python each, outside every tracker (dispatch and function modes)."""
    with quiet():  # even a method call on a tensor goes through the run's function mode (the cut tracker's)
        return _digests(tensors)


def _digests(tensors: list[torch.Tensor]) -> list[str | None]:
    out: list[str | None] = [None] * len(tensors)
    dense: list[int] = []
    counts: list[int] = []  # integer and bool tensors (a step counter, num_batches_tracked): exact sums
    for i, t in enumerate(tensors):
        t = local_tensor(t)
        if t is None or t.device.type == "meta" or t.layout != torch.strided:
            continue
        if t.is_floating_point() or t.is_complex():
            dense.append(i)
        elif t.numel():
            counts.append(i)
    if counts:
        exact = [local_tensor(tensors[i]).detach().long() for i in counts]  # type: ignore[union-attr]
        sums = torch.stack([torch.stack([x.sum(), (x * x).sum()]) for x in exact]).tolist()
        for i, (total, squares) in zip(counts, sums, strict=True):
            out[i] = f"int:{total}/{squares}"
    if not dense:
        return out
    locals_ = [local_tensor(tensors[i]).detach() for i in dense]  # type: ignore[union-attr]
    sums: list[float | complex] = [0.0] * len(dense)
    norms = torch.stack(torch._foreach_norm(locals_)).tolist()
    for complex_ in (False, True):  # one stack per kind: a real sum never prints as a complex number
        idx = [k for k, x in enumerate(locals_) if x.is_complex() is complex_]
        if idx:
            for k, v in zip(idx, torch.stack([locals_[k].sum() for k in idx]).tolist(), strict=True):
                sums[k] = v
    for i, n, v in zip(dense, norms, sums, strict=True):
        out[i] = f"{n!r}/{v!r}"
    return out


def param_digests(model: nn.Module) -> list[tuple[str, str]]:
    """(name, digest) of every parameter's values as this rank holds them."""
    named = list(model.named_parameters())
    digests = digest_tensors([p for _, p in named])
    return [(n, d) for (n, _), d in zip(named, digests, strict=True) if d is not None]


@dataclass
class _UnitStats:
    all_gather_forward: int = 0
    all_gather_backward: int = 0
    reduce_scatter: int = 0
    gradient: int = 0
    sharded_grads: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter → the local shard of its grad


class RankCollector:
    """Installs the observers for one run and builds this rank's ``RankFacts`` from the engine's facts."""

    def __init__(self, wrapped: Wrapped, rank: int, host: str, *, compare_values: bool) -> None:
        self.w = wrapped
        self.rank = rank
        self.host = host
        self.compare_values = compare_values
        self.local: dict[str, tuple[bool, float | None]] = {}  # name → (autograd produced a grad here, its norm)
        self.units: dict[str, _UnitStats] = {}
        self.flat_grads: dict[str, tuple[str, float | None]] = {}  # FSDP1: name → state/norm of the slice held here
        self.flat_unit_bytes: dict[str, tuple[int, int]] = {}  # FSDP1 unit → (flat grad bytes, frozen part)
        self.buffer_digests: dict[str, str | None] = {}
        self.value_digests: dict[str, str] = {}
        self.backward_seen = False
        # FSDP2: called with (unit, {parameter: got a gradient here}) before each unit's reduce-scatter; the
        # session makes the ranks agree there (FSDP2 reduce-scatters only the gradients a rank holds)
        self.before_reduce: Callable[[str, dict[str, bool]], None] | None = None
        self._undo: list[Any] = []

    # ------------------------------------------------------------------ install / remove

    def __enter__(self) -> RankCollector:
        if self.compare_values:
            self.value_digests = dict(param_digests(self.w.inner if self.w.kind == "ddp" else self.w.model))
        try:
            if self.w.kind == "ddp":
                self._hook_local_grads()
                self._ddp_pre_forward_aside()
            elif self.w.kind == "fsdp":
                self._instrument_fsdp2()
            elif self.w.kind == "fsdp1":
                self._instrument_fsdp1()
            self._hook_buffers()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            undo = self._undo.pop()
            with contextlib.suppress(Exception):
                undo()

    def _hook_local_grads(self) -> None:
        params = {id(p): p for p in self.w.inner.parameters()}
        for pid, name in self.w.by_id.items():
            p = params.get(pid)
            if p is None or not p.requires_grad:
                continue

            def hook(grad: torch.Tensor, name: str = name) -> None:
                self.backward_seen = True
                with quiet():  # a plain tensor, outside the trackers
                    norm = _norm(grad) if grad.layout == torch.strided and grad.is_floating_point() else None
                self.local[name] = (True, norm)

            self._undo.append(p.register_hook(hook).remove)

    def _ddp_pre_forward_aside(self) -> None:
        """DDP's own work before each forward with the torch-function modes set aside.

        ``_pre_forward`` (the reducer's bucket bookkeeping, ~160 ``as_strided`` per ResNet-50 forward) and the
        buffer broadcast in it (``_sync_buffers``: ~960 views, slices and copies of 159 buffers into and out of
        a flat one) run ops from C++, so each reaches the graph-cut tracker's ``TorchFunctionMode`` from inside
        the dispatch mode, with the live-bytes tracker's own storage reads: ~1,600 Python calls per forward
        against ~300 for the model's own, all DDP's bookkeeping under ``no_grad`` that reads no parameter of
        the user's forward and cuts nothing.  The dispatch-level trackers still see every op.  Where
        ``_pre_forward`` also moves or casts the inputs (``device_ids``, ``mixed_precision``) only the buffer
        broadcast is set aside; with a buffer comm hook (user code) nothing is."""
        ddp = self.w.model
        if getattr(ddp, "buffer_hook", None) is not None:
            return
        moves_inputs = bool(getattr(ddp, "device_ids", None)) or getattr(ddp, "mixed_precision", None) is not None
        name = "_sync_buffers" if moves_inputs else "_pre_forward"
        if name in ddp.__dict__ or not callable(getattr(ddp, name, None)):
            return
        setattr(ddp, name, _modes_aside(getattr(ddp, name)))
        self._undo.append(lambda: _drop_instance_attrs(ddp, (name,)))

    def _instrument_fsdp2(self) -> None:
        names = {id(p): n for n, p in self.w.model.named_parameters()}
        self._undo.append(_markers_off())
        for unit in self.w.units:
            group = unit.group
            if group is None:
                continue
            stats = self.units.setdefault(unit.name, _UnitStats())
            unshard, post_backward = group.unshard, group.post_backward

            def unshard_wrapper(*args: Any, _orig: Any = unshard, _group: Any = group, _stats: _UnitStats = stats,
                                **kwargs: Any) -> Any:
                pending = _group._all_gather_result
                with FunctionModesAside():  # FSDP's own all-gather: no torch call of the user's forward
                    out = _orig(*args, **kwargs)
                result = _group._all_gather_result
                if result is not None and result is not pending:
                    buf = getattr(result, "all_gather_output", None)
                    nbytes = buf.numel() * buf.element_size() if isinstance(buf, torch.Tensor) else 0
                    if "BACKWARD" in str(getattr(_group, "_training_state", "")):
                        _stats.all_gather_backward += nbytes
                    else:
                        _stats.all_gather_forward += nbytes
                return out

            def post_backward_wrapper(*args: Any, _orig: Any = post_backward, _group: Any = group,
                                      _stats: _UnitStats = stats, _unit: str = unit.name, **kwargs: Any) -> Any:
                self.backward_seen = True
                unsharded: dict[str, torch.Tensor] = {}
                held: dict[str, bool] = {}
                for fp in _group.fsdp_params:
                    name = _fqn(fp, names)
                    if name is None or not hasattr(fp, "_unsharded_param"):
                        continue
                    grad = fp.unsharded_param.grad
                    if grad is None:
                        grad = getattr(fp, "unsharded_accumulated_grad", None)
                    if grad is None:
                        if fp.sharded_param.requires_grad:
                            self.local.setdefault(name, (False, None))
                            held[name] = False
                        continue
                    held[name] = True
                    nbytes = grad.numel() * grad.element_size()
                    _stats.gradient += nbytes
                    # reduce-scattered in the MixedPrecisionPolicy's reduce_dtype when it differs (FSDP2's rule)
                    reduce_dtype = getattr(fp, "reduce_dtype", None) or grad.dtype
                    _stats.reduce_scatter += grad.numel() * reduce_dtype.itemsize
                    unsharded[name] = grad
                if unsharded:  # the unit's local gradients, before the reduce-scatter frees them: one read
                    self.local.update((n, (True, norm)) for n, norm in _norms(unsharded).items())
                if held and self.before_reduce is not None:
                    self.before_reduce(_unit, held)
                out = _orig(*args, **kwargs)
                with _disable_current_modes():  # read later, all at once (``_sharded_grad_states``)
                    for fp in _group.fsdp_params:
                        name = _fqn(fp, names)
                        grad = local_tensor(fp.sharded_param.grad)
                        if name is None or grad is None:
                            continue
                        _stats.sharded_grads[name] = grad.detach()
                return out

            group.unshard = unshard_wrapper
            group.post_backward = post_backward_wrapper
            group.wait_for_unshard = _modes_aside(group.wait_for_unshard)
            group.reshard = _modes_aside(group.reshard)
            self._undo.append(lambda g=group: _drop_instance_attrs(
                g, ("unshard", "post_backward", "wait_for_unshard", "reshard")))

    def _instrument_fsdp1(self) -> None:
        try:
            from torch.distributed.fsdp import _runtime_utils as runtime
        except ImportError:  # pragma: no cover
            return
        original = runtime._post_backward_final_callback

        def final_callback(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.backward_seen = True
            with _disable_current_modes():
                self._read_flat_grads()
            return out

        runtime._post_backward_final_callback = final_callback
        self._undo.append(lambda: setattr(runtime, "_post_backward_final_callback", original))
        trainable = {name for name, info in self.w.shards.items() if info.requires_grad}
        self._undo += hook_forward_views(self.w.units, trainable, self._record_local)

    def _record_local(self, name: str, grad: torch.Tensor) -> None:
        """A gradient autograd computed on this rank, before any reduction (FSDP1's forward views)."""
        with torch.no_grad(), _disable_current_modes():
            norm = _norm(grad) if grad.layout == torch.strided and grad.is_floating_point() else None
        self.local[name] = (True, norm)

    def _read_flat_grads(self) -> None:
        by_unit: dict[str, tuple[int, int]] = {}
        for name, info in self.w.shards.items():
            if info.flat is None:
                continue
            flat, offset, count = info.flat
            grad = flat.grad
            unit = info.unit or ""
            total, frozen = by_unit.get(unit, (0, 0))
            if grad is not None and unit not in by_unit:
                total = grad.numel() * grad.element_size()
            if grad is None:
                self.flat_grads[name] = ("none", None) if count else (NO_SHARD, None)
            elif not count:
                self.flat_grads[name] = (NO_SHARD, None)
            else:
                piece = grad.detach()[offset:offset + count]
                self.flat_grads[name] = _state(piece)
                if not info.requires_grad:
                    frozen += count * grad.element_size()
            by_unit[unit] = (total, frozen)
        self.flat_unit_bytes = by_unit

    def _hook_buffers(self) -> None:
        inner = self.w.inner
        named = [(n, b) for n, b in inner.named_buffers() if b is not None]
        if not named:
            return
        done = [False]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if done[0]:
                return
            done[0] = True
            digests = digest_tensors([b for _, b in named])
            self.buffer_digests = {n: d for (n, _), d in zip(named, digests, strict=True)}

        self._undo.append(self.w.model.register_forward_hook(hook).remove)

    # ------------------------------------------------------------------ facts

    def usage(self) -> dict[str, bool]:
        """Trainable parameter → whether autograd produced a gradient for it on this rank (empty: not observed)."""
        if not self.backward_seen or self.w.kind not in ("ddp", "fsdp", "fsdp1"):
            return {}
        return {name: self.local.get(name, (False, None))[0] for name, info in self.w.shards.items()
                if info.requires_grad}

    def facts(self, run: RunFacts | None, pre_wrap: list[tuple[str, str]] | None = None,
              second_iteration: tuple[bool, str | None] = (False, None), notes: tuple[str, ...] = ()) -> RankFacts:
        """This rank's ``RankFacts`` from the engine's facts as the run produced them (under the wrapper's names:
        parameters and buffers are looked up under their original names here, so a rank that reports nothing
        itself renames nothing)."""
        did_backward = bool(run is not None and run.backward)
        params, local_param_bytes, local_grad_bytes = self._param_facts(run, did_backward)
        return RankFacts(
            rank=self.rank, host=self.host, params=tuple(params), buffers=tuple(self._buffer_facts(run)),
            memory=self._memory_fact(run, local_param_bytes, local_grad_bytes if did_backward else None),
            units=tuple(self._unit_facts()), pre_wrap_digests=tuple(pre_wrap or ()),
            second_iteration_ran=second_iteration[0], second_iteration_error=second_iteration[1], notes=notes,
        )

    def _param_facts(self, run: RunFacts | None, did_backward: bool) -> tuple[list[RankParam], int, int]:
        """Every parameter as this rank holds it, with the bytes of its parameters and of its gradients."""
        param = self.w.names.param
        engine = {param(p.name): p for p in run.parameters} if run is not None else {}
        params: list[RankParam] = []
        local_param_bytes = 0
        local_grad_bytes = 0
        fsdp2_grads = _sharded_grad_states({n: g for s in self.units.values() for n, g in s.sharded_grads.items()})
        for stats in self.units.values():
            stats.sharded_grads.clear()  # read: the gradients are the model's again to free
        zero_shards = self._zero_shards() if self.w.kind in ("fsdp", "fsdp1") and did_backward else {}
        for name, info in self.w.shards.items():
            size = element_size(info.dtype)
            held = numel(info.local_shape) * size
            local_param_bytes += held
            grad, norm, grad_bytes = self._grad_of(name, info, engine.get(name), did_backward, fsdp2_grads)
            local_grad_bytes += grad_bytes
            if self.w.kind in ("none", "ddp") and grad not in (None, "none", NO_SHARD):
                local_grad_bytes += held
            local = self._local_grad(name, info, grad, norm, did_backward)
            params.append(RankParam(
                name=name, global_shape=info.global_shape, local_shape=info.local_shape, placement=info.placement,
                dtype=_dtype(info.dtype), requires_grad=info.requires_grad, grad=grad, grad_norm=norm,
                local_grad=local[0], local_grad_norm=local[1], local_bytes=held,
                digest=self.value_digests.get(name), unit=info.unit, values_zero=zero_shards.get(name),
            ))
        if self.w.kind == "fsdp1":
            local_grad_bytes = sum(total for total, _ in self.flat_unit_bytes.values())
        return params, local_param_bytes, local_grad_bytes

    def _zero_shards(self) -> dict[str, bool]:
        """Original name → whether this rank's shard of a trainable FSDP parameter holds only zeros (an empty shard:
        True): rank 0 finds the all-zero parameters (LoRA's ``B``) from every rank's answer, which no process can
        read whole after the backward.  FSDP2: the DTensor's local shard; FSDP1: the parameter's slice of its flat
        parameter's local shard (:func:`~gradprobe.run.trackers.zero_factor.all_zeros`)."""
        found: dict[str, bool] = {}
        shards: list[tuple[str, torch.Tensor]] = []
        with quiet():
            for name, t in self._trainable_shards():
                if t.device.type == "meta" or t.layout != torch.strided or not (
                        t.is_floating_point() or t.is_complex()):
                    continue
                if t.numel() == 0:
                    found[name] = True
                else:
                    shards.append((name, t.detach()))
            zero = all_zeros([t for _, t in shards])
        found.update((name, z) for (name, _), z in zip(shards, zero, strict=True))
        return found

    def _trainable_shards(self) -> list[tuple[str, torch.Tensor]]:
        """(original name, the values this rank holds) of every trainable parameter, after the run."""
        if self.w.kind == "fsdp1":
            return [(name, info.flat[0].detach()[info.flat[1]:info.flat[1] + info.flat[2]])
                    for name, info in self.w.shards.items() if info.requires_grad and info.flat is not None]
        param = self.w.names.param
        found = []
        for name, p in self.w.model.named_parameters():
            t = local_tensor(p)
            if p.requires_grad and t is not None:
                found.append((param(name), t))
        return found

    def _grad_of(self, name: str, info: Any, fact: Any, did_backward: bool,
                 fsdp2_grads: dict[str, tuple[str, float | None, int]]) -> tuple[str | None, float | None, int]:
        """(gradient state, norm, bytes of an FSDP2 sharded gradient) of one parameter on this rank."""
        if not did_backward:
            return None, None, 0
        if info.empty:
            return NO_SHARD, None, 0
        if self.w.kind == "fsdp1" and fact is None and name in self.flat_grads:  # use_orig_params=False
            grad, norm = self.flat_grads[name]
            return grad, norm, 0
        if self.w.kind == "fsdp" and name in fsdp2_grads:
            return fsdp2_grads[name]
        if fact is not None:
            return fact.grad, fact.grad_norm, 0
        return "none", None, 0

    def _local_grad(self, name: str, info: Any, grad: str | None, norm: float | None,
                    did_backward: bool) -> tuple[bool | None, float | None]:
        """Whether autograd produced a gradient for the parameter on this rank (before any reduction)."""
        if self.w.kind == "none" and did_backward and info.requires_grad:
            return (grad not in ("none", None), norm)
        if did_backward and info.requires_grad and self.w.kind in ("ddp", "fsdp", "fsdp1"):
            return self.local.get(name, (False, None)) if self.backward_seen else (None, None)  # type: ignore
        return (None, None)

    def _memory_fact(self, run: RunFacts | None, param_bytes: int, grad_bytes: int | None) -> RankMemory | None:
        if run is None or run.memory is None:
            return None
        m = run.memory
        return RankMemory(
            rank=self.rank, forward_peak_bytes=m.forward_peak_bytes, backward_peak_bytes=m.backward_peak_bytes,
            saved_for_backward_bytes=m.saved_for_backward_bytes, parameter_bytes=param_bytes,
            gradient_bytes=grad_bytes, cuda_max_allocated_bytes=m.cuda_max_allocated_bytes,
        )

    def _buffer_facts(self, run: RunFacts | None) -> list[RankBuffer]:
        buffer = self.w.names.buffer
        changed = {buffer(b.name): b.changed for b in run.buffers} if run is not None else {}
        types = {n: type(m).__name__ for n, m in self.w.inner.named_modules()}
        buffers = []
        for name, _ in self.w.inner.named_buffers():
            owner = name.rpartition(".")[0]
            buffers.append(RankBuffer(name, self.w.names.types.get(owner, types.get(owner, "")), changed.get(name),
                                      self.buffer_digests.get(name)))
        return buffers

    def _unit_facts(self) -> list[UnitFact]:
        out = []
        for unit in self.w.units:
            frozen = [n for n in unit.params if not self.w.shards[n].requires_grad]
            trainable = [n for n in unit.params if self.w.shards[n].requires_grad]

            def full_bytes(names: list[str]) -> int:
                return sum(numel(self.w.shards[n].global_shape) * element_size(self.w.shards[n].dtype) for n in names)

            stats = self.units.get(unit.name)
            flat = self.flat_unit_bytes.get(unit.name)
            out.append(UnitFact(
                name=unit.name, frozen=tuple(frozen), trainable=tuple(trainable), frozen_bytes=full_bytes(frozen),
                trainable_bytes=full_bytes(trainable),
                all_gather_forward_bytes=stats.all_gather_forward if stats else None,
                all_gather_backward_bytes=stats.all_gather_backward if stats else None,
                reduce_scatter_bytes=stats.reduce_scatter if stats else None,
                gradient_bytes=stats.gradient if stats else None,
                frozen_gradient_bytes=flat[1] if flat is not None else None,
                flat_gradient_bytes=flat[0] if flat is not None else None,
            ))
        return out


def _state(grad: torch.Tensor) -> tuple[str, float | None]:
    """(zero|nonzero, norm) of a local, dense gradient."""
    if grad.numel() == 0:
        return "zero", 0.0
    with torch.no_grad():
        norm = _norm(grad)
        if norm == 0.0:  # all zeros, or values whose squares underflow
            return ("nonzero", norm) if bool(torch.any(grad != 0)) else ("zero", 0.0)
    return "nonzero", norm


def _norms(grads: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """The 2-norm of each gradient, each in its own dtype as ``_norm`` computes it: one ``_foreach_norm`` per
    dtype, outside every tracker; None for a gradient that is not a dense floating-point tensor."""
    out: dict[str, float | None] = {}
    batches: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for name, g in grads.items():
        if g.layout == torch.strided and g.is_floating_point():
            batches.setdefault((g.device, g.dtype), []).append(name)
        else:
            out[name] = None
    with quiet():
        for names in batches.values():
            norms = torch.stack(torch._foreach_norm([grads[n].detach() for n in names])).tolist()
            out.update(zip(names, norms, strict=True))
    return out


def _sharded_grad_states(grads: dict[str, torch.Tensor]) -> dict[str, tuple[str, float | None, int]]:
    """(state, norm, bytes) of each FSDP2 sharded gradient: the norms all at once (``_norms``), an element-wise
    look only where a norm is zero or unknown."""
    norms = _norms({n: g for n, g in grads.items() if g.numel()})
    out: dict[str, tuple[str, float | None, int]] = {}
    for name, g in grads.items():
        norm = norms.get(name)
        state = ("nonzero", norm) if norm else _state(g)
        out[name] = (*state, g.numel() * g.element_size())
    return out


def _fqn(fsdp_param: Any, names: dict[int, str]) -> str | None:
    """The original name of an FSDP2 parameter: FSDP2's own record of it (set at its lazy initialisation, which
    may register new parameter objects), else the name it had when the run started."""
    fqn = getattr(fsdp_param, "_param_fqn", None)
    return fqn if isinstance(fqn, str) and fqn else names.get(id(fsdp_param.sharded_param))


def _modes_aside(method: Any) -> Any:
    """``method`` (an FSDP2 unit's ``wait_for_unshard``/``reshard``, DDP's ``_pre_forward``) with the
    torch-function modes set aside.

    FSDP2's all-gather, copy-out and reshard make ~2,600 torch calls per ResNet-50 forward (property reads,
    views, storage resizes) beside the model's ~400; under the graph-cut tracker's ``TorchFunctionMode`` each
    is a Python call that changes no fact (FSDP's own bookkeeping under ``no_grad``: no parameter of the
    user's forward read, no cut).  The dispatch-level trackers still see every op (the all-gather buffers
    stay counted)."""
    def aside(*args: Any, **kwargs: Any) -> Any:
        with FunctionModesAside():
            return method(*args, **kwargs)
    return aside


def _markers_off() -> Any:
    """Make FSDP2's ``record_function`` markers free while only gradprobe's trackers would see them; returns
    the undo.

    Each FSDP2 unit opens ~17 ``record_function`` blocks per forward+backward (``FSDP::pre_forward``,
    ``FSDP::all_gather``, ...): two profiler ops each (~600 per ResNet-50 run), every one a Python call through
    the run's dispatch mode (and the graph-cut tracker's function mode) that allocates nothing and changes no
    fact.  With no profiler recording, a marker is a no-op for torch as well, so it is skipped when the
    dispatch modes active are gradprobe's op streams alone and none of them records ops one by one (the memory
    event log numbers every op it sees: there the markers still run).  Any other mode, or a profiler, gets
    FSDP's own ``record_function``.

    This patches a private torch module (``_FSDP2_MARKERS``).  Where another torch version lacks that module
    or its ``record_function``, or the name holds anything but torch's own ``record_function`` (moved,
    already wrapped by someone else), nothing is patched and the markers stay as they are: a cost, never an
    error.  The undo puts torch's ``record_function`` back only while the name still holds this wrapper."""
    try:
        module = importlib.import_module(_FSDP2_MARKERS)
    except Exception:  # an FSDP2 that moved or is absent
        return _nothing
    real = module.__dict__.get("record_function")
    if real is not torch.autograd.profiler.record_function:
        return _nothing

    def record_function(name: str, args: str | None = None) -> Any:
        if _profiler_enabled() or not _op_streams_only():
            return real(name, args)
        return _NO_MARKER

    def undo() -> None:
        if module.__dict__.get("record_function") is record_function:
            module.record_function = real

    module.record_function = record_function
    return undo


def _nothing() -> None:
    return None


_FSDP2_MARKERS = "torch.distributed.fsdp._fully_shard._fsdp_param_group"
_NO_MARKER = contextlib.nullcontext()
_profiler_enabled = torch._C._autograd._profiler_enabled


def _op_streams_only() -> bool:
    """Whether every active dispatch mode is a gradprobe ``OpStream`` without a per-op ``before_op``."""
    for i in range(torch._C._len_torch_dispatch_stack()):
        mode = torch._C._get_dispatch_stack_at(i)
        if type(mode) is not OpStream or mode._before is not None:
            return False
    return True


def _drop_instance_attrs(obj: Any, attrs: tuple[str, ...]) -> None:
    for attr in attrs:
        obj.__dict__.pop(attr, None)
