"""``inspect --grads`` in the HTML report: the "Gradient flow" section.

Where the first NaN/Inf came from (the judges' finding, with the op's input figures the facts hold), the
gradient flow as an SVG chart (one row per module call in forward order, top to bottom, as the terminal view
shows it: a bar on a log10 scale of the gradient norm reaching its output and of its parameters' gradients,
the picture ``plot_grad_flow`` draws by hand), and the per-parameter gradient table (‖g‖, max |g|, the
update-to-weight scale ‖g‖/‖w‖, exact zeros, NaN/Inf), sortable and filterable.
"""

from __future__ import annotations

import math
from html import escape

from gradprobe.facts.grad_health import GradHealthFacts, NonfiniteOrigin
from gradprobe.facts.run import InspectReport, RunFacts
from gradprobe.render.html.page import cell, key_values, table
from gradprobe.render.inspect.grad_flow import ratio
from gradprobe.render.inspect.grad_rows import FlowRow, flow, number, scale_of

ROWS = 150  # rows drawn (first, last and marked rows kept beyond it, as in the terminal view)
NONFINITE_CODES = ("nonfinite-forward", "nonfinite-backward")
_NAME_W, _BAR_W, _NUM_W, _MARK_W, _ROW_H, _HEAD = 300, 230, 64, 240, 18, 34


def _sort(value: float | None) -> float:
    """A sort key for a figure: NaN/Inf above every number, missing below zero."""
    if value is None:
        return -1.0
    return 1e308 if not math.isfinite(value) else value


def _x(value: float, scale: tuple[float, float]) -> float:
    """Bar length on a log10 scale between the column's smallest and largest value (the smallest gets 3%)."""
    lo, hi = scale
    span = math.log10(hi) - math.log10(lo)
    share = 1.0 if span <= 0 else (math.log10(value) - math.log10(lo)) / span
    return _BAR_W * (0.03 + 0.97 * max(0.0, min(share, 1.0)))


def _bar(value: float | None, scale: tuple[float, float] | None, x0: float, y: float, kind: str) -> str:
    if value is None:
        return ""
    bad = not math.isfinite(value)
    if bad or scale is None or value <= 0:
        width, cls = (_BAR_W if bad else 1.5), ("bad" if bad else kind)
    else:
        width, cls = _x(value, scale), kind
    return (f'<rect class="{cls}" data-value="{number(value)}" x="{x0:.1f}" y="{y + 3:.1f}" width="{width:.1f}" '
            f'height="{_ROW_H - 6}" rx="2"/><text class="axis{" nan" if bad else ""}" x="{x0 + _BAR_W + 6:.1f}" '
            f'y="{y + _ROW_H - 5:.1f}">{number(value)}</text>')


def _notes(r: FlowRow) -> str:
    notes = ([f"{r.nonfinite} NaN/Inf in its output"] if r.nonfinite else []) + list(r.marks)
    return ", ".join(notes)


def flow_svg(facts: RunFacts, limit: int = ROWS) -> str:
    """The gradient-flow chart; '' when there is nothing to draw."""
    shown = flow(facts, limit=limit)
    if not shown.rows:
        return ""
    act, par = scale_of(r.act for r in shown.rows), scale_of(r.params for r in shown.rows)
    lines = len(shown.rows) + sum(1 for r in shown.rows if r.gap_before)
    width, height = _NAME_W + 2 * (_BAR_W + _NUM_W + 10) + _MARK_W, _HEAD + lines * _ROW_H + 8
    xa, xp = _NAME_W + 10, _NAME_W + _BAR_W + _NUM_W + 20
    parts = [f'<svg class="gradflow" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="gradient flow">',
             f'<text class="head" x="{xa}" y="14">‖g‖ reaching the output (log10)</text>',
             f'<text class="head" x="{xp}" y="14">‖param grads‖ (log10)</text>']
    for x0, scale in ((xa, act), (xp, par)):
        if scale is not None:
            parts.append(f'<text class="axis" x="{x0}" y="28">{number(scale[0])}</text><text class="axis" '
                         f'x="{x0 + _BAR_W}" y="28" text-anchor="end">{number(scale[1])}</text>')
    y = float(_HEAD)
    for r in shown.rows:
        if r.gap_before:
            parts.append(f'<text class="axis" x="8" y="{y + _ROW_H - 5:.1f}">… {r.gap_before} calls …</text>')
            y += _ROW_H
        notes = _notes(r)
        name = r.short + (f" (+{r.hidden})" if r.hidden else "")
        tip = f"{r.name}: ‖g‖ at output {number(r.act)}, ‖param grads‖ {number(r.params)}" + \
            (f"; {notes}" if notes else "")
        parts.append(f'<g class="row" data-index="{r.index}"><rect class="hit" x="0" y="{y:.1f}" width="{width}" '
                     f'height="{_ROW_H}"><title>{escape(tip)}</title></rect>'
                     f'<line class="grid" x1="{xa}" x2="{xa}" y1="{y:.1f}" y2="{y + _ROW_H:.1f}"/>'
                     f'<line class="grid" x1="{xp}" x2="{xp}" y1="{y:.1f}" y2="{y + _ROW_H:.1f}"/>'
                     f'<text class="name" x="8" y="{y + _ROW_H - 5:.1f}" xml:space="preserve">'
                     f"{escape(_fit(name, 40))}</text>"
                     + _bar(r.act, act, xa, y, "act") + _bar(r.params, par, xp, y, "par")
                     + (f'<text class="mark{" nan" if "NaN" in notes else ""}" x="{xp + _BAR_W + _NUM_W + 10}" '
                        f'y="{y + _ROW_H - 5:.1f}">{escape(_fit(notes, 36))}</text>' if notes else "") + "</g>")
        y += _ROW_H
    parts.append("</svg>")
    caption = f'<p class="muted small">{escape(shown.note)}</p>' if shown.note else ""
    return "".join(parts) + caption


def _fit(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 1] + "…"


def _origin(gh: GradHealthFacts, o: NonfiniteOrigin) -> str:
    """The op's input figures behind the first forward NaN/Inf, as the facts hold them."""
    pairs = [("op", o.op or "not located" + (f" ({o.note})" if o.note else ""))]
    if o.call is not None and 0 <= o.call < len(gh.calls):
        c = gh.calls[o.call]
        pairs.insert(0, ("module call", f"{c.label} ({c.type})"))
    for i, s in enumerate(o.inputs[:3]):
        pairs.append((f"input {i}", f"{s.dtype} {list(s.shape)}: min {number(s.min)}, max {number(s.max)}, "
                                    f"{s.negatives} negative, {s.zeros} zero, {s.nan} NaN, {s.inf} Inf "
                                    f"of {s.numel}"))
    if o.made_nan or o.made_inf:
        pairs.append(("made", f"{o.made_nan} NaN, {o.made_inf} Inf ({o.dtype or '?'})"))
    if o.wide_max_abs is not None:
        pairs.append(("recomputed in float64", f"largest |result| {number(o.wide_max_abs)}"))
    return key_values(pairs)


def nonfinite_html(report: InspectReport) -> str:
    """Where the first NaN/Inf was made: the finding that says so, and the figures it rests on."""
    gh = report.facts.grad_health
    found = [f for f in report.findings if f.code in NONFINITE_CODES]
    if gh is None or not found:
        return '<p><span class="pill ok">finite</span> no module output or gradient held NaN/Inf.</p>' \
            if gh is not None and gh.measured else ""
    f = found[0]
    body = (f'<div class="callout" id="nonfinite-origin"><div class="head"><span class="pill error">{escape(f.code)}'
            f"</span> <code>{escape(f.subject)}</code></div><div>{escape(f.message)}</div>"
            + (f'<div class="fix muted">try: {escape(f.hint)}</div>' if f.hint else ""))
    if gh.forward_origin is not None:
        body += _origin(gh, gh.forward_origin)
    elif gh.backward_nodes:
        n = gh.backward_nodes[0]
        made = gh.calls[n.call].label if n.call is not None and 0 <= n.call < len(gh.calls) else "-"
        body += key_values([("backward node", n.kind), ("made in", made), ("NaN/Inf returned", str(n.nonfinite_out))])
    return body + "</div>"


def _share(count: int | None, total: int) -> tuple[str, float]:
    if count is None:
        return "-", -1.0
    share = count / total if total else 0.0
    return (f"{share:.1%}" if count else "0"), share


def param_table(facts: RunFacts) -> str:
    gh = facts.grad_health
    assert gh is not None
    grads = {g.name: g for g in gh.parameters}
    rows = []
    for p in facts.parameters:
        g = grads.get(p.name)
        r = ratio(p, g)
        zeros, share = _share(g.zeros if g else None, p.numel)
        bad = g.nonfinite if g else None
        rows.append([cell(p.name, None, "mono"), cell(number(p.grad_norm), _sort(p.grad_norm), "num"),
                     cell(number(g.max_abs if g else None), _sort(g.max_abs if g else None), "num"),
                     cell(number(r), _sort(r), "num"), cell(zeros, share, "num"),
                     cell("-" if bad is None else str(bad), -1 if bad is None else bad, "num bad" if bad else "num")])
    return table("grad-parameters", ["parameter", ("‖g‖", "num"), ("max |g|", "num"), ("‖g‖/‖w‖", "num"),
                                     ("zeros", "num"), ("NaN/Inf", "num")], rows, placeholder="filter parameters…") \
        + ('<p class="muted small">‖g‖/‖w‖: the update-to-weight scale of one SGD step at learning rate 1; zeros: '
           "share of exactly-zero gradient values.</p>")


def grad_health_section(report: InspectReport) -> str:
    """The whole section ('' without ``--grads``)."""
    facts = report.facts
    gh = facts.grad_health
    if gh is None:
        return ""
    if not gh.measured:
        return f'<p class="muted">Not measured: {escape("; ".join(gh.notes))}</p>'
    parts = [nonfinite_html(report),
             f"<h3>Gradient flow</h3><p class=\"muted small\">{len(gh.calls)} module calls in forward order, top to "
             f"bottom: the norm of the gradient that reached each call's output (blue) and of its parameters' "
             f"gradients (purple; a collapsed block's covers every parameter under it), each on a log10 scale "
             f"between its column's smallest and largest value. Red: NaN/Inf. Hover a row for its figures.</p>",
             flow_svg(facts)]
    if not gh.backward:
        parts.append('<p class="muted">No backward ran: only the forward\'s NaN/Inf checks.</p>')
    else:
        parts.append(f"<h3>Parameter gradients ({len(facts.parameters)})</h3>" + param_table(facts))
    return "".join(parts)
