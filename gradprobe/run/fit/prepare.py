"""Wrapping and materialising rank 0's model: FSDP2 units on meta, the local shards on the CPU (or fake tensors),
DDP in its steady state; and the checks that the target's own wrapping fits the simulated world."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, UsageError, describe_exception
from gradprobe.run.fit.spec import StepSpec


def check_mesh(model: nn.Module, world_size: int) -> None:
    """A device mesh the target built must span every rank (an HSDP mesh of 2 x 2 at 6 ranks leaves 2 out)."""
    from torch.distributed.fsdp import FSDPModule

    for name, m in model.named_modules():
        if not isinstance(m, FSDPModule):
            continue
        group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
        mesh = getattr(getattr(group, "mesh_info", None), "mesh", None)
        if mesh is not None and mesh.size() != world_size:
            shape = " x ".join(str(d) for d in mesh.shape)
            raise UsageError(f"the target's device mesh ({shape} = {mesh.size()} ranks, unit '{name or 'root'}') "
                             f"does not match --world-size {world_size}: choose a world size the mesh shape "
                             f"multiplies to")


def wrapped_kind(model: nn.Module) -> str | None:
    """"fsdp" for an FSDP2 root, "ddp" for DistributedDataParallel, None for a plain model (FSDP1: refused)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return "ddp"
    if type(model).__name__ == "FullyShardedDataParallel":
        raise UsageError("--world-size does not simulate FSDP1 (FullyShardedDataParallel): use FSDP2 "
                         "(fully_shard, --wrap fsdp) or DDP")
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return "fsdp"
    return None


def prepare_wrap(model: nn.Module, kind: str, spec: StepSpec) -> None:
    """Activation checkpointing of the chosen modules, and FSDP2 units for --wrap fsdp (on meta)."""
    modules = dict(model.named_modules())
    if spec.checkpoint:
        from torch.distributed._composable import checkpoint

        for name in spec.checkpoint:
            checkpoint(modules[name])
    if kind == "fsdp" and spec.wrap == "fsdp":
        fully_shard_units(model, spec.shard, spec.reshard_after_forward, spec.mixed_precision)
    elif kind == "fsdp":  # the target wrapped itself: its own policy stands, the reshard switch can be flipped
        if spec.mixed_precision is not None:
            raise UsageError("--mixed-precision sets the policy of --wrap fsdp; the target wraps itself with "
                             "fully_shard: pass mp_policy=MixedPrecisionPolicy(...) there (it is measured as is)")
        if spec.reshard_after_forward is not None:
            from torch.distributed.fsdp import FSDPModule

            for m in model.modules():  # True: FSDP2's default, the root keeps what it set; False: every unit
                if isinstance(m, FSDPModule) and (m is not model or not spec.reshard_after_forward):
                    m.set_reshard_after_forward(spec.reshard_after_forward, recurse=False)
    elif spec.reshard_after_forward is not None or spec.mixed_precision is not None:
        raise UsageError("--reshard-after-forward and --mixed-precision set FSDP2's fully_shard: use them with "
                         "--wrap fsdp or a target that applies fully_shard")
    if kind == "ddp" and spec.wrap is None:
        raise UsageError("--world-size measures a DDP model that --wrap ddp wraps (DDP allocates its buckets "
                         "when it is built): return the plain model and add --wrap ddp")


def materialise(model: nn.Module, kind: str, estimate: bool, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """The local shards on the CPU (fake tensors under the estimate); DDP wraps the materialised model.
    Returns the model to run and the bytes of DDP's gradient buckets.

    DDP's C++ reducer cannot hold fake tensors: the estimate runs the plain model (a DDP rank runs exactly
    that) and adds what DDP adds as the simulation and a real gloo run measure it (tests/dist): the buckets,
    one flat copy of the trainable parameters' bytes, and from the end of backward on one more gradient-sized
    copy (the reducer's result copied into ``.grad`` while autograd's gradients are still held)."""
    empty_shards(model, estimate)
    if kind != "ddp":
        return model, 0
    if estimate:
        return model, sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return ddp_wrap(model, args, kwargs, fake_group=True)


def ddp_wrap(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             fake_group: bool) -> tuple[nn.Module, int]:
    """DDP around the materialised model, in its steady state, and the bytes of its gradient buckets.

    One forward and backward run first, then the bucket rebuild DDP does at the start of its second iteration
    (buckets in the order gradients arrived): every later step costs what the measured one does.  The bucket
    bytes are DDP's own figures (its logging data, after the rebuild).  The fake group's all-reduce gives DDP no
    result to read back, so there a no-op communication hook stands in (an all-reduce works in place)."""
    from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook
    from torch.nn.parallel import DistributedDataParallel

    try:
        ddp = DistributedDataParallel(model)
        if fake_group:
            ddp.register_comm_hook(None, noop_hook)
        warm_up(ddp, args, kwargs)
        ddp.reducer._rebuild_buckets()
        sizes = str(ddp._get_ddp_logging_data().get("bucket_sizes", ""))
    except Exception as exc:
        raise RunError(f"--wrap ddp: DistributedDataParallel(model) raised {describe_exception(exc)}") from exc
    return ddp, sum(int(n) for n in sizes.replace(" ", "").split(",") if n.isdigit())


def fully_shard_units(model: nn.Module, shard: Sequence[str], reshard: bool | None = None,
                      mixed_precision: tuple[str, str | None] | None = None) -> None:
    """FSDP2 units on the modules ``shard`` selects and the root, as ``--wrap fsdp`` makes them."""
    from gradprobe.run.distributed.wrap import fully_shard_model, shard_modules

    fully_shard_model(model, shard_modules(model, shard), reshard, mixed_precision)


def empty_shards(model: nn.Module, estimate: bool) -> None:
    """``to_empty`` allocates only what this rank holds; values are drawn (parameters) or zeroed (buffers) so
    every op runs (indices stay in range), never read for anything but shapes."""
    try:
        model.to_empty(device="cpu")
    except Exception as exc:
        raise RunError(f"materialising the local shards (to_empty) raised {describe_exception(exc)}") from exc
    if estimate:
        return
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.is_floating_point():
                local.normal_(0.0, 0.02)
        for b in model.buffers():
            local = b.to_local() if hasattr(b, "to_local") else b
            local.zero_()


def warm_up(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """One forward and backward before the measured step: DDP rebuilds its buckets in the order gradients
    arrived at the start of its second iteration, and the steady state is what every later step costs."""
    from gradprobe.run.flatten import flatten_tensors
    from gradprobe.run.loss import sum_loss

    value = sum_loss(flatten_tensors(model(*args, **kwargs)), "sum")
    if value is not None:
        value.backward()
    model.zero_grad(set_to_none=True)
