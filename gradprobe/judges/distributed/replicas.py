"""Findings where the ranks disagree about the model: registered parameters, shapes, freezes, gradients, initial
values, buffers after the forward."""

from __future__ import annotations

from gradprobe.facts.distributed import DistFacts, RankParam, WrapperInfo
from gradprobe.facts.run import Finding
from gradprobe.judges.distributed.text import names_text, ranks_text, subject


def params_differ(dist: DistFacts) -> list[Finding]:
    if len(dist.ranks) < 2:
        return []
    orders = {r.rank: [p.name for p in r.params] for r in dist.ranks}
    reference = orders[dist.ranks[0].rank]
    out = []
    all_names = {n for names in orders.values() for n in names}
    missing: dict[str, list[int]] = {}
    for name in sorted(all_names):
        lacking = [rank for rank, names in orders.items() if name not in names]
        if lacking:
            missing[name] = lacking
    if missing:
        groups: dict[tuple[int, ...], list[str]] = {}
        for name, lacking in missing.items():
            groups.setdefault(tuple(lacking), []).append(name)
        for lacking, names in groups.items():
            out.append(Finding(
                "dist-params-differ", "error", subject(names),
                f"{names_text(names)} exist{'s' if len(names) == 1 else ''} on "
                f"{ranks_text([r for r in orders if r not in lacking])} but not on {ranks_text(lacking)}: "
                f"the ranks build different models (rank-dependent construction); DDP refuses them at construction, "
                f"FSDP shards mismatching parameter lists",
                "build the same model on every rank; make rank-specific behaviour a forward-time choice"))
        return out
    differing = [rank for rank, names in orders.items() if names != reference]
    if differing:
        first = next(i for i, (a, b) in enumerate(zip(reference, orders[differing[0]], strict=False)) if a != b)
        out.append(Finding(
            "dist-params-differ", "error", reference[first],
            f"the parameters are registered in a different order on {ranks_text(differing)} than on rank "
            f"{dist.ranks[0].rank} (first difference at position {first}: '{reference[first]}' versus "
            f"'{orders[differing[0]][first]}'): DDP buckets and FSDP flattens parameters in registration order, so "
            f"gradients are reduced into the wrong parameters or the collectives mismatch",
            "register submodules in a fixed order (no iteration over sets or rank-dependent dicts in __init__)"))
    return out


def shape_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    out = []
    for name, ranks in per.items():
        shapes: dict[tuple[int, ...], list[int]] = {}
        for r, p in zip(dist.ranks, ranks, strict=True):
            if p is not None:
                shapes.setdefault(p.global_shape, []).append(r.rank)
        if len(shapes) > 1:
            parts = ", ".join(f"{'×'.join(map(str, s)) or 'scalar'} on {ranks_text(rs)}" for s, rs in shapes.items())
            out.append(Finding("dist-shape-differs", "error", name,
                               f"its shape differs across ranks: {parts}; the replicas are different models",
                               "derive sizes from configuration, not from rank-local data"))
    return out


def requires_grad_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for name, ranks in per.items():
        on = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True) if p is not None and p.requires_grad)
        off = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True) if p is not None and not p.requires_grad)
        if on and off:
            groups.setdefault((on, off), []).append(name)
    out = []
    for (on, off), names in groups.items():
        out.append(Finding(
            "dist-requires-grad-differs", "error", subject(names),
            f"{names_text(names)} require{'s' if len(names) == 1 else ''} grad on {ranks_text(on)} but not on "
            f"{ranks_text(off)}: the ranks freeze differently; DDP's reducer expects gradients that never come "
            f"(hang), and the trainable ranks drift from the frozen ones",
            "apply the same freeze on every rank before wrapping (not under `if rank == 0`)"))
    return out


def replicas_mismatch(per_rank: list[list[tuple[str, bool, tuple[int, ...]]]]) -> str | None:
    """Why DDP refused the replicas at construction, from every rank's (name, requires_grad, shape) in registration
    order: parameters missing on some ranks, shapes, then freezes that differ (DDP compares only the parameters
    that require grad, so a rank-dependent freeze is refused as a different model). None: nothing differs."""
    found: list[str] = []
    per = [{name: (rg, shape) for name, rg, shape in params} for params in per_rank]
    names = list(dict.fromkeys(name for params in per_rank for name, _, _ in params))
    missing = [n for n in names if any(n not in p for p in per)]
    if missing:
        lacking = [r for r, p in enumerate(per) if any(n not in p for n in missing)]
        found.append(f"{names_text(missing)} do not exist on {ranks_text(lacking)}: the ranks build different "
                     f"models")
    shaped = [n for n in names if len({p[n][1] for p in per if n in p}) > 1]
    if shaped:
        found.append(f"{names_text(shaped)} differ in shape across ranks")
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for n in names:
        on = tuple(r for r, p in enumerate(per) if n in p and p[n][0])
        off = tuple(r for r, p in enumerate(per) if n in p and not p[n][0])
        if on and off:
            groups.setdefault((on, off), []).append(n)
    for (on, off), group in groups.items():
        found.append(f"{names_text(group)} require{'s' if len(group) == 1 else ''} grad on {ranks_text(on)} but "
                     f"not on {ranks_text(off)}: the ranks freeze differently (dist-requires-grad-differs)")
    return "; ".join(found) or None


def _find_unused_hint(w: WrapperInfo) -> str:
    """DDP's find_unused_parameters=True as a way out, only where it is one: not to DDP that already has it, not to
    FSDP, which has no such option."""
    if w.kind == "ddp" and not w.find_unused_parameters:
        return (", or pass find_unused_parameters=True to DistributedDataParallel (no hang, but it averages in "
                "zeros from the ranks that skip them)")
    if w.kind == "none":
        return ", or under DistributedDataParallel pass find_unused_parameters=True (no hang, but zeros averaged in)"
    return ""


def grad_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for name, ranks in per.items():
        if not all(p is not None and p.requires_grad for p in ranks):
            continue
        used = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True) if p is not None and p.local_grad)
        unused = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True)
                       if p is not None and p.local_grad is False)
        if used and unused:
            groups.setdefault((used, unused), []).append(name)
    out = []
    w = dist.wrapper
    for (used, unused), names in groups.items():
        if w.kind == "ddp" and not w.find_unused_parameters:
            effect = ("DDP (find_unused_parameters=False) waits for their gradients on every rank: the backward "
                      "hangs until the timeout, or the gradient buckets desynchronise")
        elif w.kind == "ddp":
            share = f"{len(used)}/{len(used) + len(unused)}"
            effect = (f"DDP (find_unused_parameters=True) all-reduces zeros from the ranks that skipped them: their "
                      f"averaged gradient is scaled by {share}, and the rank-dependent graph costs a search each step")
        elif w.kind == "fsdp":
            effect = ("FSDP2 reduce-scatters only parameters that have a gradient: the ranks feed different "
                      "gradient sets into the same collective (a hang or mixed-up gradients)")
        elif w.kind == "fsdp1":
            effect = "FSDP1 reduce-scatters zeros for them from the ranks that skipped them"
        else:
            effect = ("under a data-parallel wrapper this hangs (DDP) or scales their gradient; without one each "
                      "rank would update them differently and the replicas drift apart")
        out.append(Finding(
            "dist-grad-differs", "error", subject(names),
            f"{names_text(names)} get{'s' if len(names) == 1 else ''} a gradient on {ranks_text(used)} but none on "
            f"{ranks_text(unused)} (a data-dependent branch or routing decides per rank): {effect}",
            "make every rank's loss depend on them (e.g. add 0 * branch_output.sum() on ranks that skip the "
            f"branch){_find_unused_hint(w)}"))
    return out


def values_differ(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    if len(dist.ranks) < 2:
        return []
    pre = [dict(r.pre_wrap_digests) for r in dist.ranks]
    wrapped_by_us = dist.wrapper.source == "--wrap" and any(pre)
    if wrapped_by_us:
        digests = {name: [d.get(name) for d in pre] for name in pre[0]}
        when = f"before --wrap {dist.wrapper.kind} wrapped them"
    else:
        if dist.wrapper.broadcasts_parameters or dist.wrapper.kind in ("fsdp", "fsdp1"):
            return []  # broadcast at construction (DDP), or disjoint shards that cannot be compared (FSDP)
        digests = {name: [p.digest if p is not None else None for p in ranks] for name, ranks in per.items()}
        when = "before the first step"
    if wrapped_by_us and dist.wrapper.broadcasts_parameters:
        return []  # DDP broadcasts rank 0's values at construction: harmless
    differing = []
    split: tuple[int, ...] = ()
    for name, values in digests.items():
        known = [(r.rank, v) for r, v in zip(dist.ranks, values, strict=True) if v is not None]
        if len({v for _, v in known}) > 1:
            differing.append(name)
            if not split:
                split = tuple(r for r, v in known if v != known[0][1])
    if not differing:
        return []
    who = {"fsdp": "FSDP2 shards each rank's own values (no broadcast), so the model trains a mix of them",
           "fsdp1": "FSDP1 shards each rank's own values unless sync_module_states=True",
           "none": "no wrapper broadcasts them, so every rank trains a different model"}.get(dist.wrapper.kind, "")
    return [Finding(
        "dist-values-differ", "error", subject(differing),
        f"the values of {names_text(differing)} differ between rank {dist.ranks[0].rank} and {ranks_text(split)} "
        f"{when} (the ranks initialised or loaded differently): {who}",
        "seed every rank alike before building the model, load one checkpoint on every rank, or broadcast from "
        "rank 0 (DDP does; FSDP1 with sync_module_states=True)")]


def buffers_diverge(dist: DistFacts) -> list[Finding]:
    if len(dist.ranks) < 2:
        return []
    differing: list[str] = []
    kinds: set[str] = set()
    split: set[int] = set()
    for name, ranks in dist.per_buffer().items():
        known = [(r.rank, b) for r, b in zip(dist.ranks, ranks, strict=True) if b is not None and b.digest]
        values = {b.digest for _, b in known}
        if len(values) > 1:
            if any("SyncBatchNorm" in b.module_type for _, b in known):
                continue
            differing.append(name)
            kinds |= {b.module_type for _, b in known}
            split |= {r for r, b in known if b.digest != known[0][1].digest}
    if not differing:
        return []
    w = dist.wrapper
    if w.kind == "ddp" and w.broadcast_buffers:
        effect = ("DDP broadcasts rank 0's buffers at the start of the next forward, so the statistics the other "
                  "ranks computed from their own batches are thrown away")
    elif w.kind == "ddp":
        effect = "with broadcast_buffers=False each rank keeps its own statistics and the replicas drift apart"
    else:
        effect = ("each rank keeps statistics of its own batches: the model you save depends on the rank that "
                  "saves it")
    bn = any("BatchNorm" in k for k in kinds)
    return [Finding(
        "dist-buffers-diverge", "warning", subject(differing),
        f"{names_text(differing)} differ between rank {dist.ranks[0].rank} and {ranks_text(sorted(split))} after "
        f"the forward ({'BatchNorm statistics of ' if bn else ''}each rank's own batch, no SyncBatchNorm): {effect}",
        "nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping, if the statistics should cover the "
        "global batch" if bn else "synchronise the buffers explicitly if every rank should agree")]
