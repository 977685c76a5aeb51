"""Parameters, modules and ranks in words, for findings and tables."""

from __future__ import annotations

from collections.abc import Sequence

from gradprobe.facts.distributed import NO_SHARD, RankParam
from gradprobe.units import common_module


def ranks_text(ranks: Sequence[int]) -> str:
    """[1] → 'rank 1'; [0, 2, 3] → 'ranks 0, 2, 3'."""
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def names_text(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")



def tangled_modules(frozen: Sequence[str], trainable: Sequence[str]) -> list[str]:
    """Modules holding frozen and trainable parameters directly (BitFit: weights frozen, biases trained), in the
    order of ``trainable``: no FSDP unit can separate them, since a unit takes each module's parameters whole."""
    frozen_owners = {n.rpartition(".")[0] for n in frozen}
    out: list[str] = []
    for name in trainable:
        module = name.rpartition(".")[0]
        if module in frozen_owners and module not in out:
            out.append(module)
    return out


def tangled_text(modules: Sequence[str]) -> str:
    """``'bn' holds frozen and trainable parameters itself`` (or ``'a' and 'b' each hold ... themselves``) and why
    that leaves no unit split."""
    shown = [f"'{m}'" if m else "the model itself" for m in modules[:4]]
    more = f" and {len(modules) - 4} more" if len(modules) > 4 else ""
    if len(modules) == 1:
        who = f"{shown[0]} holds frozen and trainable parameters itself"
    else:
        listed = ", ".join(shown[:-1]) + (f", {shown[-1]}{more}" if more else f" and {shown[-1]}")
        who = f"{listed} each hold frozen and trainable parameters themselves"
    return f"{who}, and an FSDP unit takes a module's parameters whole: no choice of units separates them"


def subject(names: Sequence[str]) -> str:
    """The innermost module holding every name, else the first name."""
    if len(names) == 1:
        return names[0]
    return owner(names) or names[0]


def owner(names: Sequence[str]) -> str:
    """The innermost module holding every one of the parameters ``names`` ("" for the root)."""
    return common_module(n.rpartition(".")[0] for n in names)



def shard_text(p: RankParam) -> str:
    """How a rank holds a parameter, for tables: 'replicated', 'Shard(dim=0) 2×6', 'flat[0:106]', 'no shard here'."""
    if p.grad == NO_SHARD or (p.placement != "replicated" and any(d == 0 for d in p.local_shape)):
        return "no shard here"
    if p.placement == "replicated":
        return "replicated"
    return f"{p.placement} {'×'.join(map(str, p.local_shape))}"
