"""The views of one run that every HTML report shows when its facts hold them: the memory timeline, the
anatomy of each peak, saved bytes by module call, checkpointing advice and the collapsed grad_fn graph.

``inspect``, ``freeze-check`` and ``compare-modes`` all carry full :class:`RunFacts` (compare-modes one per
mode), so they draw them with these functions rather than each with its own copy.
"""

from __future__ import annotations

from html import escape

from gradprobe.facts.memory import CATEGORY_LABEL, COUNTED, HELD, EventLog, LiveTensor, PeakAnatomy
from gradprobe.facts.run import RunFacts
from gradprobe.judges.anatomy import anatomies, replay
from gradprobe.judges.checkpoint import checkpoint_advice
from gradprobe.render.graph.collapse import FROZEN, TRAINABLE, UNUSED, collapse
from gradprobe.render.graph.dot import LEGEND, STYLE
from gradprobe.render.graph.export import title_of
from gradprobe.render.graph.svg import to_svg
from gradprobe.render.html.page import cell, table, zoomable
from gradprobe.render.memory.anatomy import SHORT, peak_place, short_op, where
from gradprobe.render.memory.series import timeline
from gradprobe.render.memory.timeline import timeline_svg
from gradprobe.units import human_bytes, shape_text

COLORS = {"gradients": "#c026d3", "saved": "#4f46e5", "outputs": "#16a34a", "temporaries": "#f59e0b"}
MAX_BOXES = 350  # the picture in the page: shallower module depth until it has at most this many boxes
TIMELINE_NOTE = ('<p class="muted small">Tensor bytes alive over the run, each column the most in its ops; shaded '
                 "bands are the outermost module calls. Hover for the op and module.</p>")


def timeline_chart(log: EventLog, top: int | None = None, columns: int = 480, height: int = 260) -> str:
    """The timeline of one event log as an SVG; ``top`` puts several charts on one vertical scale."""
    return timeline_svg(timeline(log, columns), height=height, top=top)


def _bar(a: PeakAnatomy) -> str:
    spans = "".join(
        f'<span style="width:{100 * a.category(c) / a.peak_bytes:.2f}%;background:{COLORS[c]}" '
        f'title="{escape(CATEGORY_LABEL[c])}: {escape(human_bytes(a.category(c)))}"></span>'
        for c in COUNTED if a.peak_bytes and a.category(c))
    return f'<div class="bar">{spans}</div>'


def _peak(a: PeakAnatomy, index: int) -> str:
    rows = [[cell(CATEGORY_LABEL[c]), cell(human_bytes(a.category(c)), a.category(c), "num"),
             cell(f"{a.category(c) / a.peak_bytes:.0%}" if a.peak_bytes else "-", None, "num")] for c in COUNTED]
    rows += [[cell(f"{CATEGORY_LABEL[c]} (held for the whole run)"), cell(human_bytes(a.category(c)), a.category(c),
                                                                             "num"), cell("", None, "num")]
             for c in HELD]
    top = [[cell(human_bytes(x.nbytes), x.nbytes, "num"), cell(f"{shape_text(x.shape)} {x.dtype}", None, "mono"),
            cell(f'<span title="{escape(_kind_tip(x))}">{escape(SHORT[x.category])}</span>', None, "", html=True),
            cell(("↩ " if x.phase == "backward" else "") + f"{where(x.module, x.call)} · {short_op(x.op)}")]
           for x in a.top]
    saved = "".join(f"<li><code>{escape(where(m.module, m.call))}</code> {escape(human_bytes(m.nbytes))}</li>"
                    for m in a.saved_by_module[:5])
    legend = "".join(f'<span><i style="background:{COLORS[c]}"></i>{escape(CATEGORY_LABEL[c])}</span>'
                     for c in COUNTED)
    return (f'<div><h3>{escape(a.phase)} peak: {escape(human_bytes(a.peak_bytes))}'
            f'{" (estimate)" if a.estimate else ""}</h3><div class="muted small">at {escape(peak_place(a))} · '
            f"{a.live_tensors} tensors alive</div>{_bar(a)}<div class=\"legend\">{legend}</div>"
            + table(f"peak-{index}", ["at the peak", ("bytes", "num"), ("share", "num")], rows, filter_=False,
                    sortable=False)
            + (f'<div class="small muted" style="margin-top:8px">saved for backward, by the module call that saved '
               f"it:</div><ul class=\"small\">{saved}</ul>" if saved else "")
            + f"<h3>Largest tensors alive at the {escape(a.phase)} peak</h3>"
            + table(f"top-{index}", [("bytes", "num"), "shape", "kind", "made in · by op (↩ backward)"], top,
                    filter_=False) + "</div>")


def _kind_tip(x: LiveTensor) -> str:
    saved = f", saved by {x.saved_by or '(model)'}" if x.saved_by is not None else ""
    return f"{CATEGORY_LABEL[x.category]}{saved}; made at op {x.op_index} in the {x.phase}"


def memory_section(f: RunFacts, off: str = "Memory trackers were off (--no-memory).") -> str:
    """Timeline, the anatomy of each peak, bytes by module call, checkpointing advice (what the facts hold)."""
    m = f.memory
    if m is None:
        return f'<p class="muted">{escape(off)}</p>'
    parts = []
    log = m.events
    if log is not None:
        r = replay(log)
        found = anatomies(log, top=10)
        if any(a.estimate for a in found):
            parts.append('<p><span class="pill info">estimate</span> recorded on the meta device: sizes as a real '
                         "run would allocate them, nothing allocated.</p>")
        parts.append(f"<h3>Timeline</h3>{TIMELINE_NOTE}{timeline_svg(timeline(log, 480, r))}")
        parts.append('<div class="peaks">' + "".join(_peak(a, i) for i, a in enumerate(found)) + "</div>")
        parts.append(f'<p class="muted small">event log: {log.ops} ops, {log.events} events, {log.storages} '
                     f"tensors, {log.nbytes / max(log.ops, 1):.0f} bytes per op kept</p>")
    saved = [x for x in m.by_module if x.saved_for_backward_bytes or x.output_bytes]
    if saved:
        rows = [[cell(where(x.module, x.call)), cell(human_bytes(x.saved_for_backward_bytes),
                                                     x.saved_for_backward_bytes, "num"),
                 cell(human_bytes(x.inside_saved_bytes), x.inside_saved_bytes, "num"),
                 cell(human_bytes(x.output_bytes), x.output_bytes, "num"),
                 cell(human_bytes(x.checkpoint_saving_bytes), x.checkpoint_saving_bytes or 0, "num")]
                for x in saved]
        parts.append("<h3>By module call</h3>" + table(
            "by-module", ["module (call)", ("saved (innermost)", "num"), ("saved inside", "num"), ("output", "num"),
                          ("checkpoint saving", "num")], rows, placeholder="filter modules…"))
    candidates, plan = checkpoint_advice(f, top=5)
    if plan is not None:
        share = plan.expected_saving_bytes / plan.saved_for_backward_bytes if plan.saved_for_backward_bytes else 0
        parts.append(f"<h3>Activation checkpointing</h3><p>Wrapping every <code>{escape(plan.module_type)}</code> "
                     f"call ({plan.calls}) in <code>torch.utils.checkpoint(use_reentrant=False)</code>: about "
                     f"<b>{escape(human_bytes(plan.expected_saving_bytes))}</b> less saved for backward ({share:.0%}),"
                     f" for one more forward of each inside backward.</p>")
        parts.append(table("checkpoint", ["module (call)", "type", ("saved inside", "num"),
                                          ("expected saving", "num")],
                           [[cell(where(c.module, c.call)), cell(c.module_type),
                             cell(human_bytes(c.inside_saved_bytes), c.inside_saved_bytes, "num"),
                             cell(human_bytes(c.expected_saving_bytes), c.expected_saving_bytes, "num")]
                            for c in candidates], filter_=False))
    return "".join(parts)


def graph_section(f: RunFacts, depth: int, lead: str = "") -> str:
    """The collapsed graph as inline SVG (shallower until it fits the page), with its legend; ``lead`` says
    whose run it is where the page has several."""
    if f.graph is None:
        return '<p class="muted">No grad_fn graph: no output had a grad_fn (or the graph walk was off).</p>'
    g = collapse(f, depth, max_params=120)
    used = depth
    while g is not None and len(g.nodes) > MAX_BOXES and used > 0:
        used -= 1
        g = collapse(f, used, max_params=120)
    assert g is not None
    svg, engine = to_svg(g, title_of(f, g))
    legend = "".join(f'<span><i style="background:{STYLE[s][0]};border:1px solid {STYLE[s][1]}"></i>'
                     f"{escape(LEGEND[s])}</span>" for s in (TRAINABLE, FROZEN, UNUSED))
    legend += (f'<span><i style="background:{STYLE["call"][0]};border:1px solid {STYLE["call"][1]}"></i>module call '
               f"(grad_fn nodes, bytes saved for backward)</span>")
    note = f" Shown at module depth {used} (deeper has over {MAX_BOXES} boxes)." if used != depth else ""
    layout = "Graphviz dot" if engine == "graphviz" else "networkx (Graphviz not installed)"
    return (f'<p class="muted small">{escape(lead)}The grad_fn graph collapsed by module call, data flowing down; '
            f"layout by {escape(layout)}. Hover a box for its details; <code>--graph FILE.svg|.dot|.mmd</code> writes "
            f"it alone.{escape(note)}</p><div class=\"legend\" style=\"margin-bottom:8px\">{legend}</div>"
            + zoomable("graph-box", svg))
