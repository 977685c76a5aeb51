"""Plain PyTorch under torchrun: each rank's facts as the tests' reference, then the real gradprobe CLI.

Usage (under torchrun): ``reference.py OUTDIR TARGET [--wrap K] [--shard GLOB] [--orig] [--shape DIMS]
[--steps 2] -- GRADPROBE_ARGS...``.  Every rank builds TARGET exactly as gradprobe does (seed 0 for the build,
seed 0 + rank for --shape inputs), runs one forward and backward with plain PyTorch (sum of the outputs),
records what it holds (parameter shards, gradients before and after the wrapper's reduction, buffers after the
forward, DDP's second-iteration error, FSDP bookkeeping, parameter/gradient bytes held; with --wrap also the
gradients of an unwrapped copy run alone on this rank, i.e. before any reduction) in OUTDIR/rank{R}.json,
and then runs ``gradprobe.cli.app.main(GRADPROBE_ARGS)`` in the same process: rank 0's report goes to stdout.
Nothing here uses gradprobe before that point.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def grad_state(g: torch.Tensor | None) -> tuple[str, float | None]:
    if g is None:
        return "none", None
    if hasattr(g, "to_local"):
        g = g.to_local()
    if g.numel() == 0 or not bool((g != 0).any()):
        return "zero", 0.0
    return "nonzero", float(g.double().norm())


def clean(name: str) -> str:
    return ".".join(p for p in name.split(".") if p != "_fsdp_wrapped_module")


def build(target: str, args: argparse.Namespace, rank: int) -> tuple[nn.Module, Any]:
    module_name, _, attr = target.partition(":")
    torch.manual_seed(0)
    obj = getattr(importlib.import_module(module_name), attr)
    model = obj() if not isinstance(obj, nn.Module) else obj
    inner = getattr(model, "module", model)
    x = getattr(inner, "example_input_array", None)
    if args.shape:
        torch.manual_seed(rank)
        x = torch.randn(*[int(d) for d in args.shape.split(",")])
    import fnmatch

    names = [n for n, _ in model.named_modules() if n and any(
        fnmatch.fnmatchcase(n, g) and n.count(".") == g.count(".") for g in args.shard)]
    mods = dict(model.named_modules())
    if args.wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif args.wrap == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for n in sorted(names, key=lambda n: -n.count(".")):
            fully_shard(mods[n])
        fully_shard(model)
    elif args.wrap == "fsdp1":
        from functools import partial

        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        units = {id(mods[n]) for n in names}
        policy = partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in units) if units else None
        model = FSDP(model, auto_wrap_policy=policy, use_orig_params=args.orig, device_id=torch.device("cpu"))
    return model, x


def plain_local(target: str, x: Any) -> dict[str, Any]:
    """The gradients this rank computes by itself: an unwrapped copy of the model (same seed), same input and loss,
    no collective.  What a wrapper's reduction starts from on this rank."""
    module_name, _, attr = target.partition(":")
    torch.manual_seed(0)
    obj = getattr(importlib.import_module(module_name), attr)
    model = obj() if not isinstance(obj, nn.Module) else obj
    model(x).sum().backward()
    out = {}
    for name, p in model.named_parameters():
        state, norm = grad_state(p.grad)
        out[name] = {"grad": state, "grad_norm": norm, "requires_grad": p.requires_grad}
    return out


def memory(model: nn.Module, facts: dict[str, Any]) -> dict[str, int]:
    """Parameter and gradient bytes as this rank holds them (DTensors: the local shard; FSDP1: the flat shards)."""
    if facts["fsdp1"].get("units"):
        held = sum(s["numel"] for s in facts["fsdp1"]["slices"].values()) * 4
        grads = sum(u["flat_grad_bytes"] or 0 for u in facts["fsdp1"]["units"].values())
        return {"parameter_bytes": held, "gradient_bytes": grads}
    params = grads = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        params += local.numel() * local.element_size()
        if p.grad is not None:
            g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            grads += g.numel() * g.element_size()
    return {"parameter_bytes": params, "gradient_bytes": grads}


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("target")
    parser.add_argument("--wrap")
    parser.add_argument("--shard", action="append", default=[])
    parser.add_argument("--orig", action="store_true")
    parser.add_argument("--shape")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args(argv[:split])
    gradprobe_args = argv[split + 1:]

    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    model, x = build(args.target, args, rank)
    facts: dict[str, Any] = {"rank": rank, "params": {}, "buffers": {}, "local_grads": {}}
    kind = "ddp" if isinstance(model, nn.parallel.DistributedDataParallel) else "other"
    inner = model.module if kind == "ddp" else model
    named = [(clean(n), p) for n, p in inner.named_parameters()]
    if kind == "ddp":  # gradients as autograd computed them on this rank, before DDP's all-reduce
        for name, p in named:
            if p.requires_grad:
                p.register_hook(lambda g, name=name: facts["local_grads"].__setitem__(name, float(g.double().norm())))
    out = model(x)
    for name, b in inner.named_buffers():
        facts["buffers"][clean(name)] = b.detach().double().flatten().tolist()
    out.sum().backward()
    for name, p in named:
        local = p.to_local() if hasattr(p, "to_local") else p
        state, norm = grad_state(p.grad)
        facts["params"][name] = {"local_shape": list(local.shape), "requires_grad": p.requires_grad,
                                 "grad": state, "grad_norm": norm, "global_shape": list(p.shape)}
    facts["fsdp1"] = fsdp1_facts(model)
    facts["fsdp2"] = fsdp2_facts(model)
    facts["memory"] = memory(model, facts)
    if args.wrap:
        facts["plain_local"] = plain_local(args.target, x)
    if kind == "ddp" and args.steps > 1:
        try:
            model(x)
            facts["second_error"] = None
        except RuntimeError as exc:
            facts["second_error"] = str(exc)
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(facts, default=lambda v: None if isinstance(
        v, float) and not math.isfinite(v) else v))
    dist.barrier()
    # the process group stays: re-creating one in the same torchrun job collides with the first one's store keys;
    # gradprobe finds it initialised and uses it (the report says "created by the target")
    del model, inner, out

    from gradprobe.cli.app import main as gradprobe_main

    sys.exit(gradprobe_main(gradprobe_args))


def fsdp1_facts(model: nn.Module) -> dict[str, Any]:
    """Per FSDP1 unit: the flat gradient's bytes on this rank, and the part of it that covers frozen parameters;
    per original parameter: the slice this rank holds (torch's own shard bookkeeping) and its gradient there."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:
        return {}
    out: dict[str, Any] = {"units": {}, "slices": {}}
    for name, m in model.named_modules():
        if not isinstance(m, FSDP) or m._handle is None:
            continue
        flat = m._handle.flat_param
        unit = clean(name)
        frozen = 0
        flags = [p.requires_grad for p in flat._params] if flat._params is not None else [flat.requires_grad] * len(
            flat._fqns)
        for fqn, info, trainable in zip(flat._fqns, flat._shard_param_infos, flags, strict=True):
            full = f"{unit}.{clean(fqn)}" if unit else clean(fqn)
            count = info.numel_in_shard if info.in_shard else 0
            piece = flat.grad[info.offset_in_shard:info.offset_in_shard + count] if (
                count and flat.grad is not None) else None
            out["slices"][full] = {"numel": count, "grad": grad_state(piece) if count else ("no-shard", None)}
            if not trainable and flat.grad is not None:
                frozen += count * flat.element_size()
        out["units"][unit] = {"flat_grad_bytes": flat.grad.numel() * flat.grad.element_size()
                              if flat.grad is not None else None, "frozen_grad_bytes": frozen}
    return out


def fsdp2_facts(model: nn.Module) -> dict[str, Any]:
    """Per FSDP2 unit: the bytes one all-gather of it moves into each rank (padded shards x world size)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return {}
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, FSDPModule):
            continue
        group = m._get_fsdp_state()._fsdp_param_group
        if group is None:
            continue
        per_rank = sum(fp.padded_sharded_param_size.numel() * fp.sharded_param.element_size()
                       for fp in group.fsdp_params)
        out[name] = {"all_gather_bytes": per_rank * dist.get_world_size(),
                     "params": [clean(n) for n, _ in m.named_parameters()]}
    return out


if __name__ == "__main__":
    main()
