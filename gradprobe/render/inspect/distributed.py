"""The merged report of ``inspect`` under torchrun: rank 0's report plus what differs by rank.

JSON (``gradprobe.inspect/1``, fields only added): ``world_size``; ``distributed`` (backend, wrapper, units);
per parameter ``global_shape`` and ``ranks[]`` (local shape, placement, gradient state and norm, the local
gradient before any reduction); ``memory.per_rank[]`` with ``per_rank_min``/``per_rank_max``; per buffer
``ranks[]`` (changed, and whether its values after the forward match rank 0's).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from gradprobe.facts.distributed import NO_SHARD, DistFacts, DistInspectReport, RankMemory, RankParam, UnitFact
from gradprobe.judges.distributed.text import shard_text
from gradprobe.render.common import findings_table, light_table, md_table, titled
from gradprobe.render.inspect.json_out import inspect_json
from gradprobe.render.inspect.markdown import inspect_markdown
from gradprobe.render.inspect.table import render_inspect
from gradprobe.units import human_bytes, shape_text

MEMORY_FIELDS = ("forward_peak_bytes", "backward_peak_bytes", "saved_for_backward_bytes", "parameter_bytes",
                 "gradient_bytes")
MEMORY_LABELS = ("forward peak", "backward peak", "saved for backward", "parameters (local)", "gradients (local)")
PER_RANK_COLUMNS = 4  # above this many ranks the parameter table summarises instead of one column per rank
GRAD_STYLE = {"none": "red", "zero": "yellow", "nonzero": "green", "present": "green"}  # as the inspect table


# small helpers of the inspect renderers, kept here so that their refactoring does not break this module


def _num(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else str(x)


def _limit(rows: list[Any], top: int | None) -> tuple[list[Any], int]:
    if top is None or top <= 0 or len(rows) <= top:
        return rows, 0
    return rows[:top], len(rows) - top


def _match(name: str, pattern: str | None) -> bool:
    return pattern is None or fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


# --------------------------------------------------------------------------- JSON


def rank_param_json(rank: int, p: RankParam) -> dict[str, Any]:
    return {
        "rank": rank, "local_shape": list(p.local_shape), "placement": p.placement, "requires_grad": p.requires_grad,
        "grad": p.grad, "grad_norm": _num(p.grad_norm), "local_grad": p.local_grad,
        "local_grad_norm": _num(p.local_grad_norm), "local_bytes": p.local_bytes, "unit": p.unit,
        "values_zero": p.values_zero,  # FSDP, trainable: this rank's shard holds only zeros (null: not read)
    }


def memory_min_max(rows: Sequence[RankMemory]) -> tuple[dict[str, int | None], dict[str, int | None]]:
    lows: dict[str, int | None] = {}
    highs: dict[str, int | None] = {}
    for key in (*MEMORY_FIELDS, "cuda_max_allocated_bytes"):
        values = [v for m in rows if (v := m.values()[key]) is not None]
        lows[key] = min(values) if values else None
        highs[key] = max(values) if values else None
    return lows, highs


def unit_json(u: UnitFact) -> dict[str, Any]:
    return {
        "name": u.name, "frozen": list(u.frozen), "trainable": list(u.trainable), "mixed": u.mixed,
        "frozen_bytes": u.frozen_bytes, "trainable_bytes": u.trainable_bytes,
        "all_gather_forward_bytes": u.all_gather_forward_bytes,
        "all_gather_backward_bytes": u.all_gather_backward_bytes, "reduce_scatter_bytes": u.reduce_scatter_bytes,
        "gradient_bytes": u.gradient_bytes, "frozen_gradient_bytes": u.frozen_gradient_bytes,
        "flat_gradient_bytes": u.flat_gradient_bytes,
    }


def distributed_json(dist: DistFacts) -> dict[str, Any]:
    w = dist.wrapper
    return {
        "world_size": dist.world_size, "backend": dist.backend, "process_group_created_by": dist.group_owner,
        "inputs_per_rank": dist.inputs_per_rank,
        "wrapper": {
            "kind": w.kind, "source": w.source, "find_unused_parameters": w.find_unused_parameters,
            "broadcast_buffers": w.broadcast_buffers, "static_graph": w.static_graph,
            "use_orig_params": w.use_orig_params, "sync_batchnorm": list(w.sync_batchnorm),
        },
        "ranks": [{"rank": r.rank, "host": r.host, "second_iteration_ran": r.second_iteration_ran,
                   "second_iteration_error": r.second_iteration_error,
                   "units": [unit_json(u) for u in r.units]} for r in dist.ranks],
        "registration_order": {str(r.rank): [p.name for p in r.params] for r in dist.ranks},
    }


def dist_inspect_json(dr: DistInspectReport) -> dict[str, Any]:
    """The ``gradprobe.inspect/1`` document of a distributed run: every existing field, plus the per-rank ones."""
    doc = inspect_json(dr.report)
    dist = dr.dist
    doc["world_size"] = dist.world_size
    doc["distributed"] = distributed_json(dist)
    per = dist.per_param()
    for entry in doc["parameters"]:
        ranks = per.get(entry["name"], [])
        held = [p for p in ranks if p is not None]
        entry["global_shape"] = list(held[0].global_shape) if held else entry["shape"]
        entry["ranks"] = [rank_param_json(r.rank, p) for r, p in zip(dist.ranks, ranks, strict=True) if p is not None]
    buffers = dist.per_buffer()
    for entry in doc["buffers"]:
        ranks = buffers.get(entry["name"], [])
        base = next((b.digest for b in ranks if b is not None), None)
        entry["ranks"] = [{"rank": r.rank, "changed": b.changed,
                           "same_as_rank0": None if b.digest is None or base is None else b.digest == base}
                          for r, b in zip(dist.ranks, ranks, strict=True) if b is not None]
    memory = [r.memory for r in dist.ranks if r.memory is not None]
    if doc.get("memory") is not None and memory:
        lows, highs = memory_min_max(memory)
        doc["memory"]["per_rank"] = [{"rank": m.rank, **m.values()} for m in memory]
        doc["memory"]["per_rank_min"] = lows
        doc["memory"]["per_rank_max"] = highs
    return doc


# --------------------------------------------------------------------------- rich


def _grad_cell(p: RankParam | None) -> Text:
    if p is None:
        return Text("absent", style="red")
    if p.grad == NO_SHARD:
        return Text("no shard here", style="dim")
    state = str(p.grad) if p.grad is not None else "-"
    text = Text(state, style=GRAD_STYLE.get(state, ""))
    if p.grad == "nonzero" and p.grad_norm is not None:
        text.append(f" ‖{p.grad_norm:.3g}‖")
    if p.local_grad is False and p.grad != "none":
        text.append(" (none locally)", style="yellow")
    if p.placement != "replicated":
        text.append(f"\n{shard_text(p)}", style="dim")
    return text


def per_rank_table(dist: DistFacts, top: int | None, pattern: str | None) -> RenderableType:
    per = dist.per_param()
    rows = [(name, ranks) for name, ranks in per.items() if _match(name, pattern)]
    shown, hidden = _limit(rows, top)
    t = light_table()
    t.add_column("name", overflow="fold", ratio=1, min_width=16)
    t.add_column("global shape", no_wrap=True)
    wide = len(dist.ranks) <= PER_RANK_COLUMNS
    if wide:
        for r in dist.ranks:
            t.add_column(f"rank {r.rank}", overflow="fold")
    else:
        t.add_column("gradient by rank", overflow="fold")
    for name, ranks in shown:
        held = [p for p in ranks if p is not None]
        shape = shape_text(held[0].global_shape) if held else "-"
        if wide:
            t.add_row(name, shape, *[_grad_cell(p) for p in ranks])
        else:
            counts: dict[str, list[int]] = {}
            for r, p in zip(dist.ranks, ranks, strict=True):
                key = "absent" if p is None else ("no shard here" if p.grad == NO_SHARD else (p.grad or "-"))
                counts.setdefault(key, []).append(r.rank)
            t.add_row(name, shape, ", ".join(f"{k} on {len(v)}" + (f" ({', '.join(map(str, v[:6]))})"
                                                                    if len(counts) > 1 else "")
                                              for k, v in counts.items()))
    w = dist.wrapper
    title = (f"Parameters by rank ({dist.world_size} ranks, {dist.backend}, wrapper: {w.kind}"
             f"{' via --wrap' if w.source == '--wrap' else ''})")
    caption = "gradient held by each rank after the step's reductions (sharded: its shard)"
    if hidden:
        caption += f"; {hidden} more rows (--top to change, --format json for all)"
    return titled(title, t, caption)


def per_rank_memory_table(dist: DistFacts) -> RenderableType | None:
    memory = [r.memory for r in dist.ranks if r.memory is not None]
    if not memory:
        return None
    t = light_table()
    t.add_column("rank", no_wrap=True)
    for label in MEMORY_LABELS:
        t.add_column(label, justify="right", no_wrap=True)
    for m in memory:
        t.add_row(str(m.rank), *[human_bytes(m.values()[k]) for k in MEMORY_FIELDS])
    if len(memory) > 1:
        lows, highs = memory_min_max(memory)
        t.add_row(Text("min", style="bold"), *[human_bytes(lows[k]) for k in MEMORY_FIELDS])
        t.add_row(Text("max", style="bold"), *[human_bytes(highs[k]) for k in MEMORY_FIELDS])
    return titled("Memory by rank (tensor bytes each rank measured; parameters and gradients as held locally)", t)


def units_table(dist: DistFacts) -> RenderableType | None:
    units = dist.ranks[0].units if dist.ranks else ()
    if not units:
        return None
    fsdp1 = dist.wrapper.kind == "fsdp1"  # FSDP1: flat gradients measured; FSDP2: the collectives
    t = light_table()
    t.add_column("unit", overflow="fold", ratio=1, min_width=12)
    t.add_column("frozen/trainable", no_wrap=True)
    t.add_column("mixed", no_wrap=True)
    columns = (("flat gradient", "flat_gradient_bytes"), ("of it for frozen", "frozen_gradient_bytes")) if fsdp1 \
        else (("all-gather fwd", "all_gather_forward_bytes"), ("all-gather bwd", "all_gather_backward_bytes"),
              ("reduce-scatter", "reduce_scatter_bytes"))
    for label, _ in columns:
        t.add_column(label, justify="right", no_wrap=True)
    for u in units:
        mixed = Text("yes", style="yellow") if u.mixed else Text("no", style="dim")
        t.add_row(u.name or "(root)", f"{len(u.frozen)}/{len(u.trainable)}", mixed,
                  *[human_bytes(getattr(u, key)) for _, key in columns])
    return titled(f"FSDP units (measured on rank {dist.ranks[0].rank})", t)


def render_dist_inspect(dr: DistInspectReport, console: Console, *, top: int | None = 40,
                        pattern: str | None = None) -> None:
    """The standard inspect report on merged facts, the per-rank sections, then every finding."""
    render_inspect(dr.report, console, top=top, pattern=pattern,
                   sections={"summary", "parameters", "buffers", "tensors", "graph", "memory"})
    parts: list[RenderableType] = [per_rank_table(dr.dist, top, pattern)]
    for extra in (per_rank_memory_table(dr.dist), units_table(dr.dist)):
        if extra is not None:
            parts.append(extra)
    console.print(Group(*parts))
    console.print(findings_table(dr.report.findings, top))


# --------------------------------------------------------------------------- Markdown


def dist_inspect_markdown(dr: DistInspectReport, top: int | None = 40) -> str:
    dist = dr.dist
    out = [inspect_markdown(dr.report, top).rstrip("\n"), "", f"### Ranks ({dist.world_size}, {dist.backend}, "
                                                             f"wrapper: {dist.wrapper.kind})", ""]
    rows = []
    for name, ranks in list(dist.per_param().items())[: top or None]:
        cells = []
        for p in ranks:
            if p is None:
                cells.append("absent")
            elif p.grad == NO_SHARD:
                cells.append("no shard here")
            else:
                cells.append((p.grad or "-") + (f" ‖{p.grad_norm:.3g}‖" if p.grad_norm else ""))
        held = next((p for p in ranks if p is not None), None)
        rows.append((f"`{name}`", shape_text(held.global_shape) if held else "-", *cells))
    out.append(md_table(["name", "global shape", *[f"rank {r.rank}" for r in dist.ranks]], rows))
    memory = [r.memory for r in dist.ranks if r.memory is not None]
    if memory:
        lows, highs = memory_min_max(memory)
        mrows = [(str(m.rank), *[human_bytes(m.values()[k]) for k in MEMORY_FIELDS]) for m in memory]
        if len(memory) > 1:
            mrows += [("min", *[human_bytes(lows[k]) for k in MEMORY_FIELDS]),
                      ("max", *[human_bytes(highs[k]) for k in MEMORY_FIELDS])]
        out += ["", md_table(["rank", *MEMORY_LABELS], mrows)]
    return "\n".join(out) + "\n"
