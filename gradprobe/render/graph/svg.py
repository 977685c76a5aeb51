"""The collapsed grad_fn graph as SVG: laid out by Graphviz's ``dot`` when it is installed, else by networkx.

Graphviz is the reference layered layout (clusters, edge routing, tooltips); it is a system binary, so it may
be missing.  networkx is always there (PyTorch depends on it) and has the two pieces a layered picture needs:
``topological_generations`` for the layers (on the condensation, so cycles between collapsed module calls
are fine) and ``multipartite_layout`` to place them.  gradprobe only draws the boxes and lines it computes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html import escape

from gradprobe.errors import GradprobeError
from gradprobe.render.graph.collapse import FROZEN, UNUSED, Collapsed, Node
from gradprobe.render.graph.dot import LEGEND, STYLE, node_lines, to_dot, tooltip

DOT_TIMEOUT_S = 120


def dot_binary() -> str | None:
    return shutil.which("dot")


def to_svg(g: Collapsed, title: str = "", engine: str | None = None) -> tuple[str, str]:
    """``(svg, engine)``: the picture and which layout made it ("graphviz" or "networkx")."""
    engine = engine or ("graphviz" if dot_binary() else "networkx")
    if engine == "graphviz":
        return _graphviz(g, title), engine
    return _networkx(g, title), engine


def _graphviz(g: Collapsed, title: str) -> str:
    binary = dot_binary()
    if binary is None:
        raise GradprobeError("Graphviz's dot is not installed")
    try:
        proc = subprocess.run([binary, "-Tsvg"], input=to_dot(g, title), capture_output=True, text=True,
                              timeout=DOT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise GradprobeError(f"Graphviz's dot took over {DOT_TIMEOUT_S} s for {len(g.nodes)} boxes; use a smaller "
                             f"--depth or write .dot/.mmd") from exc
    if proc.returncode != 0:
        raise GradprobeError(f"Graphviz's dot failed: {(proc.stderr.strip().splitlines() or ['?'])[0]}")
    return inline(proc.stdout)


def inline(svg: str) -> str:
    """SVG text without the XML prolog and doctype, to sit inside an HTML page or a file of its own."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


# ------------------------------------------------------------------------------------------ networkx

_CHAR_W, _LINE_H, _PAD = 6.2, 13, 8
_GAP_X, _GAP_Y = 18, 46


def _size(n: Node) -> tuple[float, float]:
    lines = node_lines(n)
    return max(len(x) for x in lines) * _CHAR_W + 2 * _PAD, len(lines) * _LINE_H + 2 * _PAD - 2


def layers(g: Collapsed) -> list[list[str]]:
    """Node ids by layer: networkx's topological generations of the graph's condensation (cycles fold)."""
    try:
        import networkx as nx
    except ImportError as exc:  # pragma: no cover - torch depends on networkx
        raise GradprobeError("SVG without Graphviz needs networkx (pip install networkx), or install Graphviz") \
            from exc
    dg = nx.DiGraph()
    dg.add_nodes_from(n.id for n in g.nodes)
    dg.add_edges_from((e.src, e.dst) for e in g.edges if not e.dashed)
    dashed = [(e.src, e.dst) for e in g.edges if e.dashed]
    cond = nx.condensation(dg)
    members = cond.graph["mapping"]
    found: list[list[str]] = []
    for generation in nx.topological_generations(cond):
        found.append(sorted((n for n, c in members.items() if c in set(generation)), key=_natural_id))
    # a frozen/unused parameter sits one layer above the module it belongs to
    layer_of = {n: i for i, layer in enumerate(found) for n in layer}
    for src, dst in dashed:
        if src in layer_of and dst in layer_of:
            target = max(layer_of[dst] - 1, 0)
            found[layer_of[src]].remove(src)
            found[target].append(src)
            layer_of[src] = target
    return [layer for layer in found if layer]


def _natural_id(node_id: str) -> tuple[str, int]:
    m = re.match(r"([a-z_]+)(\d*)", node_id)
    return (m.group(1), int(m.group(2) or 0)) if m else (node_id, 0)


def _networkx(g: Collapsed, title: str) -> str:
    import networkx as nx

    by_id = {n.id: n for n in g.nodes}
    found = layers(g)
    sizes = {n.id: _size(n) for n in g.nodes}
    # networkx places the layers and orders nodes within them; boxes are then spaced by their widths
    dg = nx.Graph()
    for i, layer in enumerate(found):
        for node_id in layer:
            dg.add_node(node_id, layer=i)
    pos = nx.multipartite_layout(dg, subset_key="layer", align="horizontal")
    rows = [sorted(layer, key=lambda n: pos[n][0]) for layer in found]
    widths = [sum(sizes[n][0] for n in row) + _GAP_X * (len(row) - 1) for row in rows]
    width = max(widths, default=0) + 2 * _PAD
    y = _PAD + (24 if title else 0)
    xy: dict[str, tuple[float, float]] = {}
    for row, row_w in zip(rows, widths, strict=True):
        x = (width - row_w) / 2
        height = max(sizes[n][1] for n in row)
        for n in row:
            w, h = sizes[n]
            xy[n] = (x + w / 2, y + height / 2)
            x += w + _GAP_X
        y += height + _GAP_Y
    height = y - _GAP_Y + _PAD
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}pt" '
           f'height="{height:.0f}pt" font-family="Helvetica, Arial, sans-serif" font-size="10">',
           '<defs><marker id="gp-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#64748b"/></marker></defs>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="12">{escape(title)}</text>')
    for e in g.edges:
        if e.src not in xy or e.dst not in xy:
            continue
        (x1, y1), (x2, y2) = xy[e.src], xy[e.dst]
        y1 += sizes[e.src][1] / 2 if y2 > y1 else -sizes[e.src][1] / 2
        y2 += -sizes[e.dst][1] / 2 if y2 > y1 else sizes[e.dst][1] / 2
        style = (' stroke-dasharray="4 3" stroke="#94a3b8"' if e.dashed
                 else ' stroke="#64748b" marker-end="url(#gp-arrow)"')
        out.append(f'<g class="edge"><title>{escape(e.src)} → {escape(e.dst)}'
                   f'{f" ({e.count} grad_fn edges)" if e.count > 1 else ""}</title>'
                   f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" fill="none"{style}/></g>')
    for node_id, (cx, cy) in xy.items():
        n = by_id[node_id]
        w, h = sizes[node_id]
        fill, border, text = STYLE[n.state if n.kind == "param" else n.kind]
        dash = ' stroke-dasharray="4 3"' if n.state in (FROZEN, UNUSED) else ""
        radius = h / 2 if n.kind == "param" else 4
        out.append(f'<g class="node"><title>{escape(tooltip(n))}</title><rect x="{cx - w / 2:.1f}" '
                   f'y="{cy - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{radius:.1f}" fill="{fill}" '
                   f'stroke="{border}"{dash}/>')
        lines = node_lines(n)
        top = cy - (len(lines) - 1) * _LINE_H / 2 + 3.5
        for k, line in enumerate(lines):
            weight = ' font-weight="bold"' if k == 0 and n.kind != "param" else ""
            out.append(f'<text x="{cx:.1f}" y="{top + k * _LINE_H:.1f}" text-anchor="middle" fill="{text}"'
                       f'{weight}>{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


__all__ = ["LEGEND", "dot_binary", "inline", "layers", "to_svg"]
