"""``--graph FILE.dot|FILE.mmd|FILE.svg`` and the Mermaid block of ``--format markdown``."""

from __future__ import annotations

from gradprobe.errors import UsageError
from gradprobe.facts.run import RunFacts
from gradprobe.render.graph.collapse import Collapsed, collapse
from gradprobe.render.graph.dot import to_dot
from gradprobe.render.graph.mermaid import fits_github, to_mermaid
from gradprobe.render.graph.svg import to_svg

SUFFIXES = (".dot", ".gv", ".mmd", ".mermaid", ".svg")


def check_graph_path(path: str) -> str:
    """The format a ``--graph`` path asks for ("dot", "mermaid", "svg"); a usage error for anything else."""
    lower = path.lower()
    for suffix, kind in ((".dot", "dot"), (".gv", "dot"), (".mmd", "mermaid"), (".mermaid", "mermaid"),
                         (".svg", "svg")):
        if lower.endswith(suffix):
            return kind
    raise UsageError(f"--graph {path}: name a .dot, .mmd or .svg file (Graphviz DOT, Mermaid or SVG)")


def title_of(facts: RunFacts, g: Collapsed) -> str:
    return (f"{facts.target}: grad_fn graph by module call ({g.grad_fns} grad_fn nodes, module depth {g.depth}; "
            f"{facts.mode} + {facts.grad_mode})")


def export_graph(facts: RunFacts, kind: str, depth: int) -> str:
    """The picture's text in ``kind`` ("dot", "mermaid" or "svg")."""
    g = collapse(facts, depth)
    if g is None:
        raise UsageError("--graph: this run has no grad_fn graph (no output with a grad_fn, or --grad no_grad / "
                         "inference_mode); nothing to draw")
    if kind == "dot":
        return to_dot(g, title_of(facts, g))
    if kind == "mermaid":
        return to_mermaid(g)
    return to_svg(g, title_of(facts, g))[0]


def mermaid_markdown(facts: RunFacts, depth: int) -> str:
    """A fenced ``mermaid`` block for a pull-request comment, at the deepest module depth (at most ``depth``)
    whose text GitHub still renders; empty without a graph."""
    for d in range(max(depth, 0), -1, -1):
        g = collapse(facts, d, max_params=60)
        if g is None:
            return ""
        text = to_mermaid(g)
        if fits_github(text, g) or d == 0:
            note = "" if d == depth else f" (module depth {d}: deeper did not fit GitHub's Mermaid limits)"
            return (f"<details><summary>grad_fn graph by module call{note}</summary>\n\n```mermaid\n{text}```\n\n"
                    f"</details>")
    return ""
