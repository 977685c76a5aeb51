"""Formatting of bytes, counts and durations: torch-free, shared by judges (finding messages) and renderers."""

from __future__ import annotations

import keyword
from collections.abc import Iterable


def human_bytes(n: int | None) -> str:
    """1536 → '1.5 KiB'; None → '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    """124439808 → '124.4M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    """(8, 3, 32, 32) → '8×3×32×32'; () → 'scalar'."""
    return "×".join(str(d) for d in shape) if shape else "scalar"


def seconds(t: float | None) -> str:
    """A duration for people: '12.3 ms' or '1.24 s'."""
    if t is None:
        return "-"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def duration(t: float | None) -> str:
    """Three significant digits, down to microseconds: timings of small models differ in tenths of a ms."""
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def shorten(items: Iterable[str], limit: int = 4, *, quote: bool = False) -> str:
    """``a, b, c, d, … and 7 more``: the first ``limit`` items of a list too long for one message."""
    items = [f"'{x}'" if quote else x for x in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … and {len(items) - limit} more"


def common_module(modules: Iterable[str]) -> str:
    """The innermost module holding all of ``modules`` (qualified names; "" is the model itself, and so is the
    answer when they share no prefix)."""
    split = [m.split(".") if m else [] for m in modules]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def py_path(module: str, root: str = "model") -> str:
    """``backbone.1.proj`` → ``model.backbone[1].proj``: the module as the user reaches it in Python.

    Children of ``nn.Sequential``/``nn.ModuleList`` are named by number (``getattr(model, "1")`` is the only
    other way to reach them), ``nn.ModuleDict`` keys that are not identifiers by subscript as well.
    """
    out = root
    for part in module.split(".") if module else []:
        if part.isdigit():
            out += f"[{part}]"
        elif part.isidentifier() and not keyword.iskeyword(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out
