"""The collapsed grad_fn graph as a Mermaid flowchart (``--graph FILE.mmd``, and in ``--format markdown`` so a
pull-request comment shows the picture on GitHub)."""

from __future__ import annotations

from gradprobe.render.graph.collapse import FROZEN, TRAINABLE, UNUSED, Collapsed, Node, by_cluster
from gradprobe.render.graph.dot import STYLE, node_lines

# Mermaid's own limits as GitHub renders it: past these the block shows an error instead of a picture
MAX_TEXT = 45_000
MAX_EDGES = 450

_ENTITIES = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", "|": "#124;", "`": "#96;",
             "[": "#91;", "]": "#93;", "{": "#123;", "}": "#125;", "(": "#40;", ")": "#41;", ";": "#59;"}


def label(text: str) -> str:
    """Text for a quoted Mermaid label: the characters Mermaid parses replaced by its entity codes."""
    return "".join(_ENTITIES.get(ch, ch) for ch in text)


def _shape(n: Node) -> tuple[str, str]:
    if n.kind == "param":
        return "([", "])"  # stadium
    if n.kind == "loss":
        return "{{", "}}"  # hexagon
    return "[", "]"


def to_mermaid(g: Collapsed) -> str:
    """``flowchart TB`` text: subgraphs for clusters, classes for the parameter states, dotted links for frozen
    and unused parameters."""
    lines = ["flowchart TB"]
    children, members = by_cluster(g)

    def emit(cluster: str | None, indent: str) -> None:
        for n in members.get(cluster, []):
            left, right = _shape(n)
            text = "<br/>".join(label(x) for x in node_lines(n))
            lines.append(f'{indent}{n.id}{left}"{text}"{right}')
        for c in children.get(cluster, []):
            title = c.title + (f" · {c.detail}" if c.detail else "")
            lines.append(f'{indent}subgraph {c.id}["{label(title)}"]')
            emit(c.id, indent + "  ")
            lines.append(f"{indent}end")

    emit(None, "  ")
    for e in g.edges:
        if e.dashed:
            lines.append(f"  {e.src} -.- {e.dst}")
        elif e.count > 1:
            lines.append(f'  {e.src} -->|"{e.count}"| {e.dst}')
        else:
            lines.append(f"  {e.src} --> {e.dst}")
    for kind in ("call", "loss", "leaves", TRAINABLE, FROZEN, UNUSED):
        fill, border, text = STYLE[kind]
        dash = ",stroke-dasharray:4 3" if kind in (FROZEN, UNUSED) else ""
        lines.append(f"  classDef gp_{kind} fill:{fill},stroke:{border},color:{text}{dash}")
    by_class: dict[str, list[str]] = {}
    for n in g.nodes:
        by_class.setdefault(n.state if n.kind == "param" else n.kind, []).append(n.id)
    for kind, ids in by_class.items():
        for i in range(0, len(ids), 200):
            lines.append(f"  class {','.join(ids[i:i + 200])} gp_{kind}")
    return "\n".join(lines) + "\n"


def fits_github(text: str, g: Collapsed) -> bool:
    return len(text) <= MAX_TEXT and len(g.edges) <= MAX_EDGES
