"""Walk the grad_fn graph reachable from a loss and summarise it as a :class:`GraphFact`.

Real graphs can be huge (an RNN unrolled over a long sequence, a loop of in-place updates), so
everything here is iterative and linear in the graph size: Python recursion would hit the
recursion limit long before autograd runs out of nodes.  The walk keeps one Python reference per
node (so ``id(node)`` stays a valid key) and releases them root-first before returning; the
returned facts hold only strings and integers.  With torch 2.13 a walked graph deeper than
~30k nodes must later be freed with :func:`~gradprobe.run.trackers.release.release_on_big_stack`.
"""

from __future__ import annotations

import gc
from array import array
from collections import deque
from collections.abc import Mapping, Sequence

import torch

from gradprobe.facts.run import GraphFact, GraphTree

__all__ = ["walk_graph"]

_ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad
_MAX_PERIOD = 4  # longest label pattern a chain may repeat and still be collapsed
_MIN_REPEAT = 3  # fewer repetitions than this read better spelled out
# A chain scan that does not collapse stops within 3 * _MAX_PERIOD nodes, and one that does
# overshoots its collapsed part by at most _MAX_PERIOD nodes; the tail must hold either.
_TAIL = 4 * _MAX_PERIOD


class _Graph:
    """The walked graph as integer adjacency (CSR) plus the node objects, indexed by discovery order."""

    __slots__ = ("edges", "label_cache", "nodes", "param_names", "param_of", "starts")

    def __init__(self, param_names: Mapping[int, str]) -> None:
        self.nodes: list[torch.autograd.graph.Node | None] = []
        self.starts = array("q", [0])  # children of node i: edges[starts[i]:starts[i + 1]]
        self.edges = array("q")
        self.param_of: dict[int, str | None] = {}  # AccumulateGrad index -> parameter name or None
        self.param_names = param_names
        self.label_cache: dict[type, str] = {}

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
        n = len(nodes)
        # Iterating a list that grows while it is iterated is well defined: this is the BFS queue.
        for i, node in enumerate(nodes):
            next_functions = node.next_functions  # type: ignore[union-attr]
            if next_functions:
                for child, _ in next_functions:
                    if child is not None:
                        j = index_of(id(child), n)
                        if j == n:  # first time seen
                            n += 1
                            add_node(child)
                        add_edge(j)
            elif type(node) is _ACCUMULATE_GRAD:
                variable = getattr(node, "variable", None)
                param_of[i] = None if variable is None else param_names.get(id(variable))
            add_start(len(edges))
        return root_idx

    def label(self, i: int) -> str:
        """Display name of node ``i``; AccumulateGrad nodes name the parameter they feed."""
        if i in self.param_of:
            name = self.param_of[i]
            return f"AccumulateGrad ({name if name is not None else 'leaf'})"
        node = self.nodes[i]
        kind = type(node)
        cached = self.label_cache.get(kind)
        if cached is not None:
            return cached
        label = node.name().rsplit("::", 1)[-1]  # type: ignore[union-attr]
        if kind.__name__ == label:  # a type specific to this node class: safe to cache
            self.label_cache[kind] = label
        return label

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


class _TreeBuilder:
    """Iterative pre-order construction of the display tree (the first occurrence is expanded)."""

    def __init__(self, graph: _Graph, tree_depth: int, max_children: int) -> None:
        self.graph = graph
        self.tree_depth = tree_depth
        self.max_children = max_children
        self.shown = bytearray(len(graph.nodes))

    def _children(self, i: int) -> list[int]:
        starts = self.graph.starts
        return list(self.graph.edges[starts[i] : starts[i + 1]])

    def _scan_chain(self, first: int) -> tuple[str, int, int]:
        """Collapse the longest periodic single-child chain from ``first``; mark what it covers shown.

        Returns ``(label, repeat, last)``: ``last`` is the node whose children follow the entry.
        Only a bounded tail of the chain is kept, so a million-node chain costs O(1) memory.
        """
        graph, shown = self.graph, self.shown
        starts, edges, nodes, param_of = graph.starts, graph.edges, graph.nodes, graph.param_of
        label_of = graph.label_cache.get
        first_label = graph.label(first)
        shown[first] = 1
        if starts[first + 1] - starts[first] != 1:
            return first_label, 1, first
        ids: deque[int] = deque([first], maxlen=_TAIL)
        labels: deque[str] = deque([first_label], maxlen=_TAIL)
        matched = [0] * (_MAX_PERIOD + 1)  # matched[p]: chain prefix length consistent with period p
        alive = list(range(1, _MAX_PERIOD + 1))
        pos, cur = 0, first
        while alive:
            at = starts[cur]
            if starts[cur + 1] - at != 1:
                break
            nxt = edges[at]
            if shown[nxt]:
                break
            pos += 1
            label = label_of(type(nodes[nxt])) if nxt not in param_of else None
            if label is None:
                label = graph.label(nxt)
            shown[nxt] = 1
            ids.append(nxt)
            labels.append(label)
            for p in alive:
                if p <= pos and label != labels[-1 - p]:  # some period broke here: the rare, slow path
                    for q in [q for q in alive if q <= pos and label != labels[-1 - q]]:
                        matched[q] = pos
                        alive.remove(q)
                    break
            cur = nxt
        for p in alive:
            matched[p] = pos + 1
        best_p, best_cover = 1, 1  # the smallest period that repeats often enough and covers most
        for p in range(1, _MAX_PERIOD + 1):
            cover = matched[p] // p * p
            if matched[p] // p >= _MIN_REPEAT and cover > best_cover:
                best_p, best_cover = p, cover
        repeat = best_cover // best_p
        keep = best_cover  # chain positions [0, keep) are emitted as this entry
        for q in range(keep, pos + 1):  # scanned past the emitted part: shown later, below it
            shown[ids[q - pos - 1]] = 0
        if keep == 1:
            return first_label, 1, first
        pattern = [labels[q - pos - 1] for q in range(keep - best_p, keep)]
        last = ids[keep - 1 - pos - 1]
        return " → ".join(pattern), repeat, last

    def _open(self, i: int, level: int) -> list:
        """A frame for node ``i``: [label, repeat, truncated, children to show, next, built, level]."""
        label, repeat, last = self._scan_chain(i)
        return self._frame(label, repeat, self._children(last), level)

    def _frame(self, label: str, repeat: int, children: list[int], level: int) -> list:
        if level >= self.tree_depth:
            truncated, children = len(children), []
        elif len(children) > self.max_children:
            truncated, children = len(children) - self.max_children, children[: self.max_children]
        else:
            truncated = 0
        return [label, repeat, truncated, children, 0, [], level]

    def build(self, roots: list[int]) -> GraphTree:
        if len(roots) == 1:
            stack = [self._open(roots[0], 1)]
        else:
            stack = [self._frame("(roots)", 1, roots, 1)]
        graph, shown = self.graph, self.shown
        while True:
            frame = stack[-1]
            children = frame[3]
            if frame[4] < len(children):
                child = children[frame[4]]
                frame[4] += 1
                if shown[child]:
                    frame[5].append(GraphTree(graph.label(child), shared=True))
                else:
                    stack.append(self._open(child, frame[6] + 1))
                continue
            stack.pop()
            tree = GraphTree(frame[0], repeat=frame[1], truncated=frame[2], children=tuple(frame[5]))
            if not stack:
                return tree
            stack[-1][5].append(tree)


def walk_graph(
    roots: Sequence[torch.autograd.graph.Node | None],
    param_names: Mapping[int, str],
    *,
    tree_depth: int = 8,
    max_children: int = 6,
) -> GraphFact:
    """Summarise the autograd graph reachable from ``roots`` (normally ``[loss.grad_fn]``).

    ``param_names`` maps ``id(parameter)`` to its canonical name, so AccumulateGrad nodes can say
    which parameters backward would reach.  ``nodes`` counts distinct nodes, ``depth`` is the
    longest path in nodes, and ``tree`` is a display view at most ``tree_depth`` levels deep
    (a synthetic "(roots)" entry counts as one) with at most ``max_children`` children per entry.

    The facts hold no node, and the walk drops its own references before returning, but with
    torch 2.13 walking leaves a Python wrapper on every node, and freeing such a graph recurses
    once per level: the caller must drop a deep graph (``depth`` over ~10,000) with
    :func:`~gradprobe.run.trackers.release.release_on_big_stack`, moving every tensor and node that
    references it into the list it clears.  Dropped in the main thread, a graph deeper than
    ~30-50k nodes crashes the interpreter (segfault), as it would after any Python walk of it.
    """
    if tree_depth < 1:
        raise ValueError(f"tree_depth must be >= 1, got {tree_depth}")
    if max_children < 0:
        raise ValueError(f"max_children must be >= 0, got {max_children}")
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
        depth = graph.longest_path()
        reached = frozenset(name for name in graph.param_of.values() if name is not None)
        tree = _TreeBuilder(graph, tree_depth, max_children).build(root_idx)
        return GraphFact(nodes=len(graph.nodes), depth=depth, reached_params=reached, tree=tree)
    finally:
        graph.release()
