"""A depth-limited, collapsed display tree of a :class:`~gradprobe.facts.run.GraphFact`.

Pre-order from the roots, the first occurrence of a node expanded and later ones marked shared; a
single-child chain that repeats a pattern of up to 4 node names 3 times or more becomes one entry
(``MulBackward0 → AddBackward0 × 20000``).  Everything is iterative and bounded: a million-node chain
costs one byte per node and O(1) per collapsed entry, whatever the depth.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gradprobe.facts.run import GraphFact

__all__ = ["GraphTree", "display_tree"]

_MAX_PERIOD = 4  # longest label pattern a chain may repeat and still be collapsed
_MIN_REPEAT = 3  # fewer repetitions than this read better spelled out
# A chain scan that does not collapse stops within 3 * _MAX_PERIOD nodes, and one that does
# overshoots its collapsed part by at most _MAX_PERIOD nodes; the tail must hold either.
_TAIL = 4 * _MAX_PERIOD


@dataclass(frozen=True)
class GraphTree:
    """Depth-limited, collapsed view of the grad_fn graph for display."""

    label: str  # node name, "AccumulateGrad (encoder.weight)", ...
    repeat: int = 1  # >1: a chain of ``repeat`` periods of ``label`` collapsed into one line
    shared: bool = False  # already shown elsewhere in the tree; children omitted
    truncated: int = 0  # children not shown because of the depth or width limit
    children: tuple[GraphTree, ...] = ()


def display_tree(graph: GraphFact, depth: int | None = None, max_children: int = 6) -> GraphTree | None:
    """The display tree, at most ``depth`` levels deep (default ``graph.display_depth``; a synthetic
    "(roots)" entry counts as one) with at most ``max_children`` children per entry; ``None`` for an empty
    graph or depth 0 (counts only)."""
    depth = graph.display_depth if depth is None else depth
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if max_children < 0:
        raise ValueError(f"max_children must be >= 0, got {max_children}")
    if graph.nodes == 0 or depth == 0 or not graph.roots:
        return None
    return _TreeBuilder(graph, depth, max_children).build(list(graph.roots))


class _TreeBuilder:
    """Iterative pre-order construction of the display tree (the first occurrence is expanded)."""

    def __init__(self, graph: GraphFact, tree_depth: int, max_children: int) -> None:
        self.kinds = graph.kinds
        self.kind_of = graph.column("kind_of")
        self.starts = graph.column("edge_starts")
        self.edges = graph.column("edges")
        self.params = dict(graph.params)
        self.tree_depth = tree_depth
        self.max_children = max_children
        self.shown = bytearray(graph.nodes)

    def label(self, i: int) -> str:
        """Display name of node ``i``; AccumulateGrad nodes name the parameter they feed."""
        if i in self.params:
            name = self.params[i]
            return f"AccumulateGrad ({name if name is not None else 'leaf'})"
        return self.kinds[self.kind_of[i]]

    def _children(self, i: int) -> list[int]:
        return list(self.edges[self.starts[i]:self.starts[i + 1]])

    def _scan_chain(self, first: int) -> tuple[str, int, int]:
        """Collapse the longest periodic single-child chain from ``first``; mark what it covers shown.

        Returns ``(label, repeat, last)``: ``last`` is the node whose children follow the entry.
        Only a bounded tail of the chain is kept, so a million-node chain costs O(1) memory.
        """
        shown, starts, edges, kind_of, params = self.shown, self.starts, self.edges, self.kind_of, self.params
        shown[first] = 1
        if starts[first + 1] - starts[first] != 1:
            return self.label(first), 1, first
        # compared by key: the kind index, or a key of its own for an AccumulateGrad (it names a parameter)
        ids: deque[int] = deque([first], maxlen=_TAIL)
        keys: deque[int] = deque([-1 - first if first in params else kind_of[first]], maxlen=_TAIL)
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
            key = -1 - nxt if nxt in params else kind_of[nxt]
            shown[nxt] = 1
            ids.append(nxt)
            keys.append(key)
            for p in alive:
                if p <= pos and key != keys[-1 - p]:  # some period broke here: the rare, slow path
                    for q in [q for q in alive if q <= pos and key != keys[-1 - q]]:
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
            return self.label(first), 1, first
        pattern = [self.label(ids[q - pos - 1]) for q in range(keep - best_p, keep)]
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
        shown = self.shown
        while True:
            frame = stack[-1]
            children = frame[3]
            if frame[4] < len(children):
                child = children[frame[4]]
                frame[4] += 1
                if shown[child]:
                    frame[5].append(GraphTree(self.label(child), shared=True))
                else:
                    stack.append(self._open(child, frame[6] + 1))
                continue
            stack.pop()
            tree = GraphTree(frame[0], repeat=frame[1], truncated=frame[2], children=tuple(frame[5]))
            if not stack:
                return tree
            stack[-1][5].append(tree)
