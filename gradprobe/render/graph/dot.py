"""The collapsed grad_fn graph as Graphviz DOT (``--graph FILE.dot``; also the input of the SVG)."""

from __future__ import annotations

from gradprobe.render.graph.collapse import FROZEN, TRAINABLE, UNUSED, Collapsed, Node, by_cluster

STYLE = {  # fill, border, text
    "call": ("#eef2ff", "#6366f1", "#1e1b4b"),
    "loss": ("#fef3c7", "#d97706", "#78350f"),
    "leaves": ("#f5f5f4", "#78716c", "#292524"),
    TRAINABLE: ("#dcfce7", "#16a34a", "#14532d"),
    FROZEN: ("#f1f5f9", "#94a3b8", "#64748b"),
    UNUSED: ("#fee2e2", "#dc2626", "#7f1d1d"),
}
LEGEND = {TRAINABLE: "trainable (gets a gradient)", FROZEN: "frozen (requires_grad=False)",
          UNUSED: "unused (trainable, no gradient path)"}


def quote(text: str) -> str:
    """A DOT string: backslashes and quotes escaped, newlines as DOT's centred line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def node_lines(n: Node) -> list[str]:
    """The text lines of a node's box."""
    if n.kind == "param":
        return [n.title, n.detail] if n.detail else [n.title]
    return [x for x in (n.title, n.detail, n.stats) if x]


def tooltip(n: Node) -> str:
    if n.kind == "param":
        names = ", ".join(n.names) if len(n.names) <= 12 else ", ".join(n.names[:12]) + f", +{len(n.names) - 12}"
        return f"{LEGEND.get(n.state, n.state)}: {names}"
    return " · ".join(node_lines(n))


def _node(n: Node) -> str:
    fill, border, text = STYLE[n.state if n.kind == "param" else n.kind]
    shape = "ellipse" if n.kind == "param" else "box"
    style = "filled,dashed" if n.state in (FROZEN, UNUSED) else ("rounded,filled" if shape == "box" else "filled")
    return (f"{n.id} [label={quote(chr(10).join(node_lines(n)))}, shape={shape}, style={quote(style)}, "
            f"fillcolor={quote(fill)}, color={quote(border)}, fontcolor={quote(text)}, tooltip={quote(tooltip(n))}];")


def to_dot(g: Collapsed, title: str = "") -> str:
    """DOT text: clusters for module calls that contain shown calls, dashed links for frozen and unused
    parameters, edge labels where one arrow stands for several grad_fn edges."""
    lines = ["digraph gradprobe {",
             f"  graph [rankdir=TB, fontname=Helvetica, fontsize=11, nodesep=0.25, ranksep=0.35, "
             f"label={quote(title)}, labelloc=t, tooltip={quote(title or 'grad_fn graph')}];",
             '  node [fontname=Helvetica, fontsize=10, margin="0.12,0.05", height=0.3];',
             '  edge [color="#64748b", arrowsize=0.6, fontname=Helvetica, fontsize=8, fontcolor="#64748b"];']
    children, members = by_cluster(g)

    def emit(cluster: str | None, indent: str) -> None:
        for n in members.get(cluster, []):
            lines.append(indent + _node(n))
        for c in children.get(cluster, []):
            label = c.title + (f" · {c.detail}" if c.detail else "")
            lines.append(f"{indent}subgraph cluster_{c.id} {{")
            lines.append(f'{indent}  label={quote(label)}; style="rounded,dashed"; color="#a5b4fc"; '
                         f'fontcolor="#4338ca"; fontsize=10; tooltip={quote(label)};')
            emit(c.id, indent + "  ")
            lines.append(indent + "}")

    emit(None, "  ")
    for e in g.edges:
        attrs = []
        if e.count > 1:
            attrs.append(f"label={quote(str(e.count))}")
        if e.dashed:
            attrs.append('style=dashed, arrowhead=none, color="#94a3b8"')
        lines.append(f"  {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
