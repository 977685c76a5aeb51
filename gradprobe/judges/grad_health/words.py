"""Module calls and numbers as the gradient-health messages word them."""

from __future__ import annotations

from gradprobe.facts.grad_health import GradHealthFacts


def label(gh: GradHealthFacts, index: int | None) -> str:
    """``'encoder.layers.3' (Linear)``, with ``call #2`` for a repeated module; "the model itself" for the root."""
    if index is None or not 0 <= index < len(gh.calls):
        return "outside any module call"
    c = gh.calls[index]
    repeated = c.module in gh.repeated
    where = f"'{c.module}'" if c.module else "the model itself"
    return f"{where} ({c.type}{f', call #{c.call}' if repeated else ''})"



def sig3(x: float | None) -> str:
    """Three significant digits, ``-`` when not measured."""
    return "-" if x is None else f"{x:.3g}"
