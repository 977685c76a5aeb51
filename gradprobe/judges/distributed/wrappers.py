"""Findings about the wrapper: DDP's unused parameters and find_unused cost, FSDP units that mix frozen and
trainable parameters (with the bytes measured on the ranks)."""

from __future__ import annotations

from gradprobe.facts.distributed import DistFacts, RankParam, UnitFact
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.distributed.text import names_text, owner, subject, tangled_modules, tangled_text
from gradprobe.units import human_bytes


def ddp_unused(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> list[Finding]:
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
    not_reduced = unsynced(dist, per)
    return [Finding(
        "ddp-unused-parameters", "error", subject(unused),
        f"{names_text(unused)} require{'s' if len(unused) == 1 else ''} grad but get no gradient on any rank, and "
        f"DDP has find_unused_parameters=False: the first backward leaves their bucket unreduced{not_reduced}; {proof}",
        "freeze them (requires_grad_(False)) if they are not meant to train, make the loss use them, or pass "
        "find_unused_parameters=True to DistributedDataParallel")]


def unsynced(dist: DistFacts, per: dict[str, list[RankParam | None]]) -> str:
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


def ddp_find_unused_cost(dist: DistFacts, per: dict[str, list[RankParam | None]],
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


def unit_subject(u: UnitFact) -> str:
    return u.name or "(root unit)"


def unit_label(u: UnitFact) -> str:
    return f"unit '{u.name}'" if u.name else "root unit"


def mix_text(u: UnitFact) -> str:
    """``2 frozen parameter(s) (a, b) with 1 trainable one(s) (c)``: what an FSDP unit mixes."""
    return (f"{len(u.frozen)} frozen parameter(s) ({names_text(list(u.frozen))}) with {len(u.trainable)} trainable "
            f"one(s) ({names_text(list(u.trainable))})")


def split_hint(u: UnitFact, wrapper: str) -> str:
    tangled = tangled_modules(u.frozen, u.trainable)
    if tangled:
        which = f"'{tangled[0]}'" if len(tangled) == 1 and tangled[0] else "each such module"
        return (f"{tangled_text(tangled)}; freeze or train {which} as a whole, or accept this cost if the split is "
                f"intended (BitFit trains biases only)")
    call = "fully_shard(model.{m})" if wrapper == "fsdp" else "an FSDP unit for {m} (auto_wrap_policy)"
    for part, names in (("trainable", u.trainable), ("frozen", u.frozen)):
        module = owner(names)
        if module and module != u.name and not any(n.startswith(module + ".") for n in (
                u.frozen if part == "trainable" else u.trainable)):
            where = call.format(m=module)
            return (f"shard the {part} part as its own unit ({where} before the enclosing unit, or --shard "
                    f"'{module}'), so each unit is all frozen or all trainable")
    return "make the trainable modules their own FSDP units (or the frozen ones), so no unit mixes the two"


def mixed_units(dist: DistFacts) -> list[UnitFact]:
    """Rank 0's FSDP units that mix frozen and trainable parameters (every rank has the same units)."""
    return [u for u in dist.ranks[0].units if u.mixed]


def fsdp1_frozen_grads(dist: DistFacts) -> list[Finding]:
    if dist.wrapper.kind != "fsdp1" or not dist.wrapper.use_orig_params:
        return []
    out = []
    for unit in mixed_units(dist):
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
            "fsdp1-frozen-grad-memory", "warning", unit_subject(unit),
            f"FSDP1 {unit_label(unit)} (use_orig_params=True) flattens {mix_text(unit)} into one flat parameter "
            f"whose gradient spans all of them; {cost}",
            split_hint(unit, "fsdp1")))
    return out


def fsdp2_mixed(dist: DistFacts) -> list[Finding]:
    if dist.wrapper.kind != "fsdp":
        return []
    out = []
    rank0 = dist.ranks[0]
    for unit in mixed_units(dist):
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
            "fsdp-mixed-unit", "warning", unit_subject(unit),
            f"FSDP2 {unit_label(unit)} mixes {mix_text(unit)}: {cost}",
            split_hint(unit, "fsdp")))
    return out
