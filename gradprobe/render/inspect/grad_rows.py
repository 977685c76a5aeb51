"""The rows of the gradient-flow view, shared by the terminal and Markdown renderers (no rich, no torch).

One row per module call in forward order (call start: a parent above its children), down to ``--depth``
module levels: a call whose descendants are hidden stands for its whole block, its parameter figure then
covers every parameter under it.  Bars are on a log10 scale, drawn in characters (eighth blocks), so they
read without colour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gradprobe.facts.grad_health import CallGrad, GradHealthFacts
from gradprobe.facts.run import RunFacts
from gradprobe.judges.grad_health.nonfinite import first_turning
from gradprobe.judges.grad_health.scale import scale_profile

EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class FlowRow:
    """One displayed module call."""

    index: int  # in GradHealthFacts.calls
    name: str  # full label: 'encoder.layers.3' (#2 for a repeated call), '(model)'
    short: str  # relative to the displayed row above it, indented
    level: int  # displayed ancestors
    act: float | None  # ‖gradient reaching its output‖
    params: float | None  # ‖gradients of its parameters‖ (its whole block when collapsed)
    hidden: int  # descendant calls folded into this row
    nonfinite: int | None  # NaN/Inf in its forward output
    marks: tuple[str, ...]
    gap_before: int = 0  # rows left out just above this one (more rows than --top even one level deep)


@dataclass(frozen=True)
class Flow:
    rows: tuple[FlowRow, ...]
    depth: int  # module levels shown
    note: str | None  # why fewer levels are shown than asked


def call_depths(gh: GradHealthFacts) -> list[int]:
    """Nesting of each call among the calls (the model's own call 0, what it calls 1, ...): containers that are
    never called (ModuleList, ModuleDict) add no level."""
    depths: list[int] = []
    for c in gh.calls:
        depths.append(0 if c.parent is None else depths[c.parent] + 1)
    return depths


def _in(module: str, block: str) -> bool:
    return block == "" or module == block or module.startswith(block + ".")


class ParamNorms:
    """‖gradients‖ of a module's own parameters, or of every parameter under it, from the parameter facts
    (sums of squares per module once, so a view over thousands of calls stays linear)."""

    def __init__(self, facts: RunFacts) -> None:
        self.own: dict[str, float] = {}
        self.under: dict[str, float] = {}
        for p in facts.parameters:
            if p.grad_norm is None:
                continue
            square = p.grad_norm * p.grad_norm
            self.own[p.module] = self.own.get(p.module, 0.0) + square
            parts = p.module.split(".") if p.module else []
            for n in range(len(parts) + 1):
                prefix = ".".join(parts[:n])
                self.under[prefix] = self.under.get(prefix, 0.0) + square

    def of(self, block: str, whole: bool) -> float | None:
        found = (self.under if whole else self.own).get(block)
        return None if found is None else math.sqrt(found)


def param_norm(facts: RunFacts, block: str, whole: bool) -> float | None:
    """‖(g_1, g_2, ...)‖ over the parameters of ``block`` (``whole``: every one under it, else its own)."""
    return ParamNorms(facts).of(block, whole)


def _marks(facts: RunFacts, gh: GradHealthFacts) -> dict[int, list[str]]:
    marks: dict[int, list[str]] = {}
    origin = gh.forward_origin
    if origin is not None and origin.call is not None and origin.call >= 0:
        marks.setdefault(origin.call, []).append("NaN/Inf made here")
    node = gh.backward_nodes[0] if gh.backward_nodes else None
    turned = node.call if node is not None else (first_turning(gh) if origin is None else None)
    if turned is not None:
        marks.setdefault(turned, []).append("backward NaN/Inf here")
    profile = scale_profile(gh) if gh.backward else None
    if profile is not None and not 1 / gh.thresholds.factor <= profile.ratio <= gh.thresholds.factor:
        marks.setdefault(profile.worst, []).append("largest step down" if profile.ratio < 1 else "largest step up")
    for i, c in enumerate(gh.calls):
        if c.dead is not None and c.dead.dead:
            marks.setdefault(i, []).append(f"dead {c.dead.dead}/{c.dead.units}")
        if c.grad_out_subnormal and c.grad_out_numel:
            share = c.grad_out_subnormal / c.grad_out_numel
            if share >= gh.thresholds.subnormal_share:
                marks.setdefault(i, []).append(f"fp16 subnormal {share:.0%}")
    return marks


def call_name(gh: GradHealthFacts, c: CallGrad) -> str:
    repeated = c.module in gh.repeated
    return (c.module or "(model)") + (f" #{c.call}" if repeated else "")


def flow(facts: RunFacts, depth: int | None = None, limit: int | None = None, pattern: str | None = None) -> Flow:
    """The rows to show: every call down to ``depth`` levels, fewer levels when more than ``limit`` rows."""
    gh = facts.grad_health
    if gh is None:
        return Flow((), 0, None)
    asked = gh.display_depth if depth is None else depth
    depths = call_depths(gh)
    deepest = max(depths, default=0)
    shown = min(asked, deepest)
    note = None
    while limit and shown > 1 and _count(depths, shown) > limit:
        shown -= 1
    if shown < min(asked, deepest):
        note = (f"calls nested up to {shown} levels shown: {_count(depths, shown + 1)} calls at {shown + 1} levels "
                f"exceed --top {limit} (--depth/--top to change, --format json for every call)")
    marks = _marks(facts, gh)
    norms = ParamNorms(facts)
    visible = [i for i, d in enumerate(depths) if d <= shown]
    visible_set = set(visible)
    folded = _folded(gh, visible_set)
    rows = []
    for i in visible:
        c = gh.calls[i]
        ancestor, level = _displayed_ancestor(gh, i, visible_set)
        hidden = folded.get(i, [])
        own_marks = list(marks.get(i, []))
        for j in hidden:
            own_marks += [f"{m} ({call_name(gh, gh.calls[j])})" for m in marks.get(j, [])]
        name = call_name(gh, c)
        prefix = gh.calls[ancestor].module if ancestor is not None else ""
        short = name if not prefix or not c.module.startswith(prefix + ".") else name[len(prefix) + 1:]
        rows.append(FlowRow(
            index=i, name=name, short="  " * level + short, level=level, act=c.grad_out_norm,
            params=norms.of(c.module, whole=bool(hidden) or (c.module == "" and shown == 0)),
            hidden=len(hidden), nonfinite=c.nonfinite, marks=tuple(own_marks)))
    if pattern:
        import fnmatch

        rows = [r for r in rows if fnmatch.fnmatchcase(gh.calls[r.index].module, pattern)
                or fnmatch.fnmatchcase(gh.calls[r.index].module, pattern + ".*")]
    if limit and len(rows) > limit:
        rows = _ends(rows, limit)
        note = (f"{sum(r.gap_before for r in rows)} of {len(gh.calls)} calls left out between the first and last "
                f"rows (marked rows kept; --top/--filter to change, --format json for every call)")
    return Flow(tuple(rows), shown, note)


def _ends(rows: list[FlowRow], limit: int) -> list[FlowRow]:
    """The first and last rows (``limit`` in all) and up to ``limit`` marked rows between them (the first ones),
    each after a count of the rows left out."""
    head = max(1, limit // 2)
    keep = set(range(head)) | set(range(len(rows) - (limit - head), len(rows)))
    keep |= set([i for i, r in enumerate(rows) if (r.marks or r.nonfinite) and i not in keep][:limit])
    kept: list[FlowRow] = []
    last = -1
    for i in sorted(keep):
        kept.append(replace(rows[i], gap_before=i - last - 1))
        last = i
    return kept


def _count(depths: list[int], depth: int) -> int:
    return sum(d <= depth for d in depths)


def _displayed_ancestor(gh: GradHealthFacts, index: int, visible: set[int]) -> tuple[int | None, int]:
    level = 0
    nearest = None
    parent = gh.calls[index].parent
    while parent is not None:
        if parent in visible:
            level += 1
            if nearest is None:
                nearest = parent
        parent = gh.calls[parent].parent
    return nearest, level


def _folded(gh: GradHealthFacts, visible: set[int]) -> dict[int, list[int]]:
    """Each displayed call -> the hidden calls under it (their nearest displayed ancestor)."""
    folded: dict[int, list[int]] = {}
    for j, c in enumerate(gh.calls):
        if j in visible:
            continue
        parent = c.parent
        while parent is not None and parent not in visible:
            parent = gh.calls[parent].parent
        if parent is not None:
            folded.setdefault(parent, []).append(j)
    return folded


def scale_of(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(lowest, highest) positive finite value: the ends of a log-scale bar column."""
    found = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not found:
        return None
    return min(found), max(found)


def bar(value: float | None, scale: tuple[float, float] | None, width: int) -> str:
    """``value`` as a bar of ``width`` characters on a log10 scale: the lowest value gets one eighth."""
    if value is None or scale is None or not math.isfinite(value) or value <= 0:
        return " " * width
    lo, hi = scale
    span = math.log10(hi) - math.log10(lo)
    share = 1.0 if span <= 0 else (math.log10(value) - math.log10(lo)) / span
    eighths = max(1, round(share * width * 8))
    full, part = divmod(min(eighths, width * 8), 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


def number(value: float | None) -> str:
    """``3.2e-02``; ``NaN``/``inf``; ``-`` when no gradient reached it; ``0``."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.1e}"
