"""The grad_fn graph collapsed by module call, and its DOT / Mermaid / SVG text, on hand-made facts (no torch)."""

from __future__ import annotations

import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from array import array

import pytest

from gradprobe.facts.run import GraphFact, ModuleFact, ParamFact, RunFacts
from gradprobe.render.graph.collapse import collapse
from gradprobe.render.graph.dot import to_dot
from gradprobe.render.graph.mermaid import to_mermaid
from gradprobe.render.graph.svg import to_svg
from tests.fixtures.mermaid_check import check_mermaid


def param(name: str, module: str, requires_grad: bool = True) -> ParamFact:
    return ParamFact(name, (), (4, 4), "float32", requires_grad, None, None, module, True, 16, 64)


def graph_fact(n: int, calls: list[tuple[str, int]], call_of: list[int], edges: list[list[int]],
               params: dict[int, str | None], tree: list[tuple[tuple[str, int], tuple[str, int] | None]],
               kinds: tuple[str, ...] = ("MmBackward0", "AccumulateGrad"), saved: dict[int, int] | None = None,
               ) -> GraphFact:
    starts = [0]
    flat: list[int] = []
    for children in edges:
        flat += children
        starts.append(len(flat))
    kind_of = [1 if i in params else 0 for i in range(n)]
    saved = saved or {}
    return GraphFact(
        nodes=n, depth=n, reached_params=frozenset(v for v in params.values() if v), kinds=kinds,
        kind_of=array("I", kind_of).tobytes(), edge_starts=array("I", starts).tobytes(),
        edges=array("I", flat).tobytes(), roots=(0,), params=tuple(sorted(params.items())), calls=tuple(calls),
        call_of=array("i", call_of).tobytes(), saved_nodes=array("I", list(saved)).tobytes(),
        saved_bytes=array("q", list(saved.values())).tobytes(), call_tree=tuple(tree))


def facts(graph: GraphFact, parameters: tuple[ParamFact, ...], modules: tuple[ModuleFact, ...] = ()) -> RunFacts:
    return RunFacts(target="m", torch_version="x", device="cpu", mode="train", grad_mode="grad", backward=True,
                    backward_skipped_reason=None, loss=0.0, parameters=parameters, buffers=(), modules=modules,
                    tensors=(), outputs=(), graph=graph, memory=None, global_grad_enabled=True)


ROOT, BODY, A, B, HEAD = ("", 0), ("body", 0), ("body.a", 0), ("body.b", 0), ("head", 0)
TREE = [(ROOT, None), (BODY, ROOT), (A, BODY), (B, BODY), (HEAD, ROOT)]


def small() -> RunFacts:
    """loss(0) <- head mm(1) <- body own add(2) <- a mm(3), b mm(4); AccumulateGrad: head.w(5), a.w(6), b.w(7)."""
    calls = [HEAD, BODY, A, B]
    g = graph_fact(8, calls, [-1, 0, 1, 2, 3, -1, -1, -1],
                   [[1], [2, 5], [3, 4], [6], [7], [], [], []],
                   {5: "head.w", 6: "body.a.w", 7: "body.b.w"}, TREE, saved={1: 100, 3: 40, 4: 60})
    params = (param("body.a.w", "body.a"), param("body.b.w", "body.b"), param("head.w", "head"),
              param("body.c.w", "body.c", requires_grad=False), param("aux.w", "aux"),
              param("body.a.b", "body.a", requires_grad=False))
    modules = tuple(ModuleFact(n, t, True, 1, (), None, False) for n, t in
                    (("", "Net"), ("body", "Block"), ("body.a", "Linear"), ("body.b", "Linear"),
                     ("head", "Linear")))
    return facts(g, params, modules)


def test_collapse_by_depth() -> None:
    deep = collapse(small(), 8)
    by_title = {n.title: n for n in deep.nodes}
    assert {"body.a", "body.b", "body (own ops)", "head", "loss and outside modules"} <= set(by_title)
    assert by_title["body.a"].cluster == by_title["body (own ops)"].cluster == "k1"
    assert [c.title for c in deep.clusters] == ["body"]
    assert by_title["head"].saved_bytes == 100 and by_title["body.b"].saved_bytes == 60
    states = {n.title: n.state for n in deep.nodes if n.kind == "param"}
    assert states == {"body.a.w": "trainable", "body.b.w": "trainable", "head.w": "trainable",
                      "body.c.w": "frozen", "aux.w": "unused", "body.a.b": "frozen"}
    edges = {(e.src, e.dst) for e in deep.edges}
    ids = {n.title: n.id for n in deep.nodes}
    assert (ids["body.a"], ids["body (own ops)"]) in edges and (ids["head"], ids["loss and outside modules"]) in edges
    assert (ids["head.w"], ids["head"]) in edges
    dashed = {(e.src, e.dst) for e in deep.edges if e.dashed}
    assert dashed == {(ids["body.a.b"], ids["body.a"])}  # the modules of body.c.w and aux.w never ran
    one = collapse(small(), 1)
    titles = {n.title for n in one.nodes if n.kind == "call"}
    assert titles == {"body", "head"} and not one.clusters
    body = next(n for n in one.nodes if n.title == "body")
    assert (body.grad_fns, body.saved_bytes) == (3, 100)
    zero = collapse(small(), 0)
    assert {n.title for n in zero.nodes if n.kind == "call"} == {"(model)"}


def test_dot_mermaid_svg_name_every_parameter() -> None:
    f = small()
    g = collapse(f, 8)
    names = [p.name for p in f.parameters]
    dot = to_dot(g, "title")
    mermaid = to_mermaid(g)
    check_mermaid(mermaid)
    for text in (dot, mermaid):
        assert all(name in text for name in names)
    assert "style=\"filled,dashed\"" in dot and "-.-" in mermaid
    svg, engine = to_svg(g, "t", engine="networkx")
    assert engine == "networkx"
    root = ET.fromstring(svg)
    text = "".join(root.itertext())
    assert all(name in text for name in names)
    if shutil.which("dot"):
        proc = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        svg, engine = to_svg(g, "t")
        assert engine == "graphviz" and all(name in svg for name in names)


def test_grouped_parameters_keep_every_name() -> None:
    g = collapse(small(), 8, max_params=2)
    params = [n for n in g.nodes if n.kind == "param"]
    assert all(n.id.startswith("g_") for n in params)  # one node per module call and state
    assert sorted(x for n in params for x in n.names) == sorted(p.name for p in small().parameters)
    check_mermaid(to_mermaid(g))


def test_mermaid_escapes_label_characters() -> None:
    f = small()
    weird = (param('we"ird[0]|x#<y>', "head"),)
    g = collapse(facts(f.graph, f.parameters + weird, f.modules), 8)
    text = to_mermaid(g)
    check_mermaid(text)
    assert 'we#quot;ird#91;0#93;#124;x#35;#lt;y#gt;' in text


def million() -> RunFacts:
    """A 1,000,000-node chain over 1,000 module calls, a parameter at its end."""
    n = 1_000_000
    calls = [(f"layers.{k}", 0) for k in range(1000)]
    tree = [(ROOT, None)] + [(c, ROOT) for c in calls]
    call_of = array("i", [i // 1000 for i in range(n - 1)] + [-1])
    starts = array("I", range(n)) + array("I", [n - 1])
    g = GraphFact(nodes=n, depth=n, reached_params=frozenset({"w"}), kinds=("MulBackward0", "AccumulateGrad"),
                  kind_of=(array("I", [0]) * (n - 1) + array("I", [1])).tobytes(), edge_starts=starts.tobytes(),
                  edges=array("I", range(1, n)).tobytes(), roots=(0,), params=((n - 1, "w"),),
                  calls=tuple(calls), call_of=call_of.tobytes(), call_tree=tuple(tree))
    return facts(g, (param("w", "layers.0"),))


@pytest.mark.slow
def test_a_million_grad_fn_nodes_export_in_under_five_seconds() -> None:
    f = million()
    for write in (to_dot, to_mermaid):
        start = time.process_time()  # CPU time: a loaded machine (xdist, 2 cores) must not fail it
        g = collapse(f, 8)
        text = write(g)
        elapsed = time.process_time() - start
        assert elapsed < 5, f"{write.__name__}: {elapsed:.2f} s"
        assert g.grad_fns == 1_000_000 and len([n for n in g.nodes if n.kind == "call"]) == 1000
        assert "w" in text
