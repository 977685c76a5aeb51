"""``gradprobe inspect TARGET --wrap fsdp|ddp --world-size N[,N...] [--budget 80GiB] [--device meta]``.

Will it fit on N GPUs?  Rank 0 of an N-rank job runs one training step in this process through torch's fake
process group (gradprobe.run.fit.step): simulated with the local shards allocated on the CPU, or, with
``--device meta``, estimated under a fake-tensor mode that allocates nothing.  With a budget, each lever that
could make the peak fit is measured by running the step again with it (gradprobe.judges.budget picks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from gradprobe.errors import UsageError
from gradprobe.facts.fit import FitReport, Lever, RankFit
from gradprobe.judges.budget import judged_row, parse_budget, verdict
from gradprobe.run.fit.spec import WRAPPERS, StepSpec, parse_mixed_precision
from gradprobe.run.fit.step import run_step
from gradprobe.units import human_bytes

MAX_DOUBLINGS = 3  # the world-size lever tries 2N, 4N, 8N


def parse_world_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """``8,16,64`` → (8, 16, 64)."""
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        try:
            values = [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--world-size '{text}': use one or more positive numbers of ranks, e.g. 8 or 8,16,64")
    return tuple(dict.fromkeys(values))


def fit(target: str, *, world_sizes: str | Sequence[int], wrap: str | None = None, shard: Iterable[str] = (),
        optimizer: str = "adam", device: str | None = None, budget: str | int | None = None,
        init: str | dict[str, Any] | None = None, inputs: str | None = None, shapes: list[str] | None = None,
        dtype: str = "float32", high: int | None = None, seed: int | None = 0,
        path: Iterable[str | os.PathLike[str]] = (), loss: Any = None, reshard_after_forward: bool | None = None,
        mixed_precision: str | tuple[str, str | None] | None = None) -> FitReport:
    """Rank 0's memory per world size, and (with ``budget``) the verdict and the levers, measured.

    ``reshard_after_forward``: None keeps FSDP2's default with --wrap fsdp (every unit but the root frees its
    unsharded parameters after its forward) and the target's own choice otherwise; True sets FSDP2's default on
    every unit but the root, False keeps every unit's unsharded parameters from forward to backward.
    ``mixed_precision``: FSDP2's MixedPrecisionPolicy for --wrap fsdp, ``"bf16"`` or ``"bf16,fp32"``
    (param_dtype[,reduce_dtype]) or a (param, reduce) pair of dtype names."""
    sizes = parse_world_sizes(world_sizes)
    policy = parse_mixed_precision(mixed_precision) if isinstance(mixed_precision, str) else mixed_precision
    limit = parse_budget(budget) if isinstance(budget, str) else budget
    if wrap is not None and wrap not in WRAPPERS:
        raise UsageError(f"--wrap {wrap} with --world-size: use fsdp (FSDP2 fully_shard) or ddp; FSDP1 is not "
                         f"simulated")
    if device not in (None, "cpu", "meta"):
        raise UsageError(f"--device {device} with --world-size: use cpu (simulate the local shards) or meta "
                         f"(estimate, nothing allocated)")
    path = [str(p) for p in path]
    _refuse_instance(target, path)
    spec = StepSpec(wrap=wrap, shard=tuple(shard), optimizer=optimizer, estimate=device == "meta",
                    reshard_after_forward=reshard_after_forward, mixed_precision=policy)

    built: list[tuple[Any, Any, Any]] = []

    def loader() -> tuple[Any, Any, Any]:
        import copy

        from gradprobe.api import _loss, load
        from gradprobe.load.hf import is_hf_folder

        if built:  # a Hugging Face folder's meta build, the same at every world size: copied, not rebuilt
            model, example, loss_spec = built[0]
            return copy.deepcopy(model), copy.deepcopy(example), loss_spec
        loaded, example = load(target, init=init, device="meta", inputs=inputs, shapes=shapes, dtype=dtype,
                               high=high, seed=seed, path=path, keep_distributed=True)
        out = (loaded.model, example, _loss(loss, loaded))
        if is_hf_folder(target):  # built from its config alone; a factory may read the process group, so not it
            built.append((copy.deepcopy(out[0]), copy.deepcopy(example), out[2]))
        return out

    rows = tuple(run_step(loader, n, spec) for n in sizes)
    notes = [_method_note(spec)]
    if limit is None:
        return FitReport(target, rows, optimizer, None, tuple(notes))
    row = judged_row(rows, limit)
    levers = () if row.peak <= limit else _levers(loader, row, spec, limit)
    return FitReport(target, rows, optimizer, verdict(row, limit, levers), tuple(notes))


def _method_note(spec: StepSpec) -> str:
    how = ("estimated: the step ran under torch's FakeTensorMode (nothing allocated)" if spec.estimate else
           "simulated: the local shards were allocated on the CPU")
    return (f"rank 0 of each world size, through torch's fake process group in this one process; {how}; bytes "
            f"counted by torch's FSDPMemTracker/MemTracker categories (tensor storages, not allocator caching "
            f"or kernel workspaces); the optimizer state exists before the step, as in every step after the first")


def _refuse_instance(target: str, path: list[str]) -> None:
    """A module instance would be wrapped in place: --world-size builds the model afresh for every run."""
    if ":" not in target:
        return
    from torch import nn

    from gradprobe.load.user_code import load_object, search_paths

    with search_paths(path):
        try:
            obj = load_object(target, "TARGET")
        except Exception:
            return
    if isinstance(obj, nn.Module):
        raise UsageError(f"--world-size builds the model again for every world size and lever, but '{target}' is a "
                         f"module instance: name its class or a factory function instead")


def _levers(loader: Any, row: RankFit, spec: StepSpec, limit: int) -> tuple[Lever, ...]:
    """Every lever, each measured by a run of the step with it (reruns only as many as needed)."""
    return (_reshard_lever(loader, row, spec, limit), _checkpoint_lever(loader, row, spec, limit),
            _world_size_lever(loader, row, spec, limit), _batch_lever(loader, row, spec, limit))


def _reshard_lever(loader: Any, row: RankFit, spec: StepSpec, limit: int) -> Lever:
    """reshard_after_forward=True on the non-root units (FSDP2's default), measured by running the step with it
    (on a self-wrapping target through FSDPModule.set_reshard_after_forward)."""
    text = "reshard_after_forward=True"
    if row.wrapper != "fsdp":
        return Lever("reshard_after_forward", text, None, False, "not an FSDP model")
    if row.reshard_after_forward is not False:
        return Lever("reshard_after_forward", text, None, False,
                     "already on (FSDP2's default): each unit frees its unsharded parameters after its forward")
    try:
        again = run_step(loader, row.world_size, replace(spec, reshard_after_forward=True))
    except Exception as exc:
        return Lever("reshard_after_forward", text, None, False, f"could not run: {exc}")
    return Lever("reshard_after_forward", f"{text} (--reshard-after-forward)", again.peak, again.peak <= limit,
                 f"{_change(row.peak, again.peak)}; each unit all-gathers again in backward")


def _checkpoint_lever(loader: Any, row: RankFit, spec: StepSpec, limit: int) -> Lever:
    from gradprobe.run.fit.levers import checkpoint_units

    model, _, _ = loader_outside_group(loader, row.world_size)
    units = checkpoint_units(model, row.units)
    if not units:
        return Lever("checkpoint", "activation checkpointing", None, False,
                     "no repeated blocks found to checkpoint")
    shown = _glob_text(units)
    try:
        again = run_step(loader, row.world_size, replace(spec, checkpoint=units))
    except Exception as exc:
        return Lever("checkpoint", f"activation checkpointing of {shown}", None, False, f"could not run: {exc}")
    return Lever("checkpoint", f"activation checkpointing of {shown} ({len(units)} module(s))", again.peak,
                 again.peak <= limit, _change(row.peak, again.peak))


def loader_outside_group(loader: Any, world_size: int) -> tuple[Any, Any, Any]:
    """A fresh build of the model on meta (under a fake group, as the runs build it: a factory may wrap)."""
    from gradprobe.run.fit.group import fake_group

    with fake_group(world_size):
        return loader()


def _world_size_lever(loader: Any, row: RankFit, spec: StepSpec, limit: int) -> Lever:
    if row.wrapper == "ddp":
        return Lever("world_size", "more ranks", None, False,
                     "DDP replicates the model: more ranks do not lower the per-rank peak")
    n, peak = row.world_size, row.peak
    for _ in range(MAX_DOUBLINGS):
        n *= 2
        peak = run_step(loader, n, spec).peak
        if peak <= limit:
            return Lever("world_size", f"--world-size {n}", peak, True)
    return Lever("world_size", f"--world-size {n}", peak, False, f"tried up to {n} ranks")


def _batch_lever(loader: Any, row: RankFit, spec: StepSpec, limit: int) -> Lever:
    batch = row.local_batch
    if batch is None or batch < 2:
        return Lever("batch", "a smaller local batch", None, False, f"the local batch is {batch or 'unknown'}")
    peak = row.peak
    while batch > 1:
        batch //= 2
        peak = run_step(loader, row.world_size, replace(spec, batch=batch)).peak
        if peak <= limit:
            return Lever("batch", f"local batch {batch} (from {row.local_batch})", peak, True,
                         "keep the global batch with gradient accumulation")
    return Lever("batch", "local batch 1", peak, False)


def _change(before: int, after: int) -> str:
    """What a lever does to the measured peak, in words."""
    if after <= before:
        return f"saves {human_bytes(before - after)} per rank"
    return f"raises the peak by {human_bytes(after - before)} per rank"


def _glob_text(units: Sequence[str]) -> str:
    """``layers.0 … layers.3`` → ``layers.*`` when they share a parent."""
    parents = {u.rpartition(".")[0] for u in units}
    if len(parents) == 1 and all(u.rpartition(".")[2].isdigit() for u in units):
        parent = parents.pop()
        return f"{parent}.*" if parent else "*"
    return ", ".join(units[:4]) + (" ..." if len(units) > 4 else "")


__all__ = ["fit", "parse_world_sizes"]
