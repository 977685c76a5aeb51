"""``gradprobe inspect --format html``: summary, findings, memory (peak anatomy, timeline, checkpointing), the
grad_fn graph as a picture, and the parameter, tensor and buffer tables."""

from __future__ import annotations

from html import escape

from gradprobe.facts.memory import CATEGORY_LABEL, COUNTED, HELD, LiveTensor, PeakAnatomy
from gradprobe.facts.run import InspectReport, RunFacts
from gradprobe.judges.anatomy import anatomies, replay
from gradprobe.judges.checkpoint import checkpoint_advice
from gradprobe.render.graph.collapse import FROZEN, TRAINABLE, UNUSED, collapse, param_state
from gradprobe.render.graph.dot import LEGEND, STYLE
from gradprobe.render.graph.export import title_of
from gradprobe.render.graph.svg import to_svg
from gradprobe.render.html.page import (
    Section,
    cards,
    cell,
    findings_html,
    key_values,
    page,
    table,
    zoomable,
)
from gradprobe.render.memory.anatomy import SHORT, peak_place, short_op, where
from gradprobe.render.memory.series import timeline
from gradprobe.render.memory.timeline import timeline_svg
from gradprobe.units import human_bytes, human_count, seconds, shape_text

COLORS = {"gradients": "#c026d3", "saved": "#4f46e5", "outputs": "#16a34a", "temporaries": "#f59e0b"}
MAX_BOXES = 350  # the picture in the page: shallower module depth until it has at most this many boxes


def _summary(report: InspectReport) -> str:
    f = report.facts
    trainable = [p for p in f.parameters if p.requires_grad]
    m = f.memory
    counts = {s: sum(x.severity == s for x in report.findings) for s in ("error", "warning", "info")}
    items = [
        ("parameters", human_count(sum(p.numel for p in f.parameters)),
         f"{len(f.parameters)} tensors · {len(trainable)} trainable, {len(f.parameters) - len(trainable)} frozen"),
        ("findings", str(len(report.findings)), f"{counts['error']} errors · {counts['warning']} warnings · "
                                                  f"{counts['info']} info"),
    ]
    if m is not None:
        items += [("forward peak", human_bytes(m.forward_peak_bytes), "tensor bytes created in the run"),
                  ("backward peak", human_bytes(m.backward_peak_bytes), "gradients included"),
                  ("saved for backward", human_bytes(m.saved_for_backward_bytes), "kept by autograd after forward")]
    if f.graph is not None:
        items.append(("grad_fn graph", human_count(f.graph.nodes), f"nodes · depth {f.graph.depth}"))
    pairs = [("torch / device", f"{f.torch_version} / {f.device}"), ("mode", f"{f.mode} + {f.grad_mode}"),
             ("loss", "-" if f.loss is None else f"{f.loss:.6g}"),
             ("backward", "ran" if f.backward else f"not run: {f.backward_skipped_reason}")]
    if f.forward_time_s is not None:
        pairs.append(("time", f"forward {seconds(f.forward_time_s)}, backward {seconds(f.backward_time_s)}"))
    for o in f.outputs[:4]:
        pairs.append((o.path, f"{shape_text(o.shape)} {o.dtype} · requires_grad={o.requires_grad} · "
                              f"grad_fn={o.grad_fn} · is_inference={o.is_inference}"))
    pairs += [("note", n) for n in f.notes] + [("skipped", s) for s in f.skipped]
    if m is not None:
        pairs.append(("memory method", m.method))
    return cards(items) + key_values(pairs)


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


def _memory(f: RunFacts) -> str:
    m = f.memory
    if m is None:
        return '<p class="muted">Memory trackers were off (--no-memory).</p>'
    parts = []
    log = m.events
    if log is not None:
        r = replay(log)
        found = anatomies(log, top=10)
        if any(a.estimate for a in found):
            parts.append('<p><span class="pill info">estimate</span> recorded on the meta device: sizes as a real '
                         "run would allocate them, nothing allocated.</p>")
        parts.append('<h3>Timeline</h3><p class="muted small">Tensor bytes alive over the run, each column the most '
                     "in its ops; shaded bands are the outermost module calls. Hover for the op and module.</p>")
        parts.append(timeline_svg(timeline(log, 480, r)))
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


def graph_section(f: RunFacts, depth: int) -> str:
    """The collapsed graph as inline SVG (shallower until it fits the page), with its legend."""
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
    return (f'<p class="muted small">The grad_fn graph collapsed by module call, data flowing down; layout by '
            f"{escape(layout)}. Hover a box for its details; <code>--graph FILE.svg|.dot|.mmd</code> writes it "
            f"alone.{escape(note)}</p><div class=\"legend\" style=\"margin-bottom:8px\">{legend}</div>"
            + zoomable("graph-box", svg))


def _parameters(f: RunFacts) -> str:
    reached = f.graph.reached_params if f.graph is not None else frozenset()
    rows = []
    for p in f.parameters:
        state = param_state(p, reached) if f.graph is not None else (TRAINABLE if p.requires_grad else FROZEN)
        rows.append([cell(", ".join(p.names), None, "mono"), cell(shape_text(p.shape), p.numel, "mono"),
                     cell(p.dtype), cell(f'<span class="pill {state}">{state}</span>', None, "", html=True),
                     cell("-" if p.grad is None else p.grad.value),
                     cell("-" if p.grad_norm is None else f"{p.grad_norm:.4g}",
                          p.grad_norm if p.grad_norm is not None else -1, "num"),
                     cell(p.module or "(model)"), cell(human_bytes(p.nbytes), p.nbytes, "num")])
    return table("parameters", ["name", "shape", "dtype", "state", "grad", ("‖grad‖", "num"), "module",
                                ("bytes", "num")], rows, placeholder="filter parameters…")


def _tensors(f: RunFacts) -> str:
    rows = [[cell(where(t.module, t.call)), cell(t.path, None, "mono"), cell(shape_text(t.shape), t.nbytes, "mono"),
             cell(t.dtype), cell("yes" if t.requires_grad else "no"), cell(t.grad_fn or "None", None, "mono"),
             cell("yes" if t.is_inference else "no"), cell(human_bytes(t.nbytes), t.nbytes, "num")]
            for t in f.tensors]
    return table("tensors", ["module (call)", "output", "shape", "dtype", "requires_grad", "grad_fn", "inference",
                             ("bytes", "num")], rows, placeholder="filter module outputs…")


def _buffers(f: RunFacts) -> str:
    rows = [[cell(b.name, None, "mono"), cell(shape_text(b.shape), None, "mono"), cell(b.dtype),
             cell("?" if b.changed is None else ("yes" if b.changed else "no"))] for b in f.buffers]
    return table("buffers", ["name", "shape", "dtype", "changed by the forward"], rows, placeholder="filter buffers…")


def inspect_html(report: InspectReport, depth: int | None = None) -> str:
    """The whole report as one self-contained page."""
    f = report.facts
    depth = f.graph.display_depth if depth is None and f.graph is not None else (depth or 8)
    sections = [Section("summary", "Summary", _summary(report)),
                Section("findings", f"Findings ({len(report.findings)})",
                        findings_html(report.findings, "autograd sees what a training run expects.")),
                Section("memory", "Memory", _memory(f)),
                Section("graph", "grad_fn graph", graph_section(f, depth)),
                Section("parameters", f"Parameters ({len(f.parameters)})", _parameters(f))]
    if f.tensors:
        sections.append(Section("tensors", f"Module outputs ({len(f.tensors)})", _tensors(f)))
    if f.buffers:
        sections.append(Section("buffers", f"Buffers ({len(f.buffers)})", _buffers(f)))
    return page(f"gradprobe inspect `{f.target}`", f"{f.mode} + {f.grad_mode} on {f.device} · torch {f.torch_version}",
                sections, "gradprobe · tensor bytes are storages seen by a TorchDispatchMode, not allocator "
                          "workspaces")
