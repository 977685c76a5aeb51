"""The graph as facts: nodes, edges, module calls and saved bytes per node, against plain PyTorch."""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any

import torch
from torch import nn

from gradprobe import probe
from gradprobe.render.graph.tree import display_tree
from gradprobe.render.inspect.json_out import graph_json
from gradprobe.run.trackers.graph import walk_graph
from gradprobe.run.trackers.release import release_on_big_stack


def plain_bfs(root: torch.autograd.graph.Node) -> tuple[list, list[list[int]]]:
    """Nodes in breadth-first discovery order and each node's children (by index), in plain Python."""
    order, index, children = [root], {root: 0}, []
    queue = deque([root])
    while queue:
        node = queue.popleft()
        kids = []
        for child, _ in node.next_functions:
            if child is None:
                continue
            if child not in index:
                index[child] = len(order)
                order.append(child)
                queue.append(child)
            kids.append(index[child])
        children.append(kids)
    return order, children


def storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def test_nodes_edges_calls_and_saved_bytes_match_plain_pytorch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    report = probe(model, x)
    graph = report.facts.graph
    assert graph is not None

    made_in: dict[torch.autograd.graph.Node, tuple[str, int]] = {}  # output grad_fn of each call, by hooks

    def record(name: str) -> Any:
        def hook(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            made_in.setdefault(out.grad_fn, (name, 0))
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_children()]
    torch.manual_seed(0)
    model.train()
    out = model(x)
    for h in handles:
        h.remove()
    loss = out.float().sum()
    order, children = plain_bfs(loss.grad_fn)

    assert graph.nodes == len(order)
    assert [graph.kind(i) for i in range(graph.nodes)] == [n.name().rsplit("::", 1)[-1] for n in order]
    assert [list(graph.children(i)) for i in range(graph.nodes)] == children
    names = {id(p): n for n, p in model.named_parameters()}
    params = {i: names.get(id(n.variable)) for i, n in enumerate(order) if type(n).__name__ == "AccumulateGrad"}
    assert dict(graph.params) == params
    for node, call in made_in.items():  # every module's output node is attributed to that module's call
        assert graph.call(order.index(node)) == call
    assert graph.call(0) is None  # gradprobe's loss (SumBackward0) is made outside every call
    for i, node in enumerate(order):
        if type(node).__name__ == "TBackward0":  # the weight transposes inside each Linear
            owner = names[id(node.next_functions[0][0].variable)].split(".")[0]
            assert graph.call(i) == (owner, 0)

    relu = next(i for i, n in enumerate(order) if n.name() == "ReluBackward0")
    first = next(i for i, n in enumerate(order) if made_in.get(n) == ("0", 0))  # AddmmBackward0: saves x
    expected = {relu: storage_bytes(order[relu]._saved_result), first: storage_bytes(order[first]._saved_mat1)}
    assert graph.saved_by_node() == expected  # the relu output is saved by the second Linear too: counted once
    assert sum(expected.values()) == report.facts.memory.saved_for_backward_bytes


def test_json_graph_fields_are_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = probe(model, torch.randn(3, 4))
    out = model(torch.randn(3, 4))
    order, children = plain_bfs(out.sum().grad_fn)
    longest = dict.fromkeys(range(len(order)), 1)  # relaxed until stable: BFS order is no topological order
    changed = True
    while changed:
        changed = False
        for i in range(len(order)):
            best = 1 + max((longest[j] for j in children[i]), default=0)
            if best != longest[i]:
                longest[i], changed = best, True
    assert graph_json(report.facts.graph) == {
        "nodes": len(order), "depth": longest[0], "reached_parameters": sorted(n for n, _ in model.named_parameters())}


def test_depth_option_shapes_only_the_display() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    deep, none = probe(model, x, depth=8).facts.graph, probe(model, x, depth=0).facts.graph
    assert (deep.display_depth, none.display_depth) == (8, 0)
    assert (deep.nodes, deep.depth, deep.edges) == (none.nodes, none.depth, none.edges)
    assert display_tree(none) is None and display_tree(none, 8) == display_tree(deep)


def test_storage_is_a_few_bytes_per_node() -> None:
    """Packed columns: kind, edge start and edge per node (~12 bytes), no Python object per node."""
    w = torch.ones(1, requires_grad=True)
    x = w
    for _ in range(100_000):
        x = x.view(1)
    loss = x.sum()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    held = [loss, x]
    del loss, x
    release_on_big_stack(held)
    assert fact.nodes == 100_002
    per_node = len(pickle.dumps(fact)) / fact.nodes
    assert per_node < 16, per_node
    assert pickle.loads(pickle.dumps(fact)) == fact
