"""Values on the meta device, where the CPU has them: the inputs' CPU copy followed through the run.

A meta tensor has a shape and no values, so a forward that reads a value fails there -- and every
tokenised batch makes one read: ``transformers`` builds the attention mask from ``attention_mask``
(``padding_mask.all()``, ``if`` on a tensor), and the padding checks of BERT, BART or T5 do the same.
The values read are those of the *inputs* (and of small tensors computed from them), never of
parameters.  So :class:`HostValues` keeps a CPU "twin" next to every meta tensor whose values are known:
the inputs' host copy (:attr:`~gradprobe.load.inputs.ExampleInputs.host`), and the output of every op
whose tensor arguments all have twins (``arange``, ``cumsum``, comparisons, the mask arithmetic), computed
again on the CPU.  An op that needs values (``.item()``, ``nonzero``, boolean-mask indexing) then gets them
from the twins; the meta run keeps its shapes and bytes, and takes exactly the branch the CPU run takes.
Nothing of ``transformers`` (or any library) is patched: this mode only sees aten ops.

A tensor computed from parameters has no twin (parameters on meta have no values); an op that needs its
values raises :class:`NoHostValues`, which names the op and the argument, for one clear line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

HostInputs = tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[str, torch.Tensor]]]
META = torch.device("meta")
CPU = torch.device("cpu")
MAX_TWIN_NUMEL = 1 << 24  # a twin bigger than this is not computed (16M elements): its values stay unknown
_aten = torch.ops.aten
# ops whose outputs' shapes (or Python results) depend on values: meta cannot run them alone
_VALUE_OPS = {
    _aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default,
    _aten.is_nonzero.default, _aten.equal.default, _aten.unique_consecutive.default,
    _aten._unique2.default, _aten.unique_dim.default, _aten.repeat_interleave.Tensor,
    _aten.bincount.default, _aten.allclose.default,
}
_BOOL_INDEXED = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                 _aten._index_put_impl_.default}
_SPECIAL = _VALUE_OPS | _BOOL_INDEXED | {_aten._to_copy.default}
_MUTABLE: dict[Any, bool] = {}
_SEEDED: dict[Any, bool] = {}


def _mutable(func: Any) -> bool:
    found = _MUTABLE.get(func)
    if found is None:
        found = _MUTABLE[func] = bool(func._schema.is_mutable)
    return found


def _seeded(func: Any) -> bool:
    """Random ops: their twin would draw from the CPU generator and change the user's random stream."""
    found = _SEEDED.get(func)
    if found is None:
        found = _SEEDED[func] = torch.Tag.nondeterministic_seeded in func.tags
    return found


_LABELS = {
    "_local_scalar_dense": ".item() (also bool(t), int(t), float(t), `if t:`)",
    "is_nonzero": "bool(t) / `if t:`",
    "nonzero": "nonzero (torch.nonzero, boolean-mask indexing x[mask], torch.where(cond) with one argument)",
    "index": "nonzero (boolean-mask indexing x[mask])",
    "index_put": "nonzero (boolean-mask assignment x[mask] = y)",
    "_index_put_impl_": "nonzero (boolean-mask assignment x[mask] = y)",
    "masked_select": "masked_select",
    "repeat_interleave": "repeat_interleave without output_size",
    "_to_copy": "copying values off the device (.tolist(), .numpy(), .cpu())",
}


class NoHostValues(RuntimeError):
    """An op needs values of a meta tensor whose values are unknown: computed from parameters (which have no
    values on meta), or from an input that came on the meta device without its CPU copy."""

    def __init__(self, op: str, argument: str, input_name: str | None = None) -> None:
        self.op = op
        self.label = _LABELS.get(op, op)
        self.argument = argument
        self.input_name = input_name  # the input it came from, when that input had no CPU copy
        node = torch._C._current_autograd_node()
        self.node = type(node).__name__ if node is not None else None  # set in backward: the node running
        self.seq = node._sequence_nr() if node is not None else None
        super().__init__(f"{self.label} needs the values of {argument}")

    def fix(self) -> str:
        """What to do, in words."""
        if self.input_name is not None:
            return (f"pass input '{self.input_name}' as a CPU tensor (gradprobe moves it to meta and keeps its "
                    f"values for the ops that read them), or leave it out for a meta estimate; or run with "
                    f"--device cpu")
        return ("run with --device cpu (a smaller --init or --shape keeps it fast), or make the op shape-static "
                "(e.g. one_hot(x, num_classes=N))")


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.device) and value.type == "meta":
        return CPU
    return value


class HostValues(TorchDispatchMode):
    """Follow the CPU values of the inputs through a meta run, and answer value-dependent ops from them."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                 unknown: list[tuple[str, torch.Tensor]] = ()) -> None:  # type: ignore[assignment]
        super().__init__()
        # meta tensors computed from an input that came without values: which input (for the error message)
        self.origins: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for name, t in unknown:
            if _is_meta(t) and not t.is_floating_point():
                self.origins[t] = name
        self.twins: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for meta, host in pairs:
            if _is_meta(meta) and isinstance(host, torch.Tensor) and not _is_meta(host) and host.shape == meta.shape:
                self.twins[meta] = _own_copy(host, meta.dtype)
        self._storages: set[int] = {m.untyped_storage()._cdata for m in self.twins.keys()}
        self.answered: list[str] = []  # value-dependent ops answered from the twins, for the report

    # ------------------------------------------------------------------ twins

    def twin(self, t: torch.Tensor) -> torch.Tensor | None:
        """The CPU twin of meta tensor ``t`` (a CPU tensor is its own), or None when its values are unknown."""
        if not _is_meta(t):
            return t
        return self.twins.get(t)

    def _twin_args(self, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """``args``/``kwargs`` with every meta tensor replaced by its twin, or None when one has none."""
        flat, spec = tree_flatten((args, kwargs))
        out = []
        for value in flat:
            if isinstance(value, torch.Tensor):
                found = self.twin(value)
                if found is None:
                    return None
                out.append(found)
            else:
                out.append(_on_cpu(value))
        return tree_unflatten(out, spec)

    def _record(self, out: Any, host_out: Any) -> None:
        flat, _ = tree_flatten(out)
        host_flat, _ = tree_flatten(host_out)
        if len(flat) != len(host_flat):
            return
        for meta, host in zip(flat, host_flat, strict=False):
            if _is_meta(meta) and isinstance(host, torch.Tensor) and host.shape == meta.shape:
                self.twins[meta] = host
                self._storages.add(meta.untyped_storage()._cdata)

    def _forget(self, func: Any, args: Any, kwargs: Any) -> None:
        """An op that writes into tensors whose new values are unknown: their twins are stale now."""
        schema = func._schema
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else (kwargs or {}).get(arg.name)
            for t in (value if isinstance(value, (list, tuple)) else [value]):
                if _is_meta(t) and t.untyped_storage()._cdata in self._storages:
                    self._forget_views(t)

    def _forget_views(self, t: torch.Tensor) -> None:
        """Views of a written tensor share its storage: their twins are stale too."""
        key = t.untyped_storage()._cdata
        for other in list(self.twins.keys()):
            if other.untyped_storage()._cdata == key:
                self.twins.pop(other, None)

    # ------------------------------------------------------------------ dispatch

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SPECIAL and (func in _VALUE_OPS or (func in _BOOL_INDEXED and _bool_indices(args))
                                 or _copies_off_meta(func, args, kwargs)):
            return self._value_op(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except (RuntimeError, NotImplementedError):  # a meta kernel that reads values itself
            if self._twin_args(args, kwargs) is None:
                raise
            return self._value_op(func, args, kwargs)
        if not self._all_twinned(args, kwargs):  # most ops: a parameter or activation among the arguments
            if self._storages and _mutable(func):
                self._forget(func, args, kwargs)
            if self.origins:
                self._follow_origin(args, kwargs, out)
            return out
        if _seeded(func) or not _any_meta(out) or _too_big(out):
            return out
        twinned = self._twin_args(args, kwargs)
        if twinned is not None:
            with _disable_current_modes():
                host_out = func(*twinned[0], **twinned[1])
            self._record(out, host_out)
        return out

    def _all_twinned(self, args: Any, kwargs: Any) -> bool:
        """Every meta tensor among the arguments has a twin (one level of lists looked into: aten's
        arguments are flat); stops at the first that has none, which is the common case and must be cheap."""
        twins = self.twins
        for group in (args, kwargs.values()):
            for value in group:
                if isinstance(value, torch.Tensor):
                    if value.device.type == "meta" and value not in twins:
                        return False
                elif isinstance(value, (list, tuple)):
                    for item in value:
                        if isinstance(item, torch.Tensor) and item.device.type == "meta" and item not in twins:
                            return False
        return True

    def _follow_origin(self, args: Any, kwargs: Any, out: Any) -> None:
        """Outputs of an op on a tensor from an input without values remember that input (for the message)."""
        outs = [v for v in (out if isinstance(out, (list, tuple)) else (out,))
                if _is_meta(v) and not v.is_floating_point()]
        if not outs:  # only masks, ids and indices are worth naming an input for, and floats are most ops
            return
        origins = self.origins
        origin = None
        for group in (args, kwargs.values()):
            for value in group:
                items = value if isinstance(value, (list, tuple)) else (value,)
                origin = next((origins[t] for t in items if isinstance(t, torch.Tensor) and t in origins), None)
                if origin is not None:
                    break
            if origin is not None:
                break
        if origin is None:
            return
        for v in outs:
            origins[v] = origin

    def _value_op(self, func: Any, args: Any, kwargs: Any) -> Any:
        twinned = self._twin_args(args, kwargs)
        if twinned is None:
            if func in _BOOL_INDEXED:
                return self._bool_indexed(func, args, kwargs)
            raise self._no_values(_op_name(func), args, kwargs)
        with _disable_current_modes():
            host_out = func(*twinned[0], **twinned[1])
        self.answered.append(_op_name(func))
        if func is _aten._to_copy.default:
            return host_out  # .cpu(), .tolist(): the values themselves
        if func in _BOOL_INDEXED:  # the meta op, indexed by the mask's positions: the CPU's shapes
            out = func(*_bool_to_long(self, args), **kwargs)
            self._record(out, host_out)
            return out
        return host_out_and_record(self, host_out)

    def _bool_indexed(self, func: Any, args: Any, kwargs: Any) -> Any:
        """``x[mask]`` with ``x`` without values: only the mask's values matter; index with its positions."""
        converted = _bool_to_long(self, args)
        if converted is None:
            raise self._no_values(_op_name(func), args[1], {})
        self.answered.append(_op_name(func))
        return func(*converted, **kwargs)

    def _no_values(self, op: str, args: Any, kwargs: Any) -> NoHostValues:
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor) and self.twin(value) is None:
                shape = f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
                origin = self.origins.get(value)
                if origin is not None:
                    return NoHostValues(op, f"{shape} computed from input '{origin}', which came on the meta "
                                            f"device without values", origin)
                return NoHostValues(op, f"{shape} computed from parameters or gradients (no values on meta)")
        return NoHostValues(op, "a tensor without values")


def _own_copy(host: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The twin of an input: a copy, so that a forward writing into its input (``mask.zero_()``, run again on the
    twin) never changes the user's CPU tensor -- which is also what the next run (compare-modes' next mode or
    repeat) starts from.  An input over MAX_TWIN_NUMEL is shared: an in-place op on it is too big to be run
    again on the CPU (``_too_big``), so only a boolean-mask assignment could write into it."""
    copy = host.numel() <= MAX_TWIN_NUMEL
    return host.detach().to(dtype=dtype, device=CPU, copy=copy)


def host_out_and_record(mode: HostValues, host_out: Any) -> Any:
    """Meta outputs shaped as the CPU's, each with its CPU twin recorded."""
    flat, spec = tree_flatten(host_out)
    metas = [_meta_like(v) for v in flat]
    mode._record(metas, flat)
    return tree_unflatten(metas, spec)


def _meta_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type != "meta":
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=META)
    return value


def _copies_off_meta(func: Any, args: Any, kwargs: Any) -> bool:
    device = kwargs.get("device")
    return func is _aten._to_copy.default and _is_meta(args[0]) and device is not None \
        and torch.device(device).type != "meta"


def _bool_indices(args: Any) -> bool:
    indices = args[1] if len(args) > 1 else None
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _bool_to_long(mode: HostValues, args: Any) -> tuple[Any, ...] | None:
    """``args`` of an indexing op with each boolean index replaced by the positions of its true values."""
    indices = []
    for index in args[1]:
        if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
            host = mode.twin(index)
            if host is None:
                return None
            with _disable_current_modes():
                positions = host.nonzero().unbind(1)
            for p in positions:
                meta = _meta_like(p)
                mode.twins[meta] = p
                indices.append(meta if _is_meta(args[0]) else p)
        else:
            indices.append(index)
    return (args[0], indices, *args[2:])


def _any_meta(out: Any) -> bool:
    return any(_is_meta(v) for v in tree_flatten(out)[0])


def _too_big(out: Any) -> bool:
    return sum(v.numel() for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)) > MAX_TWIN_NUMEL


def _op_name(func: Any) -> str:
    return str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)


def input_values(args: tuple[Any, ...], kwargs: dict[str, Any], host: Any
                 ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """(meta input, its CPU copy) for every input with one (``host``: the inputs' CPU copy in the same
    structure, or None), and (name, meta input) for every meta input without."""
    named = [(f"arg{i}", t) for i, a in enumerate(args) for t in tree_flatten(a)[0]]
    named += [(k, t) for k, v in kwargs.items() for t in tree_flatten(v)[0]]
    hosts = tree_flatten(host)[0] if host is not None else []
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    if len(hosts) == len(named):
        pairs = [(m, h) for (_, m), h in zip(named, hosts, strict=False)
                 if _is_meta(m) and isinstance(h, torch.Tensor) and not _is_meta(h)]
    paired = {id(m) for m, _ in pairs}
    unknown = [(n, t) for n, t in named if _is_meta(t) and id(t) not in paired]
    return pairs, unknown
