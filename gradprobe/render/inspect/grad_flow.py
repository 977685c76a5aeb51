"""``inspect --grads`` in the terminal: the "Gradient flow" section and the per-parameter gradient table.

Readable at 80 columns and with ``NO_COLOR``: bars are characters (eighth blocks on a log10 scale), marks are
words, colour only repeats what the text says.
"""

from __future__ import annotations

import fnmatch
import math

from rich.console import Group, RenderableType
from rich.text import Text

from gradprobe.facts.grad_health import GradHealthFacts, ParamGrad
from gradprobe.facts.run import InspectReport, ParamFact, RunFacts
from gradprobe.judges.grad_health.dead_units import zero_grad_causes
from gradprobe.render.common import light_table
from gradprobe.render.inspect.grad_rows import bar, flow, number, scale_of

BAR = 12  # characters per bar: 96 steps between the smallest and largest value of a column


def _value(value: float | None) -> Text:
    text = number(value)
    bad = value is not None and not math.isfinite(value)
    return Text(text, style="bold red" if bad else "dim" if value is None else "")


def _name_width(names: list[str]) -> int:
    """Room for the longest name, 16 to 32 columns: the bars keep 2 x 20 of an 80-column terminal."""
    return max(16, min(32, max((len(n) + 6 for n in names), default=0)))


def _bar_cell(value: float | None, scale: tuple[float, float] | None, style: str) -> Text:
    if value is None:
        return Text("")
    cell = Text(bar(value, scale, BAR), style=style)
    cell.append(" ")
    cell.append_text(_value(value))
    return cell


def flow_view(facts: RunFacts, top: int | None = 40, pattern: str | None = None) -> RenderableType | None:
    """One row per module call (forward order), bars of the gradient reaching its output and of its parameters."""
    gh = facts.grad_health
    if gh is None:
        return None
    if not gh.measured:
        return Text(f"Gradient flow: not measured ({'; '.join(gh.notes)})", style="dim")
    shown = flow(facts, limit=top, pattern=pattern)
    act_scale = scale_of(r.act for r in shown.rows)
    param_scale = scale_of(r.params for r in shown.rows)
    t = light_table()
    t.add_column("module (call)", overflow="fold", ratio=1, min_width=_name_width([r.short for r in shown.rows]))
    t.add_column("‖g‖ at output", no_wrap=True)
    t.add_column("‖param grads‖", no_wrap=True)
    footnotes: list[Text] = []
    for r in shown.rows:
        if r.gap_before:
            t.add_row(Text(f"  … {r.gap_before} calls …", style="dim"), Text(""), Text(""))
        notes = list(r.marks)
        if r.nonfinite:
            made = next((i for i, m in enumerate(notes) if m.startswith("NaN/Inf made here")), None)
            if made is not None:
                notes[made] += f" ({r.nonfinite} in its output)"
            else:
                notes.insert(0, f"{r.nonfinite} NaN/Inf in its output")
        name = Text(r.short)
        if r.hidden:
            name.append(f" (+{r.hidden})", style="dim")
        if notes:  # a numbered mark in the row, the words below the table: rows stay one line at 80 columns
            style = "red" if any("NaN" in m for m in notes) else "yellow"
            name.append(f" ◀{len(footnotes) + 1}", style=style)
            footnotes.append(Text(f"◀{len(footnotes) + 1} {r.name}: {', '.join(notes)}", style=style))
        t.add_row(name, _bar_cell(r.act, act_scale, "cyan"), _bar_cell(r.params, param_scale, "magenta"))
    scales = []
    if act_scale:
        scales.append(f"output bars log10 {number(act_scale[0])} … {number(act_scale[1])}")
    if param_scale:
        scales.append(f"parameter bars log10 {number(param_scale[0])} … {number(param_scale[1])}")
    caption = "; ".join(scales + ([shown.note] if shown.note else [])) or None
    parts: list[RenderableType] = [
        Text(f"Gradient flow ({len(gh.calls)} module calls, forward order; ‖g‖ reaching each call's output and of "
             f"its parameters' gradients)", style="bold"),
        t if shown.rows else Text("no module call matches", style="dim"), *footnotes]
    if not gh.backward:
        parts.append(Text("no backward ran: only the forward's NaN/Inf checks", style="dim"))
    if caption:
        parts.append(Text(caption, style="dim"))
    return Group(*parts)


def ratio(param: ParamFact, g: ParamGrad | None) -> float | None:
    """‖g‖ / ‖w‖ (None when either is unknown or the weight is all zeros)."""
    if g is None or param.grad_norm is None or not g.weight_norm:
        return None
    return param.grad_norm / g.weight_norm


def _share(count: int | None, total: int) -> str:
    if count is None:
        return "-"
    if not count:
        return "0"
    share = count / total if total else 0.0
    return "100%" if count == total else f"{share:.1%}" if share >= 0.001 else f"{count}"


def param_rows(facts: RunFacts, gh: GradHealthFacts, pattern: str | None) -> list[tuple[ParamFact, ParamGrad | None]]:
    grads = {g.name: g for g in gh.parameters}
    rows = [(p, grads.get(p.name)) for p in facts.parameters
            if pattern is None or any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")
                                      for n in p.names)]
    return rows


def _concern(row: tuple[ParamFact, ParamGrad | None]) -> tuple[int, float]:
    """Sort key when rows are cut: non-finite first, then all-zero, then most zeros, then the rest."""
    p, g = row
    if g is None:
        return (4, 0.0)
    if g.nonfinite:
        return (0, 0.0)
    if g.zeros and g.zeros == g.numel:
        return (1, 0.0)
    return (2, -(g.zero_share or 0.0)) if g.zeros else (3, -(p.grad_norm or 0.0))


def param_table(facts: RunFacts, top: int | None = 40, pattern: str | None = None) -> RenderableType | None:
    gh = facts.grad_health
    if gh is None or not gh.measured or not gh.backward:
        return None
    rows = param_rows(facts, gh, pattern)
    hidden = 0
    if top and len(rows) > top:
        hidden = len(rows) - top
        rows = sorted(rows, key=_concern)[:top]
    t = light_table()
    # at least 16 columns, else what the figures leave: the figures never wrap, so a wider floor for long names
    # pushed the zeros and NaN/Inf columns off an 80-column terminal
    t.add_column("parameter", overflow="fold", ratio=1, min_width=16)
    t.add_column("‖g‖", justify="right", no_wrap=True)
    t.add_column("max|g|", justify="right", no_wrap=True)
    t.add_column("‖g‖/‖w‖", justify="right", no_wrap=True)
    t.add_column("zeros", justify="right", no_wrap=True)
    any_bad = any(g is not None and g.nonfinite for g in gh.parameters)
    if any_bad:
        t.add_column("NaN/Inf", justify="right", no_wrap=True)
    causes = zero_grad_causes(facts)
    for p, g in rows:
        cause = causes.get(p.name)
        zeros = Text(_share(g.zeros if g else None, p.numel))
        if cause:
            zeros.append(f" ({cause})", style="yellow")
        bad = g.nonfinite if g else None
        cells = [Text(p.name), _value(p.grad_norm), _value(g.max_abs if g else None), _value(ratio(p, g)), zeros]
        if any_bad:
            cells.append(Text("-" if bad is None else str(bad), style="bold red" if bad else "dim"))
        t.add_row(*cells)
    caption = "‖g‖/‖w‖: the update-to-weight scale of one SGD step at learning rate 1; zeros: exact zeros of the " \
              "gradient"
    if hidden:
        caption += f"; {hidden} more rows (--top to change, --format json for all)"
    title = f"Parameter gradients ({len(facts.parameters)}{'' if any_bad else '; no NaN/Inf'})"
    return Group(Text(title, style="bold"), t, Text(caption, style="dim"))


def grad_sections(report: InspectReport, top: int | None = 40, pattern: str | None = None) -> list[RenderableType]:
    """What ``--grads`` adds to the terminal report (nothing without it)."""
    facts = report.facts
    return [part for part in (flow_view(facts, top, pattern), param_table(facts, top, pattern)) if part is not None]
