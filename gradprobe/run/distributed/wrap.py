"""``--wrap ddp|fsdp|fsdp1``: wrap a plain model target the way a training script would.

``--shard GLOB`` (repeatable) names the modules that become FSDP units; ``*`` stays inside one name segment
(``layers.*`` is every ``layers.N``), ``**`` spans segments.  The root is always a unit.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, UsageError, describe_exception
from gradprobe.judges.distributed.text import tangled_modules, tangled_text
from gradprobe.units import common_module

WRAP_KINDS = ("ddp", "fsdp", "fsdp1")


@lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def segment_match(name: str, glob: str) -> bool:
    """fnmatch where ``*`` and ``?`` do not cross a dot and ``**`` does."""
    return bool(_glob_regex(glob).match(name))


def shard_modules(model: nn.Module, globs: Sequence[str]) -> list[str]:
    """Names of the modules ``--shard`` selects, deepest first (FSDP wraps children before parents)."""
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for glob in globs:
        hits = [n for n in names if segment_match(n, glob)]
        if not hits:
            sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise UsageError(f"--shard '{glob}' matches no module of the model; its modules are: {sample or 'none'} "
                             f"('*' stays inside one name segment: 'layers.*' is every layers.N)")
        chosen += [n for n in hits if n not in chosen]
    return sorted(chosen, key=lambda n: -n.count("."))


def units_of(model: nn.Module, unit_names: Sequence[str]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """unit name ("" for the root) → the parameters its flat parameter / all-gather would carry."""
    units = {"": []} | {n: [] for n in unit_names}
    ordered = sorted(units, key=lambda n: -n.count(".") if n else 1)
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        owner = next((u for u in ordered if u and (name == u or name.startswith(u + "."))), "")
        units[owner].append((name, p))
    return units


def mixed_units(model: nn.Module, unit_names: Sequence[str]) -> list[tuple[str, list[str], list[str]]]:
    """(unit, frozen names, trainable names) for every unit whose parameters mix requires_grad."""
    out = []
    for unit, params in units_of(model, unit_names).items():
        frozen = [n for n, p in params if not p.requires_grad]
        trainable = [n for n, p in params if p.requires_grad]
        if frozen and trainable:
            out.append((unit, frozen, trainable))
    return out


def _names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fsdp1_mixed_message(unit: str, kind: str, frozen: Sequence[str], trainable: Sequence[str], torch_error: str,
                        split: str | None = None) -> str:
    where = f"unit '{unit}'" if unit else "the root unit"
    said = (f"FSDP1 with use_orig_params=False cannot flatten {where} ({kind}): it mixes {len(frozen)} frozen "
            f"parameter(s) ({_names(frozen)}) with {len(trainable)} trainable one(s) ({_names(trainable)}); torch "
            f"says: {torch_error}; fix: ")
    tangled = tangled_modules(frozen, trainable)
    if tangled:  # BitFit: a module's own weight frozen, its bias trained
        return (f"{said}use_orig_params=True (--use-orig-params), which keeps gradient memory for the frozen ones: "
                f"{tangled_text(tangled)}; or freeze or train each such module as a whole")
    fix = (f"make '{split}' an FSDP unit of its own (with --wrap fsdp1: --shard '{split}')" if split
           else "separate FSDP units for the trainable modules (with --wrap fsdp1: --shard GLOB)")
    return (f"{said}{fix} so that each unit is all frozen or all trainable, or "
            f"use_orig_params=True (--use-orig-params), which keeps gradient memory for the frozen ones")


def _common_module(names: Sequence[str]) -> str | None:
    """The innermost module containing every name (what to shard separately)."""
    return common_module(n.rpartition(".")[0] for n in names) or None


def mp_policy(mixed_precision: tuple[str, str | None] | None) -> Any:
    """FSDP2's ``MixedPrecisionPolicy`` for (param_dtype, reduce_dtype) dtype names; None → FSDP2's default."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision is None:
        return MixedPrecisionPolicy()
    param, reduce = mixed_precision
    return MixedPrecisionPolicy(param_dtype=getattr(torch, param),
                                reduce_dtype=getattr(torch, reduce) if reduce is not None else None)


def fully_shard_model(model: nn.Module, unit_names: Sequence[str], reshard_after_forward: bool | None = None,
                      mixed_precision: tuple[str, str | None] | None = None) -> None:
    """FSDP2 units: each named module (deepest first), then the root, with one mixed precision policy.

    ``reshard_after_forward`` None or True is FSDP2's default (``fully_shard`` without the argument): every unit
    but the root frees its unsharded parameters after its forward, the root keeps them for the backward that
    follows at once; False: no unit frees them (each is all-gathered once per step)."""
    from torch.distributed.fsdp import fully_shard

    modules = dict(model.named_modules())
    policy = mp_policy(mixed_precision)
    units: dict[str, Any] = {"mp_policy": policy}
    root: dict[str, Any] = {"mp_policy": policy}
    if reshard_after_forward is not None:
        units["reshard_after_forward"] = reshard_after_forward
    if reshard_after_forward is False:
        root["reshard_after_forward"] = False
    try:
        for name in unit_names:
            fully_shard(modules[name], **units)
        fully_shard(model, **root)
    except Exception as exc:
        raise RunError(f"--wrap fsdp: fully_shard raised {describe_exception(exc)}") from exc


def wrap(model: nn.Module, kind: str, shard: Sequence[str], use_orig_params: bool, device: torch.device,
         reshard_after_forward: bool | None = None,
         mixed_precision: tuple[str, str | None] | None = None) -> nn.Module:
    """``model`` wrapped by DDP, FSDP2 (``fully_shard``, with ``reshard_after_forward`` and the mixed precision
    policy (param_dtype, reduce_dtype)) or FSDP1 (``FullyShardedDataParallel``)."""
    if kind not in WRAP_KINDS:
        raise UsageError(f"--wrap '{kind}' is not a wrapper; use ddp, fsdp (FSDP2 fully_shard) or fsdp1")
    if kind == "ddp":
        if shard:
            raise UsageError("--shard names FSDP units: use it with --wrap fsdp or --wrap fsdp1")
        if reshard_after_forward is not None or mixed_precision is not None:
            raise UsageError("--reshard-after-forward and --mixed-precision set FSDP2's fully_shard: use them with "
                             "--wrap fsdp")
        from torch.nn.parallel import DistributedDataParallel

        try:
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        except Exception as exc:
            raise RunError(f"--wrap ddp: DistributedDataParallel(model) raised {describe_exception(exc)}") from exc
    unit_names = shard_modules(model, shard)
    if kind == "fsdp":
        fully_shard_model(model, unit_names, reshard_after_forward, mixed_precision)
        return model
    if reshard_after_forward is not None or mixed_precision is not None:
        raise UsageError("--reshard-after-forward and --mixed-precision set FSDP2's fully_shard: use them with "
                         "--wrap fsdp")
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    wanted = {id(m) for n, m in model.named_modules() if n in set(unit_names)}
    policy = partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in wanted)
    mixed = mixed_units(model, unit_names) if not use_orig_params else []
    try:
        return FullyShardedDataParallel(model, auto_wrap_policy=policy if wanted else None,
                                        use_orig_params=use_orig_params, device_id=device)
    except Exception as exc:
        explained = None
        if mixed and "requires_grad" in str(exc):  # gradprobe chose the units: it names them with the full names
            unit, frozen, trainable = mixed[0]
            kinds = {n: type(m).__name__ for n, m in model.named_modules()}
            torch_says = describe_exception(exc).split(" If possible", 1)[0].rstrip(". ")
            explained = fsdp1_mixed_message(unit, kinds.get(unit, "?"), frozen, trainable, torch_says,
                                            _common_module(trainable))
        explained = explained or explain_fsdp1_error(exc)
        if explained is not None:
            raise RunError(f"--wrap fsdp1: {explained}") from exc
        raise RunError(f"--wrap fsdp1: FullyShardedDataParallel(model) raised {describe_exception(exc)}") from exc


def explain_fsdp1_error(exc: BaseException) -> str | None:
    """FSDP1 (use_orig_params=False) refusing a unit that mixes frozen and trainable parameters: one line with the
    unit, its frozen and trainable parameters and torch's error (whose lists span several lines), read from the
    frame that raised it.  None for any other error."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ValueError) and ("requires_grad" in str(error)):
            break
        error = error.__cause__ or error.__context__
    else:
        return None
    if error is None:
        return None
    first = describe_exception(error).split(" If possible", 1)[0].rstrip(". ")
    for frame, _ in traceback.walk_tb(error.__traceback__):
        local = frame.f_locals
        if "frozen_param_fqns" in local and "nonfrozen_param_fqns" in local:  # FSDP's auto-wrap validation
            from gradprobe.facts.distributed import clean_name

            unit = clean_name(str(local.get("module_name", "")))
            module = local.get("module")
            frozen = [clean_name(n) for n in local["frozen_param_fqns"]]
            trainable = [clean_name(n) for n in local["nonfrozen_param_fqns"]]
            return fsdp1_mixed_message(unit, type(module).__name__ if module is not None else "?", frozen, trainable,
                                       first, _common_module(trainable))
    unit_module = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "__init__" and "fully_sharded_data_parallel" in frame.f_code.co_filename:
            candidate = frame.f_locals.get("module")
            if isinstance(candidate, nn.Module):
                unit_module = candidate
    if unit_module is None:
        return None
    from gradprobe.facts.distributed import clean_name

    fsdp1 = _fsdp1()
    nested = [n for n, m in unit_module.named_modules() if n and fsdp1 is not None and isinstance(m, fsdp1)]
    frozen, trainable = [], []
    for name, p in unit_module.named_parameters():
        if not any(name.startswith(n + ".") for n in nested):
            (trainable if p.requires_grad else frozen).append(clean_name(name))
    if not (frozen and trainable):
        return None
    return fsdp1_mixed_message(f"({type(unit_module).__name__}; names relative to it)", type(unit_module).__name__,
                               frozen, trainable, first, None)


def _fsdp1() -> type | None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return None
    return FullyShardedDataParallel


__all__ = ["WRAP_KINDS", "explain_fsdp1_error", "mixed_units", "segment_match", "shard_modules",
           "wrap"]
