"""Which modules an activation-checkpointing lever wraps: the FSDP units, else the model's repeated blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def checkpoint_units(model: nn.Module, units: Sequence[str]) -> tuple[str, ...]:
    """The non-root FSDP units when there are some (each is one block in practice); otherwise the children of
    the ModuleList/Sequential of same-typed blocks that holds the most parameters (``model.layers.*``)."""
    chosen = tuple(u for u in units if u)
    if chosen:
        return chosen
    best: tuple[int, tuple[str, ...]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        kids = list(module.named_children())
        if len(kids) < 2 or len({type(c) for _, c in kids}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, tuple(f"{name}.{k}" if name else k for k, _ in kids))
    return best[1] if best else ()
