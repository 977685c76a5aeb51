"""``gradprobe compare-modes --format html``: the verdict, findings, the modes side by side (one column per
train/eval x grad-mode combination, one row per measure, with bars for memory and time), a memory timeline per
mode on one shared scale (small multiples), and the grad_fn graph of the reference mode's run (or of the first
mode that built one) when the rows kept their runs' facts (the CLI asks for them with ``--format html``)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from gradprobe.facts.compare import CompareReport, ModeRow
from gradprobe.render.html.page import Section, cards, findings_html, key_values, page
from gradprobe.render.html.run_views import TIMELINE_NOTE, graph_section, timeline_chart
from gradprobe.units import human_bytes, seconds


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _diff(r: ModeRow) -> str:
    if r.max_abs_diff is None:
        return "-"
    return "0" if r.max_abs_diff == 0 else f"{r.max_abs_diff:.3g}"


MEASURES: list[tuple[str, Callable[[ModeRow], Any], str]] = [
    ("runs", lambda r: "ok" if r.ok else f"failed: {r.error}", "text"),
    ("output requires grad", lambda r: _yes(r.output_requires_grad), "text"),
    ("output grad_fn", lambda r: r.output_grad_fn or "-", "text"),
    ("inference tensors", lambda r: _yes(r.is_inference), "text"),
    ("grad_fn nodes", lambda r: r.graph_nodes, "count"),
    ("saved for backward", lambda r: r.saved_for_backward_bytes, "bytes"),
    ("forward peak", lambda r: r.forward_peak_bytes, "bytes"),
    ("forward time (median)", lambda r: r.time_s, "time"),
    ("max |diff| vs reference", _diff, "text"),
    ("buffers changed", lambda r: ", ".join(r.buffers_changed) or "-", "text"),
    ("backward possible", lambda r: _yes(r.backward_possible), "text"),
    ("backward peak", lambda r: r.backward_peak_bytes, "bytes"),
    ("backward time", lambda r: r.backward_time_s, "time"),
]


def _cell(value: Any, kind: str, top: float) -> str:
    if value is None:
        return '<td class="num muted">-</td>'
    if kind == "text":
        return f"<td>{escape(str(value))}</td>"
    text = human_bytes(value) if kind == "bytes" else seconds(value) if kind == "time" else f"{value:,}"
    width = 100 * value / top if top else 0
    return (f'<td class="num">{escape(text)}<div style="height:4px;border-radius:2px;margin-top:3px;'
            f'background:#c7d2fe;width:{width:.1f}%"></div></td>')


def modes_table(report: CompareReport) -> str:
    rows = list(report.rows)
    head = "".join(f"<th>{escape(r.label)}</th>" for r in rows)
    body = []
    for title, get, kind in MEASURES:
        values = [get(r) if r.ok or title == "runs" else None for r in rows]
        if all(v is None for v in values):
            continue
        numbers = [v for v in values if isinstance(v, (int, float))]
        top = max(numbers, default=0)
        differs = kind == "text" and len({str(v) for v in values if v is not None}) > 1
        cells = "".join(_cell(v, kind, top) for v in values)
        if differs:
            cells = cells.replace("<td>", '<td class="diff">')
        body.append(f"<tr><td><b>{escape(title)}</b></td>{cells}</tr>")
    return (f'<div class="scroll"><table class="modes"><thead><tr><th>measure</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div><p class=\"small muted\">Shaded cells: the modes differ. "
            f"Bars: the measure relative to the largest mode.</p>")


def timelines(report: CompareReport) -> str:
    """One timeline per mode that recorded an event log, all on the vertical scale of the largest peak."""
    logged = [(r, r.run.memory) for r in report.rows if r.ok and r.run is not None and r.run.memory is not None
              and r.run.memory.events is not None]
    if not logged:
        return ""
    top = max(max(m.forward_peak_bytes or 0, m.backward_peak_bytes or 0) for _, m in logged)
    charts = []
    for r, m in logged:
        assert m.events is not None
        peaks = f"forward peak {human_bytes(m.forward_peak_bytes)}"
        if r.run is not None and r.run.backward:
            peaks += f" · backward peak {human_bytes(m.backward_peak_bytes)}"
        chart = timeline_chart(m.events, top, height=210)
        charts.append(f'<div class="multiple" data-mode="{escape(r.label)}"><h3>{escape(r.label)} '
                      f'<span class="muted small">{escape(peaks)}</span></h3>{chart}</div>')
    drawn = {r.label for r, _ in logged}
    skipped = [r.label for r in report.rows if r.label not in drawn]
    note = f'<p class="muted small">No timeline for {escape(", ".join(skipped))} (the run failed).</p>' \
        if skipped else ""
    return (TIMELINE_NOTE.replace("over the run,", "over each mode's tracked run, on one scale,")
            + f'<div class="multiples">{"".join(charts)}</div>{note}')


def _graph(report: CompareReport) -> str:
    """The reference mode's graph; without one (no_grad builds none), the first mode's that has one."""
    runs = [r for r in report.rows if r.ok and r.run is not None]
    with_graph = [r for r in runs if r.run is not None and r.run.graph is not None and r.run.graph.nodes]
    if not runs:
        return ""
    ref = next((r for r in with_graph if r.label == report.comparison.reference), None)
    chosen = ref or (with_graph[0] if with_graph else None)
    if chosen is None or chosen.run is None:
        return '<p class="muted">No mode built a grad_fn graph (no output of any mode had a grad_fn).</p>'
    reference = report.comparison.reference or "-"
    why = "the reference mode" if chosen is ref else \
        f"the reference {reference} built none; the first mode that did" if any(r.label == reference for r in runs) \
        else f"the first mode that built a graph; the reference {reference} was not one of the modes run"
    lead = f"{chosen.label} ({why}). "
    return graph_section(chosen.run, chosen.run.graph.display_depth if chosen.run.graph else 8, lead)


def compare_html(report: CompareReport) -> str:
    c = report.comparison
    ok = [r for r in report.rows if r.ok]
    peaks = [r.forward_peak_bytes for r in ok if r.forward_peak_bytes is not None]
    summary = cards([
        ("modes", str(len(report.rows)), f"{len(ok)} ran"),
        ("findings", str(len(report.findings)), f"{sum(f.severity == 'error' for f in report.findings)} errors"),
        ("forward peak", human_bytes(max(peaks)) if peaks else "-", "largest over the modes"),
    ]) + key_values([("torch / device", f"{c.torch_version} / {c.device}"), ("seed", str(c.seed)),
                     ("timed repeats", str(c.repeat)), ("reference", c.reference or "-")]
                    + [("note", n) for n in (*c.notes, *getattr(report, "notes", ()))])
    verdict = "".join(f"<li>{escape(v)}</li>" for v in report.verdict)
    sections = [Section("summary", "Summary", summary)]
    if verdict:
        sections.append(Section("verdict", "Verdict", f'<ul class="verdict">{verdict}</ul>'))
    sections += [Section("findings", f"Findings ({len(report.findings)})", findings_html(report.findings)),
                 Section("modes", "Modes side by side", modes_table(report))]
    charts = timelines(report)
    if charts:
        sections.append(Section("timelines", "Memory timeline per mode", charts))
    graph = _graph(report)
    if graph:
        sections.append(Section("graph", "grad_fn graph", graph))
    return page(f"gradprobe compare-modes `{c.target}`", f"{len(report.rows)} train/eval × grad-mode combinations on "
                f"{c.device} · torch {c.torch_version}", sections, "gradprobe compare-modes")
