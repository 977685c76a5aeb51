"""Walk the grad_fn graph reachable from a loss and record it as a :class:`GraphFact`: nodes and edges.

Real graphs can be huge (an RNN unrolled over a long sequence, a loop of in-place updates), so
everything here is iterative and linear in the graph size: Python recursion would hit the
recursion limit long before autograd runs out of nodes.  The walk keeps one Python reference per
node (so ``id(node)`` stays a valid key) and releases them root-first before returning; the
returned fact holds only strings, integers and packed integer columns (4 bytes per node and per
edge, not a Python object each).  Display trees are built from it by the renderers
(:mod:`gradprobe.render.graph.tree`).  With torch 2.13 a walked graph deeper than ~30k nodes must
later be freed with :func:`~gradprobe.run.trackers.release.release_on_big_stack`.
"""

from __future__ import annotations

import gc
from array import array
from collections.abc import Mapping, Sequence

import torch

from gradprobe.facts.run import GraphFact
from gradprobe.run.trackers.modules import Call, CallTimeline

__all__ = ["walk_graph"]

_ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad


class _Graph:
    """The walked graph as integer adjacency (CSR) plus the node objects, indexed by discovery order."""

    __slots__ = ("edges", "kind_index", "kind_of", "kinds", "label_kinds", "nodes", "param_names", "param_of",
                 "starts")

    def __init__(self, param_names: Mapping[int, str]) -> None:
        self.nodes: list[torch.autograd.graph.Node | None] = []
        self.starts = array("I", [0])  # children of node i: edges[starts[i]:starts[i + 1]]
        self.edges = array("I")
        self.kind_of = array("I")  # node i is named kinds[kind_of[i]]
        self.kinds: list[str] = []
        self.kind_index: dict[type, int] = {}  # node class -> kind, for classes whose instances share a name
        self.label_kinds: dict[str, int] = {}
        self.param_of: dict[int, str | None] = {}  # AccumulateGrad index -> parameter name or None
        self.param_names = param_names

    def _kind(self, node: torch.autograd.graph.Node, kind: type) -> int:
        """Intern the node's name; cache it per class when the class is specific to that name."""
        label = node.name().rsplit("::", 1)[-1]
        k = self.label_kinds.get(label)
        if k is None:
            k = self.label_kinds[label] = len(self.kinds)
            self.kinds.append(label)
        if kind.__name__ == label:
            self.kind_index[kind] = k
        return k

    def discover(self, roots: Sequence[torch.autograd.graph.Node | None]) -> list[int]:
        """Breadth-first discovery of every distinct node; returns the root indices (with repeats)."""
        nodes = self.nodes
        index: dict[int, int] = {}
        root_idx: list[int] = []
        for root in roots:
            if root is None:
                continue
            j = index.get(id(root))
            if j is None:
                j = index[id(root)] = len(nodes)
                nodes.append(root)
            root_idx.append(j)

        edges, starts, param_of, param_names = self.edges, self.starts, self.param_of, self.param_names
        add_node, add_edge, add_start, index_of = nodes.append, edges.append, starts.append, index.setdefault
        add_kind, kind_get = self.kind_of.append, self.kind_index.get
        n = len(nodes)
        # Iterating a list that grows while it is iterated is well defined: this is the BFS queue.
        for i, node in enumerate(nodes):
            kind = type(node)
            k = kind_get(kind)
            add_kind(k if k is not None else self._kind(node, kind))  # type: ignore[arg-type]
            next_functions = node.next_functions  # type: ignore[union-attr]
            if next_functions:
                for child, _ in next_functions:
                    if child is not None:
                        j = index_of(id(child), n)
                        if j == n:  # first time seen
                            n += 1
                            add_node(child)
                        add_edge(j)
            elif kind is _ACCUMULATE_GRAD:
                variable = getattr(node, "variable", None)
                param_of[i] = None if variable is None else param_names.get(id(variable))
            add_start(len(edges))
        return root_idx

    def attribute(self, timeline: CallTimeline | None, saved: Mapping[int, int]) -> tuple[
            list[Call], array, array, array]:
        """Per node: the module call it was made in, and the bytes it first saved (by sequence number)."""
        calls: list[Call] = []
        call_index: dict[Call, int] = {}
        call_of = array("i")
        saved_nodes, saved_bytes = array("I"), array("q")
        param_of = self.param_of
        for i, node in enumerate(self.nodes):
            if i in param_of:  # AccumulateGrad: made lazily, outside any numbering
                call_of.append(-1)
                continue
            seq = node._sequence_nr()  # type: ignore[union-attr]
            call = timeline.call_of(seq) if timeline is not None else None
            if call is None:
                call_of.append(-1)
            else:
                c = call_index.get(call)
                if c is None:
                    c = call_index[call] = len(calls)
                    calls.append(call)
                call_of.append(c)
            nbytes = saved.get(seq)
            if nbytes:
                saved_nodes.append(i)
                saved_bytes.append(nbytes)
        return calls, call_of, saved_nodes, saved_bytes

    def longest_path(self) -> int:
        """Longest root-to-sink path in nodes, by Kahn's algorithm (no recursion)."""
        n = len(self.nodes)
        starts, edges = self.starts, self.edges
        indegree = [0] * n  # lists, not arrays: indexing them needs no int boxing (~40% faster)
        for j in edges:
            indegree[j] += 1
        dist = [1] * n
        ready = [i for i, k in enumerate(indegree) if k == 0]
        pop, push = ready.pop, ready.append
        while ready:
            i = pop()
            d = dist[i] + 1
            first, end = starts[i], starts[i + 1]
            if end - first == 1:  # the common case, without slicing
                j = edges[first]
                if dist[j] < d:
                    dist[j] = d
                remaining = indegree[j] - 1
                indegree[j] = remaining
                if remaining == 0:
                    push(j)
                continue
            for j in edges[first:end]:
                if dist[j] < d:
                    dist[j] = d
                remaining = indegree[j] - 1
                indegree[j] = remaining
                if remaining == 0:
                    push(j)
        return max(dist) if n else 0

    def release(self) -> None:
        """Drop node references root-first, so no release can cascade down a deep chain."""
        nodes = self.nodes
        for i in range(len(nodes)):
            nodes[i] = None
        nodes.clear()


def walk_graph(
    roots: Sequence[torch.autograd.graph.Node | None],
    param_names: Mapping[int, str],
    *,
    timeline: CallTimeline | None = None,
    saved_by_node: Mapping[int, int] | None = None,
) -> GraphFact:
    """Record the autograd graph reachable from ``roots`` (normally ``[loss.grad_fn]``).

    ``param_names`` maps ``id(parameter)`` to its canonical name, so AccumulateGrad nodes can say
    which parameters backward would reach.  ``nodes`` counts distinct nodes, ``depth`` is the
    longest path in nodes.  With ``timeline`` (the module recorder's) each node gets the module call
    it was made in; with ``saved_by_node`` (sequence number -> bytes, the saved-tensor tracker's) the
    bytes it saved.  Both cost one ``_sequence_nr()`` per node and are skipped when not given.

    The fact holds no node, and the walk drops its own references before returning, but with
    torch 2.13 walking leaves a Python wrapper on every node, and freeing such a graph recurses
    once per level: the caller must drop a deep graph (``depth`` over ~10,000) with
    :func:`~gradprobe.run.trackers.release.release_on_big_stack`, moving every tensor and node that
    references it into the list it clears.  Dropped in the main thread, a graph deeper than
    ~30-50k nodes crashes the interpreter (segfault), as it would after any Python walk of it.
    """
    graph = _Graph(param_names)
    gc_was_enabled = gc.isenabled()
    try:
        # Each discovered node gets a GC-tracked wrapper; with a million of them the collector's
        # full passes over the growing heap took half the walk's time, and none of it is garbage.
        gc.disable()
        try:
            root_idx = graph.discover(roots)
        finally:
            if gc_was_enabled:
                gc.enable()
        if not root_idx:
            return GraphFact(nodes=0, depth=0)
        if len(graph.nodes) >= 2**32 - 1:
            raise OverflowError("a graph of 2**32 nodes or more does not fit the fact's 32-bit columns")
        calls: tuple[Call, ...] = ()
        call_of = saved_nodes = saved_bytes = b""
        if timeline is not None or saved_by_node:
            found_calls, call_column, node_column, bytes_column = graph.attribute(timeline, saved_by_node or {})
            calls = tuple(found_calls)
            call_of, saved_nodes, saved_bytes = call_column.tobytes(), node_column.tobytes(), bytes_column.tobytes()
        depth = graph.longest_path()
        reached = frozenset(name for name in graph.param_of.values() if name is not None)
        return GraphFact(
            nodes=len(graph.nodes), depth=depth, reached_params=reached, kinds=tuple(graph.kinds),
            kind_of=graph.kind_of.tobytes(), edge_starts=graph.starts.tobytes(), edges=graph.edges.tobytes(),
            roots=tuple(root_idx), params=tuple(sorted(graph.param_of.items())), calls=tuple(calls),
            call_of=call_of, saved_nodes=saved_nodes, saved_bytes=saved_bytes,
        )
    finally:
        graph.release()
