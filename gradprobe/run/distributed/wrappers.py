"""Read a model wrapped for distributed training: which wrapper, the user's names, global shapes, local shards.

DDP (``DistributedDataParallel``) registers the model as ``module``; FSDP1 (``FullyShardedDataParallel``)
inserts ``_fsdp_wrapped_module`` at every unit and, with ``use_orig_params=True``, keeps the original
parameters as 1-D views of this rank's slice of a flat parameter (empty on some ranks); with
``use_orig_params=False`` only the flat parameters are registered.  FSDP2 (``fully_shard``) keeps names and
makes every parameter a ``DTensor`` whose ``.to_local()`` is this rank's shard.  This module turns each into
one picture: original name → global shape, local shape, placement and FSDP unit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradprobe.facts.distributed import NameMap, WrapperInfo, clean_name

Shape = tuple[int, ...]


@dataclass
class ShardInfo:
    """Where one original parameter's values live on this rank."""

    name: str  # original name
    global_shape: Shape
    local_shape: Shape
    placement: str  # "replicated" | "Shard(dim=0)" | "flat[a:b]"
    unit: str | None
    requires_grad: bool
    dtype: torch.dtype
    flat: tuple[Any, int, int] | None = None  # FSDP1: (flat parameter, offset in its local shard, numel here)

    @property
    def empty(self) -> bool:
        return any(d == 0 for d in self.local_shape) and self.placement != "replicated"


@dataclass
class Unit:
    """One FSDP unit: its module name and the original parameters its all-gather carries."""

    name: str
    module: nn.Module
    params: list[str] = field(default_factory=list)
    group: Any = None  # FSDP2: the FSDPParamGroup
    handle: Any = None  # FSDP1: the FlatParamHandle


@dataclass
class Wrapped:
    """A model as the distributed run sees it."""

    model: nn.Module  # what the run calls: the wrapper (or the model itself)
    inner: nn.Module  # the user's module
    info: WrapperInfo
    names: NameMap
    shards: dict[str, ShardInfo]  # original name → where it lives
    by_id: dict[int, str]  # id(registered parameter) → original name
    units: list[Unit] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.info.kind


def _ddp_class() -> type | None:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DistributedDataParallel


def _fsdp1_class() -> type | None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return None
    return FullyShardedDataParallel


def _fsdp2_class() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return None
    return FSDPModule


def kind_of(model: nn.Module) -> str:
    """``ddp`` | ``fsdp1`` | ``fsdp`` (FSDP2 anywhere in the model) | ``none``."""
    ddp, fsdp1, fsdp2 = _ddp_class(), _fsdp1_class(), _fsdp2_class()
    if ddp is not None and isinstance(model, ddp):
        return "ddp"
    if fsdp1 is not None and isinstance(model, fsdp1):
        return "fsdp1"
    if fsdp2 is not None and any(isinstance(m, fsdp2) for m in model.modules()):
        return "fsdp"
    return "none"


def describe(model: nn.Module, source: str = "target") -> Wrapped:
    """The wrapper around ``model`` (if any), with names, shards and units."""
    kind = kind_of(model)
    sync_bn = tuple(name for name, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm))
    if kind == "ddp":
        return _describe_ddp(model, source, sync_bn)
    if kind == "fsdp1":
        return _describe_fsdp1(model, source, sync_bn)
    if kind == "fsdp":
        return _describe_fsdp2(model, source, sync_bn)
    shards = {}
    by_id = {}
    for name, p in model.named_parameters():
        shards[name] = ShardInfo(name, tuple(p.shape), tuple(p.shape), "replicated", None, p.requires_grad, p.dtype)
        by_id[id(p)] = name
    return Wrapped(model, model, WrapperInfo("none", "none", sync_batchnorm=sync_bn), NameMap(), shards, by_id)


# --------------------------------------------------------------------------- DDP


def _strip_ddp(name: str) -> str:
    if name == "module":
        return ""
    return name[len("module."):] if name.startswith("module.") else name


def _describe_ddp(ddp: Any, source: str, sync_bn: tuple[str, ...]) -> Wrapped:
    inner: nn.Module = ddp.module
    names = NameMap(
        params={n: _strip_ddp(n) for n, _ in ddp.named_parameters(remove_duplicate=False)},
        modules={"": None, **{n: _strip_ddp(n) for n, _ in ddp.named_modules(remove_duplicate=False) if n}},
        buffers={n: _strip_ddp(n) for n, _ in ddp.named_buffers(remove_duplicate=False)},
    )
    shards: dict[str, ShardInfo] = {}
    by_id: dict[int, str] = {}
    for name, p in inner.named_parameters():
        shards[name] = ShardInfo(name, tuple(p.shape), tuple(p.shape), "replicated", None, p.requires_grad, p.dtype)
        by_id[id(p)] = name
    info = WrapperInfo(
        "ddp", source,
        find_unused_parameters=bool(getattr(ddp, "find_unused_parameters", False)),
        broadcast_buffers=bool(getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", True))),
        init_sync=getattr(ddp, "init_sync", None),
        static_graph=bool(getattr(ddp, "static_graph", False)),
        sync_batchnorm=tuple(_strip_ddp(n) for n in sync_bn),
    )
    return Wrapped(ddp, inner, info, names, shards, by_id)


# --------------------------------------------------------------------------- FSDP2


def _placement(p: Any) -> str:
    """``Shard(dim=0)``, ``Replicate()``: the DTensor placements in their constructor spelling."""
    placements = getattr(p, "placements", None)
    if not placements:
        return "replicated"
    out = []
    for x in placements:
        dim = getattr(x, "dim", None)
        kind = type(x).__name__.lstrip("_")
        out.append(f"Shard(dim={dim})" if dim is not None and "Shard" in kind else f"{kind}()")
    return ", ".join(out)


def _fsdp2_type(m: nn.Module) -> str | None:
    """``FSDPLinear`` → ``Linear``: fully_shard swaps in a subclass of (FSDPModule, the user's class)."""
    fsdp2 = _fsdp2_class()
    if fsdp2 is None or not isinstance(m, fsdp2):
        return None
    for base in type(m).__mro__[1:]:
        if base is not fsdp2 and issubclass(base, nn.Module) and base.__name__ != type(m).__name__:
            return base.__name__
    return None


def _describe_fsdp2(model: nn.Module, source: str, sync_bn: tuple[str, ...]) -> Wrapped:
    fsdp2 = _fsdp2_class()
    types = {}
    for name, m in model.named_modules(remove_duplicate=False):
        original = _fsdp2_type(m)
        if original is not None:
            types[name] = original
    shards: dict[str, ShardInfo] = {}
    by_id: dict[int, str] = {}
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        shards[name] = ShardInfo(name, tuple(p.shape), tuple(local.shape), _placement(p), None, p.requires_grad,
                                 p.dtype)
        by_id[id(p)] = name
    units: list[Unit] = []
    for mod_name, m in model.named_modules():
        if fsdp2 is None or not isinstance(m, fsdp2):
            continue
        group = None
        try:
            group = m._get_fsdp_state()._fsdp_param_group  # type: ignore[operator]
        except Exception:  # an FSDP2 internal that moved: no unit detail
            group = None
        unit = Unit(mod_name, m, group=group)
        if group is not None:
            for fp in group.fsdp_params:
                pname = by_id.get(id(fp.sharded_param))
                if pname is not None:
                    unit.params.append(pname)
                    shards[pname].unit = mod_name
        units.append(unit)
    info = WrapperInfo("fsdp", source, sync_batchnorm=sync_bn)
    return Wrapped(model, model, info, NameMap(types=types), shards, by_id, units)


# --------------------------------------------------------------------------- FSDP1


def _describe_fsdp1(root: Any, source: str, sync_bn: tuple[str, ...]) -> Wrapped:
    fsdp1 = _fsdp1_class()
    modules: dict[str, str | None] = {}
    for name, m in root.named_modules(remove_duplicate=False):
        modules[name] = None if fsdp1 is not None and isinstance(m, fsdp1) else clean_name(name)
    params = {n: clean_name(n) for n, _ in root.named_parameters(remove_duplicate=False)}
    buffers = {n: clean_name(n) for n, _ in root.named_buffers(remove_duplicate=False)}
    use_orig = bool(getattr(root, "_use_orig_params", False))
    shards: dict[str, ShardInfo] = {}
    by_id: dict[int, str] = {}
    units: list[Unit] = []
    registered = {id(p): n for n, p in root.named_parameters(remove_duplicate=False)}
    for mod_name, m in root.named_modules():
        if fsdp1 is None or not isinstance(m, fsdp1):
            continue
        unit_name = clean_name(mod_name)
        handle = getattr(m, "_handle", None)
        unit = Unit(unit_name, m, handle=handle)
        units.append(unit)
        if handle is None:
            continue
        flat = handle.flat_param
        infos = getattr(flat, "_shard_param_infos", ())
        orig = getattr(flat, "_params", None) if use_orig else None
        for i, fqn in enumerate(flat._fqns):
            full = f"{unit_name}.{clean_name(fqn)}" if unit_name else clean_name(fqn)
            shape = tuple(flat._shapes[i])
            info = infos[i] if i < len(infos) else None
            numel = int(info.numel_in_shard or 0) if info is not None and info.in_shard else 0
            offset = int(info.offset_in_shard or 0) if info is not None and info.in_shard else 0
            if numel and info is not None:
                start, end = int(info.intra_param_start_idx), int(info.intra_param_end_idx) + 1
                placement = f"flat[{start}:{end}]"
            else:
                placement = "flat[]"
            requires_grad = orig[i].requires_grad if orig is not None else flat.requires_grad
            shards[full] = ShardInfo(full, shape, (numel,), placement, unit_name, requires_grad, flat.dtype,
                                     flat=(flat, offset, numel))
            unit.params.append(full)
            if orig is not None:
                by_id[id(orig[i])] = full
                registered_name = registered.get(id(orig[i]))
                if registered_name is not None:
                    params[registered_name] = full
    order = {name: i for i, name in enumerate(params.values())}  # the model's registration order where known
    shards = dict(sorted(shards.items(), key=lambda kv: order.get(kv[0], len(order))))
    info = WrapperInfo("fsdp1", source, use_orig_params=use_orig, sync_batchnorm=tuple(clean_name(n) for n in sync_bn))
    inner = getattr(root, "_fsdp_wrapped_module", root)
    return Wrapped(root, inner, info, NameMap(params=params, modules=modules, buffers=buffers), shards, by_id, units)


@functools.cache
def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (an empty tensor's answer, asked once per dtype: the facts ask it for every
    parameter, twice per FSDP unit member)."""
    return torch.empty((), dtype=dtype).element_size()


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
