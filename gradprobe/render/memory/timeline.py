"""The memory timeline drawn: in characters for the terminal (one line per phase, readable at 80 columns
without colour), and as an SVG chart for the HTML report (the peak marked, a tooltip on every column)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from gradprobe.render.memory.series import Column, PhaseSeries
from gradprobe.units import human_bytes

BLOCKS = " ▁▂▃▄▅▆▇█"
LABEL = 9  # "backward " column


def _level(value: int, top: int) -> str:
    if top <= 0 or value <= 0:
        return BLOCKS[0] if value <= 0 else BLOCKS[1]
    return BLOCKS[max(1, min(8, round(8 * value / top)))]


def _ruler(columns: Sequence[Column]) -> str:
    """Where each outermost module call begins: ``|h.0      |h.1``, names cut to the room before the next."""
    out = [" "] * len(columns)
    starts = [i for i, c in enumerate(columns) if c.section is not None
              and (i == 0 or columns[i - 1].section != c.section)]
    for k, i in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(columns)
        text = "|" + (columns[i].section or "")
        text = text[: max(1, end - i - (1 if k + 1 < len(starts) else 0))]
        for j, ch in enumerate(text):
            out[i + j] = ch
    return "".join(out).rstrip()


def timeline_text(series: Sequence[PhaseSeries], width: int = 80) -> list[str]:
    """Lines of the terminal chart: per phase the chart and its module ruler, then where the peak was.

    ``series`` must have been made for ``chart_width(width)`` columns.  Both phases share one vertical scale.
    """
    if not series:
        return []
    top = max(s.peak for s in series)
    lines = [f"Memory timeline (tensor bytes alive, most per column; █ = {human_bytes(top)})"]
    best = max(series, key=lambda s: s.peak)
    for s in series:
        chart = "".join(_level(c.high, top) for c in s.columns)
        lines.append(f"{s.phase:<{LABEL}}{chart}  {human_bytes(s.peak)}")
        if s is best:
            lines.append(_peak_mark(s, width))
        ruler = _ruler(s.columns)
        if ruler.strip():
            lines.append(" " * LABEL + ruler)
    return lines


def _peak_mark(s: PhaseSeries, width: int) -> str:
    """``^ peak 258.5 KiB at op 240 mm, lm_head`` under the peak column (the text left of it if it does not fit)."""
    col = s.columns[s.peak_column]
    where = "" if col.module is None else f", {col.module or '(model)'}" + (f" #{col.call}" if col.call else "")
    place = f"when the {s.phase} began" if col.event < 0 else f"op {col.op} {col.op_name.removeprefix('aten.')}{where}"
    text = f"peak {human_bytes(s.peak)} at {place}"
    at = LABEL + s.peak_column
    if at + 2 + len(text) <= width:
        return " " * at + "^ " + text
    if len(text) + 2 <= at:
        return " " * (at - len(text) - 1) + text + " ^"
    room = max(width - at - 2, 8)
    return " " * at + "^ " + text[: room - 1] + "…"


def chart_width(width: int = 80) -> int:
    """Columns of chart that fit ``width`` characters beside the label and the peak figure."""
    return max(10, width - LABEL - 12)


# ---------------------------------------------------------------------------------------------- SVG

_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 64, 16, 28, 44
_BAND = ("#eef2f7", "#f8fafc")


def _ticks(top: int, count: int = 4) -> list[int]:
    if top <= 0:
        return [0]
    return [round(top * i / count) for i in range(count + 1)]


def _tip(c: Column, phase: str) -> str:
    where = "outside every module call" if c.module is None else (
        ("backward of " if phase == "backward" else "") + (c.module or "(model)") + (f" #{c.call}" if c.call else ""))
    at = "phase start" if c.event < 0 else f"op {c.op} {c.op_name}"
    return f"{phase}: {human_bytes(c.high)} alive at {at} — {where}"


def timeline_svg(series: Sequence[PhaseSeries], width: int = 960, height: int = 260,
                 top: int | None = None) -> str:
    """An inline SVG: both phases side by side on one scale, module calls as bands, the peak marked, and a
    ``<title>`` tooltip (op and module) on every column.  ``top``: the scale's top in bytes, shared by several charts
    (at least the largest peak).  Each column carries its bytes (``data-bytes``) so a reader or a test can check
    the drawn maximum against the reported peak."""
    if not series:
        return ""
    top = max(top or 0, *(s.peak for s in series)) or 1
    total = sum(len(s.columns) for s in series)
    plot_w = width - _PAD_LEFT - _PAD_RIGHT
    plot_h = height - _PAD_TOP - _PAD_BOTTOM
    step = plot_w / max(total, 1)

    def y(v: int) -> float:
        return _PAD_TOP + plot_h - plot_h * v / top

    best = max(series, key=lambda s: s.peak)
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="memory timeline" data-peak="{best.peak}">']
    for v in _ticks(top):
        parts.append(f'<line x1="{_PAD_LEFT}" x2="{width - _PAD_RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'class="grid"/><text x="{_PAD_LEFT - 6}" y="{y(v) + 4:.1f}" class="axis" '
                     f'text-anchor="end">{escape(human_bytes(v))}</text>')
    x0 = 0
    peak_xy = (0.0, 0.0)
    for s in series:
        cols = s.columns
        # module bands: one per run of columns in the same outermost call
        start = 0
        band = 0
        for i in range(1, len(cols) + 1):
            if i == len(cols) or cols[i].section != cols[start].section:
                if cols[start].section is not None:
                    bx = _PAD_LEFT + (x0 + start) * step
                    parts.append(f'<rect class="band" x="{bx:.1f}" y="{_PAD_TOP}" width="{(i - start) * step:.1f}" '
                                 f'height="{plot_h}" fill="{_BAND[band % 2]}"><title>{escape(s.phase)}: '
                                 f'{escape(cols[start].section or "")}</title></rect>')
                    band += 1
                start = i
        points = [f"{_PAD_LEFT + (x0 + i) * step:.1f},{y(c.high):.1f} {_PAD_LEFT + (x0 + i + 1) * step:.1f},"
                  f"{y(c.high):.1f}" for i, c in enumerate(cols)]
        left, right = _PAD_LEFT + x0 * step, _PAD_LEFT + (x0 + len(cols)) * step
        parts.append(f'<polygon class="area {escape(s.phase)}" points="{left:.1f},{y(0):.1f} {" ".join(points)} '
                     f'{right:.1f},{y(0):.1f}"/>')
        for i, c in enumerate(cols):
            parts.append(f'<rect class="hit" data-phase="{escape(s.phase)}" data-bytes="{c.high}" '
                         f'x="{_PAD_LEFT + (x0 + i) * step:.2f}" y="{_PAD_TOP}" '
                         f'width="{max(step, 0.5):.2f}" height="{plot_h}"><title>{escape(_tip(c, s.phase))}'
                         f'</title></rect>')
        parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 22}" class="phase" '
                     f'text-anchor="middle">{escape(s.phase)} · ops {s.first_op}–{max(s.end_op - 1, s.first_op)}'
                     f'</text>')
        if x0:
            parts.append(f'<line class="boundary" x1="{left:.1f}" x2="{left:.1f}" y1="{_PAD_TOP - 8}" '
                         f'y2="{_PAD_TOP + plot_h}"/>')
        if s is best:
            peak_xy = (_PAD_LEFT + (x0 + s.peak_column + 0.5) * step, y(s.peak))
        x0 += len(cols)
    px, py = peak_xy
    col = best.columns[best.peak_column]
    anchor = "end" if px > width * 0.7 else "start"
    dx = -8 if anchor == "end" else 8
    parts.append(f'<g class="peak"><circle cx="{px:.1f}" cy="{py:.1f}" r="4.5"><title>{escape(_tip(col, best.phase))}'
                 f'</title></circle><text x="{px + dx:.1f}" y="{max(py - 8, 12):.1f}" text-anchor="{anchor}">'
                 f'peak {escape(human_bytes(best.peak))}</text></g>')
    parts.append(f'<line class="axisline" x1="{_PAD_LEFT}" x2="{width - _PAD_RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    parts.append("</svg>")
    return "".join(parts)
