"""``gradprobe inspect --format html`` under torchrun: the single-process page on rank 0's merged report, plus
what differs by rank — the run's distributed setup, memory by rank (min/max), the parameters' gradients on
every rank (local shards, gradients before the reduction) and the FSDP units.  The cross-rank findings are in
the findings section with the others."""

from __future__ import annotations

from html import escape

from gradprobe.facts.distributed import NO_SHARD, DistFacts, DistInspectReport, RankParam
from gradprobe.judges.distributed.text import shard_text
from gradprobe.render.html.inspect import inspect_html
from gradprobe.render.html.page import Cell, Section, cell, key_values, table
from gradprobe.render.inspect.distributed import MEMORY_FIELDS, MEMORY_LABELS, memory_min_max
from gradprobe.units import human_bytes, shape_text

PER_RANK_COLUMNS = 8  # above this many ranks the parameter table gives one summary cell per parameter
GRAD_PILL = {"none": "unused", "zero": "frozen", "nonzero": "trainable", "present": "trainable"}


def _setup(dist: DistFacts) -> str:
    w = dist.wrapper
    options = [f"{name}={value}" for name, value in (
        ("find_unused_parameters", w.find_unused_parameters), ("broadcast_buffers", w.broadcast_buffers),
        ("static_graph", w.static_graph), ("use_orig_params", w.use_orig_params)) if value is not None]
    owner = "created by gradprobe" if dist.group_owner == "gradprobe" else "created by the target"
    pairs = [("world size", str(dist.world_size)), ("process group", f"{dist.backend} ({owner})"),
             ("wrapper", f"{w.kind}{' (--wrap)' if w.source == '--wrap' else ''}"
                         + (f" · {', '.join(options)}" if options else "")),
             ("hosts", ", ".join(sorted({r.host for r in dist.ranks})))]
    if w.sync_batchnorm:
        pairs.append(("SyncBatchNorm", ", ".join(w.sync_batchnorm)))
    if dist.inputs_per_rank:
        pairs.append(("inputs", "drawn per rank (seed + rank), as a data-parallel loader gives each rank its batch"))
    for r in dist.ranks:
        if r.second_iteration_ran:
            pairs.append((f"rank {r.rank}: second iteration", r.second_iteration_error or "ran without error"))
    return key_values(pairs)


def _memory(dist: DistFacts) -> str:
    memory = [r.memory for r in dist.ranks if r.memory is not None]
    if not memory:
        return '<p class="muted">No memory figures (run without --no-memory).</p>'
    rows = [[cell(str(m.rank), m.rank, "num")] + [_bytes(m.values()[k]) for k in MEMORY_FIELDS] for m in memory]
    if len(memory) > 1:
        lows, highs = memory_min_max(memory)
        rows.append([cell("min", None, "num")] + [_bytes(lows[k]) for k in MEMORY_FIELDS])
        rows.append([cell("max", None, "num")] + [_bytes(highs[k]) for k in MEMORY_FIELDS])
    return ('<p class="muted small">Tensor bytes each rank measured in its own run; parameters and gradients as '
            'each rank holds them (its shards under FSDP).</p>'
            + table("rank-memory", [("rank", "num"), *[(label, "num") for label in MEMORY_LABELS]], rows,
                    filter_=False))


def _bytes(value: int | None) -> Cell:
    return cell(human_bytes(value), value if value is not None else -1, "num")


def _grad_html(p: RankParam | None) -> str:
    if p is None:
        return '<span class="pill unused">absent</span>'
    if p.grad == NO_SHARD:
        return '<span class="muted">no shard here</span>'
    state = str(p.grad) if p.grad is not None else "-"
    out = f'<span class="pill {GRAD_PILL.get(state, "")}">{escape(state)}</span>'
    if p.grad == "nonzero" and p.grad_norm is not None:
        out += f" ‖{p.grad_norm:.4g}‖"
    if p.local_grad is False and p.grad != "none":
        out += ' <span class="pill warning">none locally</span>'
    elif p.local_grad and p.local_grad_norm is not None:
        out += f' <span class="muted small">local ‖{p.local_grad_norm:.4g}‖</span>'
    if p.placement != "replicated":
        out += f'<div class="muted small">{escape(shard_text(p))}</div>'
    return out


def _parameters(dist: DistFacts) -> str:
    wide = len(dist.ranks) <= PER_RANK_COLUMNS
    rows = []
    for name, ranks in dist.per_param().items():
        held = [p for p in ranks if p is not None]
        numel = 1
        for d in held[0].global_shape if held else ():
            numel *= d
        row = [cell(name, None, "mono"), cell(shape_text(held[0].global_shape) if held else "-", numel, "mono"),
               cell("yes" if held and held[0].requires_grad else "no")]
        if wide:
            row += [cell(_grad_html(p), None, "", html=True) for p in ranks]
        else:
            counts: dict[str, list[int]] = {}
            for r, p in zip(dist.ranks, ranks, strict=True):
                key = "absent" if p is None else ("no shard here" if p.grad == NO_SHARD else (p.grad or "-"))
                counts.setdefault(key, []).append(r.rank)
            row.append(cell("; ".join(f"{k} on {len(v)} rank(s)" + (f" ({', '.join(map(str, v[:8]))})"
                                                                   if len(counts) > 1 else "")
                                      for k, v in counts.items())))
        rows.append(row)
    header: list[str | tuple[str, str]] = ["name", "global shape", "requires_grad"]
    header += [f"rank {r.rank}" for r in dist.ranks] if wide else ["gradient by rank"]
    return ('<p class="muted small">The gradient each rank holds after the step\'s reductions (sharded: its shard), '
            'with the norm of the local gradient autograd computed on that rank before any reduction.</p>'
            + table("rank-params", header, rows, placeholder="filter parameters…"))


def _units(dist: DistFacts) -> str:
    units = dist.ranks[0].units if dist.ranks else ()
    fsdp1 = dist.wrapper.kind == "fsdp1"
    columns = (("flat gradient", "flat_gradient_bytes"), ("of it for frozen", "frozen_gradient_bytes")) if fsdp1 \
        else (("all-gather fwd", "all_gather_forward_bytes"), ("all-gather bwd", "all_gather_backward_bytes"),
              ("reduce-scatter", "reduce_scatter_bytes"))
    rows = [[cell(u.name or "(root)", None, "mono"), cell(f"{len(u.frozen)}/{len(u.trainable)}"),
             cell('<span class="pill warning">mixed</span>' if u.mixed else '<span class="muted">no</span>',
                  None, "", html=True),
             *[_bytes(getattr(u, key)) for _, key in columns]] for u in units]
    return (f'<p class="muted small">Measured on rank {dist.ranks[0].rank}.</p>'
            + table("units", ["unit", "frozen/trainable", "mixes frozen and trainable",
                              *[(label, "num") for label, _ in columns]], rows, placeholder="filter units…"))


def dist_sections(dist: DistFacts) -> list[Section]:
    """The per-rank sections of the page."""
    sections = [Section("distributed", f"Distributed ({dist.world_size} ranks)", _setup(dist)),
                Section("rank-memory", "Memory by rank", _memory(dist)),
                Section("rank-params", "Parameters by rank", _parameters(dist))]
    if dist.ranks and dist.ranks[0].units:
        sections.append(Section("units", f"FSDP units ({len(dist.ranks[0].units)})", _units(dist)))
    return sections


def dist_inspect_html(dr: DistInspectReport, depth: int | None = None) -> str:
    """Rank 0's merged report as one self-contained page."""
    return inspect_html(dr.report, depth, extra=dist_sections(dr.dist))
