"""Peak anatomy in the terminal (rich), as Markdown and as JSON: what was alive at each peak."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradprobe.facts.memory import CATEGORY_LABEL, COUNTED, HELD, LiveTensor, PeakAnatomy
from gradprobe.units import human_bytes, shape_text

CATEGORY_STYLE = {"gradients": "magenta", "saved": "cyan", "outputs": "green", "temporaries": "yellow"}


SHORT = {"gradients": "grad", "saved": "saved", "outputs": "output", "temporaries": "temp"}


def short_op(op: str) -> str:
    """``aten.mm`` → ``mm``; other namespaces keep theirs."""
    return op.removeprefix("aten.")


def where(module: str | None, call: int) -> str:
    """``layers.2``, ``cell #3`` (a repeated call), ``(model)``, ``-`` (outside every call)."""
    if module is None:
        return "-"
    return (module or "(model)") + (f" #{call}" if call else "")


def peak_place(a: PeakAnatomy) -> str:
    """``op 212 aten.mm in lm_head`` (the backward: in the backward of the module call)."""
    if a.event < 0:
        return "when the phase began"
    inside = "in the backward of" if a.phase == "backward" else "in"
    module = f" {inside} {where(a.module, a.call)}" if a.module is not None else ""
    return f"op {a.op_index} {short_op(a.op)}{module}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def anatomy_table(anatomies: Sequence[PeakAnatomy], top: int | None = 5) -> RenderableType | None:
    """Bytes by category at each peak (one column per phase), then the largest tensors alive at each."""
    if not anatomies:
        return None
    estimate = any(a.estimate for a in anatomies)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    t.add_column("at the peak", no_wrap=True)
    for a in anatomies:
        t.add_column(f"{a.phase} {human_bytes(a.peak_bytes)}", justify="right", no_wrap=True)
        t.add_column("", justify="right", no_wrap=True, style="dim")
    for category in COUNTED:
        cells: list[RenderableType] = [Text(CATEGORY_LABEL[category], style=CATEGORY_STYLE[category])]
        for a in anatomies:
            cells += [human_bytes(a.category(category)), _share(a.category(category), a.peak_bytes)]
        t.add_row(*cells)
    t.add_section()
    for category in HELD:
        cells = [Text(f"{CATEGORY_LABEL[category]} (held)", style="dim")]
        for a in anatomies:
            cells += [Text(human_bytes(a.category(category)), style="dim"), ""]
        t.add_row(*cells)
    title = "Peak anatomy: tensor bytes alive at each peak" + (" (estimate: meta device)" if estimate else "")
    parts: list[RenderableType] = [Text(title, style="bold"), t]
    for a in anatomies:
        parts.append(Text(f"{a.phase} peak at {peak_place(a)}; {a.live_tensors} tensors alive", style="dim"))
    parts.append(Text("held: alive for the whole run, not part of the peak figures", style="dim"))
    for a in anatomies:
        parts.append(top_tensors_table(a, top))
    return Group(*parts)


def top_tensors_table(a: PeakAnatomy, top: int | None = 5) -> RenderableType:
    """The largest tensors alive at the peak: kind (grad, saved, output, temp) and the module call and op that
    made it (``↩`` marks one made in the backward)."""
    rows = list(a.top[:top] if top else a.top)
    dtypes = {x.dtype for x in rows}
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("shape", no_wrap=True)
    if len(dtypes) > 1:
        t.add_column("dtype", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("made in · by op", overflow="fold", ratio=1, min_width=20)
    for x in rows:
        made = Text(("↩ " if x.phase == "backward" else "") + where(x.module, x.call))
        made.append(f" · {short_op(x.op)}", style="dim")
        cells: list[RenderableType] = [human_bytes(x.nbytes), shape_text(x.shape)]
        if len(dtypes) > 1:
            cells.append(x.dtype)
        cells += [Text(SHORT[x.category], style=CATEGORY_STYLE[x.category]), made]
        t.add_row(*cells)
    title = f"Largest tensors alive at the {a.phase} peak" + (f" (all {dtypes.pop()})" if len(dtypes) == 1 else "")
    return Group(Text(title, style="bold"), t)


def _category(x: LiveTensor) -> str:
    if x.category == "saved" and x.saved_by is not None:
        return f"saved by {x.saved_by or '(model)'}"
    return CATEGORY_LABEL[x.category]


def anatomy_markdown(anatomies: Sequence[PeakAnatomy], top: int = 5) -> str:
    """The anatomy as GitHub Markdown tables."""
    if not anatomies:
        return ""
    from gradprobe.render.common import md_table

    header = ["at the peak"] + [f"{a.phase} ({human_bytes(a.peak_bytes)})" for a in anatomies]
    rows = [[CATEGORY_LABEL[c]] + [f"{human_bytes(a.category(c))} ({_share(a.category(c), a.peak_bytes)})"
                                   for a in anatomies] for c in COUNTED]
    rows += [[f"{CATEGORY_LABEL[c]} (held for the whole run)"] + [human_bytes(a.category(c)) for a in anatomies]
             for c in HELD]
    out = ["### Peak anatomy" + (" (estimate: meta device)" if any(a.estimate for a in anatomies) else ""), "",
           md_table(header, rows), ""]
    out += [f"- {a.phase} peak at {peak_place(a)}" for a in anatomies]
    for a in anatomies:
        out += ["", f"Largest tensors alive at the {a.phase} peak:", "", md_table(
            ["bytes", "shape", "dtype", "category", "made by"],
            [(human_bytes(x.nbytes), shape_text(x.shape), x.dtype, _category(x),
              f"{where(x.module, x.call)} `{short_op(x.op)}`" + (" (backward)" if x.phase == "backward" else ""))
             for x in a.top[:top]])]
    return "\n".join(out)


def tensor_json(x: LiveTensor) -> dict[str, Any]:
    return {"bytes": x.nbytes, "shape": list(x.shape), "dtype": x.dtype, "category": x.category, "op": x.op,
            "op_index": x.op_index, "module": x.module, "call": x.call, "phase": x.phase, "saved_by": x.saved_by}


def anatomy_json(anatomies: Sequence[PeakAnatomy]) -> list[dict[str, Any]]:
    """``memory.anatomy[]``: one entry per peak (new in issue 14; absent figures are never guessed)."""
    return [{
        "phase": a.phase, "peak_bytes": a.peak_bytes, "estimate": a.estimate, "op_index": a.op_index, "op": a.op,
        "module": a.module, "call": a.call, "live_tensors": a.live_tensors,
        "categories": {c: a.category(c) for c in COUNTED},
        "held": {c: a.category(c) for c in HELD},
        "saved_by_module": [{"module": m.module, "call": m.call, "bytes": m.nbytes} for m in a.saved_by_module],
        "top_tensors": [tensor_json(x) for x in a.top],
    } for a in anatomies]
