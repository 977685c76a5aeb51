"""The grad_fn graph collapsed by module call: what the exported pictures (DOT, Mermaid, SVG) draw.

One node per module call (its grad_fn nodes counted, the bytes they saved for backward added up), nested
calls collapsed into their ancestor at nesting depth ``depth`` (the model's own call is depth 0; calls above
the cut that contain shown calls become clusters, their own grad_fn nodes a node inside), one node per
parameter (the AccumulateGrad leaves, labelled by name), and the parameters backward does not reach: frozen
ones (``requires_grad=False``) and unused ones (trainable, but no gradient path), each attached to the module
call that owns them.  Edges follow the data: from a parameter or an earlier call to the call that used it,
with the number of grad_fn edges they stand for.  Linear in the graph: a million grad_fn nodes take a few
seconds in pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gradprobe.facts.run import ParamFact, RunFacts
from gradprobe.units import human_bytes, shape_text

Call = tuple[str, int]
TRAINABLE, FROZEN, UNUSED = "trainable", "frozen", "unused"


@dataclass(frozen=True)
class Node:
    """One box of the picture."""

    id: str  # "c3" (a module call), "p12" (a parameter), "loss", "leaves"
    kind: str  # "call" | "param" | "loss" | "leaves"
    title: str  # module name with call number, parameter name
    detail: str = ""  # second line: module type, or parameter shape
    grad_fns: int = 0
    saved_bytes: int = 0
    state: str = ""  # parameters: trainable | frozen | unused
    cluster: str | None = None  # id of the cluster it is drawn inside
    names: tuple[str, ...] = ()  # every parameter name it stands for (aliases, or grouped parameters)

    @property
    def stats(self) -> str:
        if self.kind in ("param", "leaves"):
            return ""
        if not self.grad_fns:
            return "no grad_fn"
        saved = f" · {human_bytes(self.saved_bytes)} saved" if self.saved_bytes else ""
        return f"{self.grad_fns} grad_fn{saved}"


@dataclass(frozen=True)
class Cluster:
    id: str
    title: str
    detail: str
    parent: str | None


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    count: int = 1
    dashed: bool = False  # a frozen or unused parameter's link to its module (no gradient flows)


@dataclass(frozen=True)
class Collapsed:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    clusters: tuple[Cluster, ...]
    depth: int
    grad_fns: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def by_cluster(g: Collapsed) -> tuple[dict[str | None, list[Cluster]], dict[str | None, list[Node]]]:
    """The clusters inside each cluster and the nodes drawn in each (key ``None``: the top level), in order."""
    children: dict[str | None, list[Cluster]] = {}
    for c in g.clusters:
        children.setdefault(c.parent, []).append(c)
    members: dict[str | None, list[Node]] = {}
    for n in g.nodes:
        members.setdefault(n.cluster, []).append(n)
    return children, members


def call_label(call: Call) -> str:
    name, number = call
    return (name or "(model)") + (f" #{number}" if number else "")


def _depths(tree: Mapping[Call, Call | None]) -> dict[Call, int]:
    depth: dict[Call, int] = {}
    for call, parent in tree.items():  # parents come before their children (call order)
        depth[call] = depth.get(parent, -1) + 1 if parent is not None else 0
    return depth


def _cut(call: Call, tree: Mapping[Call, Call | None], depth: Mapping[Call, int], limit: int) -> Call:
    while depth.get(call, 0) > limit:
        parent = tree.get(call)
        if parent is None:
            break
        call = parent
    return call


def param_state(p: ParamFact, reached: frozenset[str]) -> str:
    if not p.requires_grad:
        return FROZEN
    return TRAINABLE if any(n in reached for n in p.names) else UNUSED


def collapse(facts: RunFacts, depth: int, max_params: int | None = None) -> Collapsed | None:
    """The picture's nodes and edges; ``None`` without a graph.  ``max_params``: above this many parameters,
    one node per module call and state stands for its parameters (their names listed in it)."""
    graph = facts.graph
    if graph is None:
        return None
    tree: dict[Call, Call | None] = dict(graph.call_tree)
    for call in graph.calls:
        tree.setdefault(call, None)
    depths = _depths(tree)
    types = {m.name: m.type for m in facts.modules}
    # which call each graph call is drawn as, and which calls above the cut become clusters
    shown: dict[Call, Call] = {c: _cut(c, tree, depths, depth) for c in tree}
    owners_of_shown: set[Call] = set()
    for call in {shown[c] for c in graph.calls}:
        parent = tree.get(call)
        while parent is not None:
            owners_of_shown.add(parent)
            parent = tree.get(parent)
    root_calls = {c for c, p in tree.items() if p is None}
    order = {c: i for i, c in enumerate(tree)}
    clusters_of = sorted((owners_of_shown - root_calls), key=lambda c: (depths.get(c, 0), order[c]))
    cluster_id = {c: f"k{order[c]}" for c in clusters_of}

    def cluster_for(call: Call) -> str | None:
        parent = tree.get(call)
        while parent is not None and parent not in cluster_id:
            parent = tree.get(parent)
        return cluster_id.get(parent) if parent is not None else None

    clusters = tuple(Cluster(cluster_id[c], call_label(c), types.get(c[0], ""), cluster_for(c)) for c in clusters_of)

    # per graph call index: the node id it is drawn in
    call_node: dict[Call, str] = {}
    for call in sorted({shown[c] for c in graph.calls}, key=lambda c: order[c]):
        call_node[call] = f"c{order[call]}"
    group_of_call = [call_node[shown[c]] for c in graph.calls]
    # module calls without grad_fn nodes that own frozen or unused parameters: drawn too, so those attach
    first_call = {}
    for call in tree:
        first_call.setdefault(call[0], call)
    for p in facts.parameters:
        call = first_call.get(p.module)
        if call is not None and param_state(p, graph.reached_params) != TRAINABLE and shown[call] not in call_node:
            call_node[shown[call]] = f"c{order[shown[call]]}"
    n = graph.nodes
    params = dict(graph.params)
    kind_of = graph.column("kind_of") if n else memoryview(b"").cast("I")
    call_of = graph.column("call_of") if graph.call_of else None
    counts: dict[str, int] = {}
    saved: dict[str, int] = {}
    group: list[str] = [""] * n
    owner_node: dict[str, str] = {}
    for call in tree:
        if shown[call] in call_node:
            owner_node.setdefault(call[0], call_node[shown[call]])  # a module's first call stands for it
    grouped = max_params is not None and len(facts.parameters) > max_params
    param_node = {p.name: (f"g_{owner_node.get(p.module, 'none')}_{param_state(p, graph.reached_params)}"
                           if grouped else f"p{i}") for i, p in enumerate(facts.parameters)}
    accumulate = next((k for k, name in enumerate(graph.kinds) if name == "AccumulateGrad"), -1)
    for i in range(n):
        if i in params:
            name = params[i]
            group[i] = param_node.get(name, "leaves") if name is not None else "leaves"
            continue
        c = call_of[i] if call_of is not None else -1
        g = group_of_call[c] if c >= 0 else ("leaves" if kind_of[i] == accumulate else "loss")
        group[i] = g
        counts[g] = counts.get(g, 0) + 1
    for i, nbytes in graph.saved_by_node().items():
        saved[group[i]] = saved.get(group[i], 0) + nbytes
    # edges, in the data's direction: from the input's node to the node that used it
    starts, targets = graph.column("edge_starts"), graph.column("edges")
    pairs: dict[tuple[str, str], int] = {}
    for i in range(n):
        gi = group[i]
        for j in targets[starts[i]:starts[i + 1]]:
            gj = group[j]
            if gj != gi:
                key = (gj, gi)
                pairs[key] = pairs.get(key, 0) + 1
    nodes: list[Node] = []
    for call, node_id in call_node.items():
        own = call in cluster_id
        nodes.append(Node(node_id, "call", call_label(call) + (" (own ops)" if own else ""),
                          types.get(call[0], ""), counts.get(node_id, 0), saved.get(node_id, 0),
                          cluster=cluster_id[call] if own else cluster_for(call)))
    if counts.get("loss"):
        title = "loss and outside modules" if call_of is not None else "grad_fn nodes (module calls not recorded)"
        nodes.append(Node("loss", "loss", title, "", counts["loss"], saved.get("loss", 0)))
    if "leaves" in set(group):
        nodes.append(Node("leaves", "leaves", "input leaves", "tensors that require grad, not parameters",
                          counts.get("leaves", 0)))
    edges = [Edge(a, b, k) for (a, b), k in pairs.items()]
    p_nodes, p_edges = _param_nodes(facts, graph.reached_params, param_node, owner_node)
    nodes += p_nodes
    edges = _merge(edges + p_edges, {x.id for x in nodes})
    notes = () if graph.call_tree or not graph.calls else (
        "module nesting unknown (a torch without sequence numbers): every call drawn on its own",)
    return Collapsed(tuple(nodes), tuple(edges), clusters, depth, n, notes)


def _merge(edges: list[Edge], present: set[str]) -> list[Edge]:
    """One edge per pair of nodes (counts added up); none to a node not drawn."""
    merged: dict[tuple[str, str, bool], int] = {}
    for e in edges:
        if e.src in present and e.dst in present:
            key = (e.src, e.dst, e.dashed)
            merged[key] = merged.get(key, 0) + e.count
    return [Edge(a, b, k, d) for (a, b, d), k in merged.items()]


def _param_nodes(facts: RunFacts, reached: frozenset[str], param_node: Mapping[str, str],
                 owner_node: Mapping[str, str]) -> tuple[list[Node], list[Edge]]:
    """A node per parameter (or per group of them), and a dashed link from each frozen or unused one to the
    module call owning it (trainable ones are linked through the graph's own edges)."""
    members: dict[str, list[ParamFact]] = {}
    for p in facts.parameters:
        members.setdefault(param_node[p.name], []).append(p)
    nodes: list[Node] = []
    edges: list[Edge] = []
    for pid, group in members.items():
        state = param_state(group[0], reached)
        if pid.startswith("g_"):
            shown = ", ".join(p.name.rsplit(".", 1)[-1] for p in group[:3])
            more = f" +{len(group) - 3}" if len(group) > 3 else ""
            nodes.append(Node(pid, "param", f"{len(group)} {state} parameter{'s' if len(group) > 1 else ''}",
                              shown + more, state=state, names=tuple(n for p in group for n in p.names)))
        else:
            p = group[0]
            nodes.append(Node(pid, "param", p.name, shape_text(p.shape), state=state, names=p.names))
        owner = owner_node.get(group[0].module)
        if state != TRAINABLE and owner is not None:
            edges.append(Edge(pid, owner, 1, dashed=True))
    return nodes, edges
