"""Cross-rank verdicts: pure functions of every rank's facts (``DistFacts``), no torch.

Each finding names the parameters/modules and the ranks.  Codes are a public contract.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradprobe.facts.distributed import NO_SHARD, DistFacts, RankParam, UnitFact
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.units import human_bytes

CODES = {
    "dist-grad-differs": "a parameter gets a gradient on some ranks and none on others",
    "dist-requires-grad-differs": "a parameter requires grad on some ranks only",
    "dist-shape-differs": "a parameter's shape differs across ranks",
    "dist-params-differ": "the ranks register different parameters, or in a different order",
    "dist-values-differ": "parameter values differ across ranks before the first step, and nothing broadcasts them",
    "dist-buffers-diverge": "buffers (BatchNorm statistics) differ across ranks after the forward",
    "ddp-unused-parameters": "DDP (find_unused_parameters=False) with parameters that get no gradient",
    "ddp-find-unused-cost": "DDP find_unused_parameters=True although every parameter gets a gradient",
    "fsdp1-frozen-grad-memory": "an FSDP1 unit (use_orig_params=True) mixes frozen and trainable parameters",
    "fsdp-mixed-unit": "an FSDP2 unit mixes frozen and trainable parameters",
}


def ranks_text(ranks: Sequence[int]) -> str:
    """[1] → 'rank 1'; [0, 2, 3] → 'ranks 0, 2, 3'."""
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def names_text(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _subject(names: Sequence[str]) -> str:
    """The innermost module holding every name, else the first name."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return ".".join(common) or names[0]


def judge_distributed(dist: DistFacts, facts: RunFacts | None = None) -> list[Finding]:
    """Every cross-rank finding, most severe kinds first."""
    out: list[Finding] = []
    per = dist.per_param()
    out += _params_differ(dist)
    out += _shape_differs(dist, per)
    out += _requires_grad_differs(dist, per)
    out += _grad_differs(dist, per)
    out += _ddp_unused(dist, per)
    out += _values_differ(dist, per)
    out += _buffers_diverge(dist)
    out += _ddp_find_unused_cost(dist, per, facts)
    out += _fsdp1_frozen_grads(dist)
    out += _fsdp2_mixed(dist)
    return out


# --------------------------------------------------------------------------- structure


def _params_differ(dist: DistFacts) -> list[Finding]:
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
                "dist-params-differ", "error", _subject(names),
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


def _shape_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
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


def _requires_grad_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for name, ranks in per.items():
        on = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True) if p is not None and p.requires_grad)
        off = tuple(r.rank for r, p in zip(dist.ranks, ranks, strict=True) if p is not None and not p.requires_grad)
        if on and off:
            groups.setdefault((on, off), []).append(name)
    out = []
    for (on, off), names in groups.items():
        out.append(Finding(
            "dist-requires-grad-differs", "error", _subject(names),
            f"{names_text(names)} require{'s' if len(names) == 1 else ''} grad on {ranks_text(on)} but not on "
            f"{ranks_text(off)}: the ranks freeze differently; DDP's reducer expects gradients that never come "
            f"(hang), and the trainable ranks drift from the frozen ones",
            "apply the same freeze on every rank before wrapping (not under `if rank == 0`)"))
    return out


def _grad_differs(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
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
            "dist-grad-differs", "error", _subject(names),
            f"{names_text(names)} get{'s' if len(names) == 1 else ''} a gradient on {ranks_text(used)} but none on "
            f"{ranks_text(unused)} (a data-dependent branch or routing decides per rank): {effect}",
            "make every rank's loss depend on them (e.g. add 0 * branch_output.sum() on ranks that skip the "
            "branch), or use find_unused_parameters=True with DDP"))
    return out


def _ddp_unused(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
    w = dist.wrapper
    if w.kind != "ddp" or w.find_unused_parameters:
        return []
    unused = [name for name, ranks in per.items()
              if ranks and all(p is not None and p.requires_grad and p.local_grad is False for p in ranks)]
    if not unused:
        return []
    rank0 = dist.ranks[0]
    if rank0.second_iteration_error:
        proof = (f"gradprobe ran the second iteration on every rank and DDP raised: "
                 f"\"{rank0.second_iteration_error}\"")
    elif rank0.second_iteration_ran:
        proof = "gradprobe ran the second iteration and it did not raise (static_graph or a custom reducer?)"
    else:
        proof = "the second iteration would raise \"Expected to have finished reduction in the prior iteration\""
    unsynced = _unsynced(dist, per)
    return [Finding(
        "ddp-unused-parameters", "error", _subject(unused),
        f"{names_text(unused)} require{'s' if len(unused) == 1 else ''} grad but get no gradient on any rank, and "
        f"DDP has find_unused_parameters=False: the first backward leaves their bucket unreduced{unsynced}; {proof}",
        "freeze them (requires_grad_(False)) if they are not meant to train, make the loss use them, or pass "
        "find_unused_parameters=True to DistributedDataParallel")]


def _unsynced(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> str:
    """`` (measured: ...)`` when replicated gradients differ across ranks after the backward (never all-reduced)."""
    for name, ranks in per.items():
        norms = [(r.rank, p.grad_norm) for r, p in zip(dist.ranks, ranks, strict=True)
                 if p is not None and p.placement == "replicated" and p.grad == "nonzero" and p.grad_norm is not None]
        if len(norms) < 2:
            continue
        low, high = min(n for _, n in norms), max(n for _, n in norms)
        if high - low > 1e-6 * max(1.0, high):
            shown = ", ".join(f"‖{n:.7g}‖ on rank {r}" for r, n in norms[:4])
            return (f" (measured: the gradients were never all-reduced, so the replicas already disagree after the "
                    f"backward: '{name}' holds {shown})")
    return ""


def _values_differ(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
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
        "dist-values-differ", "error", _subject(differing),
        f"the values of {names_text(differing)} differ between rank {dist.ranks[0].rank} and {ranks_text(split)} "
        f"{when} (the ranks initialised or loaded differently): {who}",
        "seed every rank alike before building the model, load one checkpoint on every rank, or broadcast from "
        "rank 0 (DDP does; FSDP1 with sync_module_states=True)")]


def _buffers_diverge(dist: DistFacts) -> list[Finding]:
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
        "dist-buffers-diverge", "warning", _subject(differing),
        f"{names_text(differing)} differ between rank {dist.ranks[0].rank} and {ranks_text(sorted(split))} after "
        f"the forward ({'BatchNorm statistics of ' if bn else ''}each rank's own batch, no SyncBatchNorm): {effect}",
        "nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping, if the statistics should cover the "
        "global batch" if bn else "synchronise the buffers explicitly if every rank should agree")]


def _ddp_find_unused_cost(dist: DistFacts, per: dict[str, list[RankParam | None]],
                          facts: RunFacts | None) -> list[Finding]:
    w = dist.wrapper
    if w.kind != "ddp" or not w.find_unused_parameters or w.static_graph:
        return []
    trainable = [ranks for ranks in per.values() if ranks and all(p is not None and p.requires_grad for p in ranks)]
    if not trainable or not all(p is not None and p.local_grad for ranks in trainable for p in ranks):
        return []
    nodes = f" ({facts.graph.nodes} grad_fn nodes here)" if facts is not None and facts.graph is not None else ""
    return [Finding(
        "ddp-find-unused-cost", "warning", "",
        f"DDP runs with find_unused_parameters=True, yet every one of the {len(trainable)} trainable parameters got "
        f"a gradient on every rank: after each forward DDP still walks the autograd graph from the outputs{nodes} "
        f"looking for unused ones, a cost paid every step for nothing",
        "drop find_unused_parameters=True (or pass static_graph=True if the set of used parameters never changes)")]


def _unit_subject(u: UnitFact) -> str:
    return u.name or "(root unit)"


def _unit_label(u: UnitFact) -> str:
    return f"unit '{u.name}'" if u.name else "root unit"


def _owner(names: Sequence[str]) -> str:
    """The innermost module holding every one of ``names`` ("" for the root)."""
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return ".".join(common)


def _split_hint(u: UnitFact, wrapper: str) -> str:
    call = "fully_shard(model.{m})" if wrapper == "fsdp" else "an FSDP unit for {m} (auto_wrap_policy)"
    for part, names in (("trainable", u.trainable), ("frozen", u.frozen)):
        module = _owner(names)
        if module and module != u.name and not any(n.startswith(module + ".") for n in (
                u.frozen if part == "trainable" else u.trainable)):
            where = call.format(m=module)
            return (f"shard the {part} part as its own unit ({where} before the enclosing unit, or --shard "
                    f"'{module}'), so each unit is all frozen or all trainable")
    return "make the trainable modules their own FSDP units (or the frozen ones), so no unit mixes the two"


def _fsdp1_frozen_grads(dist: DistFacts) -> list[Finding]:
    if dist.wrapper.kind != "fsdp1" or not dist.wrapper.use_orig_params:
        return []
    out = []
    rank0 = dist.ranks[0]
    for unit in rank0.units:
        if not unit.mixed:
            continue
        per_rank = [(r.rank, next((u for u in r.units if u.name == unit.name), None)) for r in dist.ranks]
        measured = [(rank, u.frozen_gradient_bytes) for rank, u in per_rank
                    if u is not None and u.frozen_gradient_bytes is not None]
        if measured:
            total = sum(b for _, b in measured)
            cost = (f"measured: {human_bytes(total)} of gradient memory over all ranks "
                    f"({', '.join(f'rank {r}: {human_bytes(b)}' for r, b in measured)}) hold gradients of frozen "
                    f"parameters, reduce-scattered every step")
        else:
            cost = "its flat gradient covers the frozen parameters too (not measured: no backward ran)"
        out.append(Finding(
            "fsdp1-frozen-grad-memory", "warning", _unit_subject(unit),
            f"FSDP1 {_unit_label(unit)} (use_orig_params=True) flattens {len(unit.frozen)} frozen "
            f"parameter(s) ({names_text(list(unit.frozen))}) with {len(unit.trainable)} trainable one(s) "
            f"({names_text(list(unit.trainable))}) into one flat parameter whose gradient spans all of them; {cost}",
            _split_hint(unit, "fsdp1")))
    return out


def _fsdp2_mixed(dist: DistFacts) -> list[Finding]:
    if dist.wrapper.kind != "fsdp":
        return []
    out = []
    rank0 = dist.ranks[0]
    for unit in rank0.units:
        if not unit.mixed:
            continue
        frozen_share = unit.frozen_bytes / max(1, unit.frozen_bytes + unit.trainable_bytes)
        ag_f, ag_b = unit.all_gather_forward_bytes, unit.all_gather_backward_bytes
        if ag_f:
            cost = f"measured on rank {rank0.rank}: all-gather {human_bytes(ag_f)} in forward"
            if ag_b:
                cost += (f" and {human_bytes(ag_b)} again in backward, where the frozen parameters "
                         f"({frozen_share:.0%} of it) come along with the trainable ones although they get no "
                         f"gradient")
            else:
                cost += (f" and none in backward: the unit keeps its parameters unsharded from forward to backward "
                         f"(reshard_after_forward=False, as for the root), so {human_bytes(unit.frozen_bytes)} of "
                         f"frozen parameters ({frozen_share:.0%}) stay all-gathered through the backward")
            cost += (f"; reduce-scatter {human_bytes(unit.reduce_scatter_bytes or 0)} and gradients "
                     f"{human_bytes(unit.gradient_bytes or 0)} cover the trainable ones only")
        else:
            cost = (f"its all-gathers carry {human_bytes(unit.frozen_bytes)} of frozen parameters "
                    f"({frozen_share:.0%}) along with the trainable ones (not measured: world size 1 or no run)")
        out.append(Finding(
            "fsdp-mixed-unit", "warning", _unit_subject(unit),
            f"FSDP2 {_unit_label(unit)} mixes {len(unit.frozen)} frozen parameter(s) "
            f"({names_text(list(unit.frozen))}) with {len(unit.trainable)} trainable one(s) "
            f"({names_text(list(unit.trainable))}): {cost}",
            _split_hint(unit, "fsdp")))
    return out


def shard_text(p: RankParam) -> str:
    """How a rank holds a parameter, for tables: 'replicated', 'Shard(dim=0) 2×6', 'flat[0:106]', 'no shard here'."""
    if p.grad == NO_SHARD or (p.placement != "replicated" and any(d == 0 for d in p.local_shape)):
        return "no shard here"
    if p.placement == "replicated":
        return "replicated"
    return f"{p.placement} {'×'.join(map(str, p.local_shape))}"
