"""Tests for walk_graph (gradprobe.run.trackers.graph) and release_on_big_stack, against independent values.

Small graphs are counted by hand (the counts are spelled out in comments); random DAGs are
checked against a plain recursive walk written here.  Deep graphs (which, once walked, crash the
interpreter if freed on the main thread's stack) run in a subprocess through walk_graph, the API
and the CLI, so a crash while freeing them fails one test instead of killing pytest.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gradprobe.facts.run import GraphFact
from gradprobe.render.graph.tree import GraphTree, display_tree
from gradprobe.run.trackers.graph import walk_graph
from gradprobe.run.trackers.release import release_on_big_stack

REPO = Path(__file__).resolve().parents[2]


def leaf(n: int = 3) -> torch.Tensor:
    return torch.randn(n, requires_grad=True)


def acc(name: str) -> GraphTree:
    return GraphTree(f"AccumulateGrad ({name})")


def mlp_graph() -> GraphFact:
    """The walked graph of ``Linear(4, 3) -> ReLU -> Linear(3, 2)``, summed, parameters named ``0.weight`` ..."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    names = {id(p): n for n, p in model.named_parameters()}
    loss = model(torch.randn(5, 4)).sum()
    return walk_graph([loss.grad_fn], names)


# --- small graphs counted by hand -------------------------------------------------------------


def test_sum_of_product_with_a_leaf() -> None:
    w = leaf()
    x = torch.randn(3)
    loss = (x * w).sum()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    # SumBackward0 -> MulBackward0 -> AccumulateGrad(w); x needs no grad, so its edge is None.
    assert fact.nodes == 3
    assert fact.depth == 3
    assert fact.reached_params == frozenset({"w"})
    assert display_tree(fact) == GraphTree("SumBackward0", children=(GraphTree("MulBackward0", children=(acc("w"),)),))
    assert gc.isenabled()  # switched off only while discovering


def test_lone_root_has_depth_one() -> None:
    x = torch.randn(3, requires_grad=True)
    fact = walk_graph([x.view(3).grad_fn], {})
    # ViewBackward0 -> AccumulateGrad(leaf): the lone root is only the view; its leaf makes 2.
    assert (fact.nodes, fact.depth) == (2, 2)
    assert display_tree(fact) == GraphTree("ViewBackward0", children=(acc("leaf"),))
    assert fact.reached_params == frozenset()  # a leaf that is not a named parameter


def test_mlp_linear_relu_linear() -> None:
    fact = mlp_graph()
    tree = display_tree(fact, 20)
    # By hand: SumBackward0, AddmmBackward0 (layer 2), AccumulateGrad(2.bias), ReluBackward0,
    # TBackward0 + AccumulateGrad(2.weight), AddmmBackward0 (layer 0), AccumulateGrad(0.bias),
    # TBackward0 + AccumulateGrad(0.weight): 10 nodes (the input needs no grad: a None edge).
    assert fact.nodes == 10
    # Longest: Sum -> Addmm -> Relu -> Addmm -> T -> AccumulateGrad(0.weight) = 6 nodes.
    assert fact.depth == 6
    assert fact.reached_params == frozenset({"0.weight", "0.bias", "2.weight", "2.bias"})
    layer0 = GraphTree("AddmmBackward0", children=(
        acc("0.bias"), GraphTree("TBackward0", children=(acc("0.weight"),))))
    assert tree == GraphTree("SumBackward0", children=(GraphTree("AddmmBackward0", children=(
        acc("2.bias"),
        GraphTree("ReluBackward0", children=(layer0,)),
        GraphTree("TBackward0", children=(acc("2.weight"),)),
    )),))


def test_tied_weight_is_one_node_reached_twice() -> None:
    emb = nn.Embedding(7, 4)
    head = nn.Linear(4, 7, bias=False)
    head.weight = emb.weight  # tied, as in a language model
    model = nn.Sequential(emb, head)
    names = {id(p): n for n, p in model.named_parameters()}  # one distinct parameter: "0.weight"
    assert list(names.values()) == ["0.weight"]
    loss = model(torch.tensor([1, 2, 3])).sum()
    fact = walk_graph([loss.grad_fn], names)
    tree = display_tree(fact, 20)
    # Sum -> MmBackward0 -> {EmbeddingBackward0 -> Acc(0.weight), TBackward0 -> Acc(0.weight)}:
    # Sum, Mm, Embedding, T and ONE AccumulateGrad = 5 nodes; depth Sum-Mm-T-Acc = 4.
    assert fact.nodes == 5
    assert fact.depth == 4
    assert fact.reached_params == frozenset({"0.weight"})
    (mm,) = tree.children
    first, second = mm.children
    assert first.children == (acc("0.weight"),)
    assert second.children == (GraphTree("AccumulateGrad (0.weight)", shared=True),)


def test_detached_branch_params_are_not_reached() -> None:
    encoder, frozen, head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1)
    names = {id(p): f"{m}.{n}" for m, mod in (("encoder", encoder), ("frozen", frozen), ("head", head))
             for n, p in mod.named_parameters()}
    x = torch.randn(2, 3)
    loss = head(encoder(x) + frozen(x).detach()).sum()
    fact = walk_graph([loss.grad_fn], names)
    assert fact.reached_params == frozenset({"encoder.weight", "encoder.bias", "head.weight", "head.bias"})
    # Sum, Addmm(head) + Acc(head.bias) + T + Acc(head.weight), Add (the detached side is a None
    # edge), Addmm(encoder) + Acc(encoder.bias) + T + Acc(encoder.weight) = 10 nodes.
    assert fact.nodes == 10
    assert fact.depth == 6  # Sum-Addmm-Add-Addmm-T-Acc


def test_same_tensor_twice_is_one_child_node_shown_twice() -> None:
    w = leaf()
    fact = walk_graph([(w * w).sum().grad_fn], {id(w): "w"})
    assert (fact.nodes, fact.depth) == (3, 3)  # Sum, Mul, one AccumulateGrad
    assert display_tree(fact) == GraphTree("SumBackward0", children=(GraphTree("MulBackward0", children=(
        acc("w"), GraphTree("AccumulateGrad (w)", shared=True))),))


def test_shared_subgraph_is_expanded_once() -> None:
    w = leaf()
    h = w * 2
    loss = (h.sin() + h.cos()).sum()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    # Sum, Add, Sin, Cos, Mul (shared by Sin and Cos), Acc(w) = 6 nodes; depth Sum-Add-Sin-Mul-Acc = 5.
    assert (fact.nodes, fact.depth) == (6, 5)
    mul = GraphTree("MulBackward0", children=(acc("w"),))
    assert display_tree(fact) == GraphTree("SumBackward0", children=(GraphTree("AddBackward0", children=(
        GraphTree("SinBackward0", children=(mul,)),
        GraphTree("CosBackward0", children=(GraphTree("MulBackward0", shared=True),)),
    )),))


def test_custom_function_node_is_named_after_its_class() -> None:
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    w = leaf()
    fact = walk_graph([Square.apply(w).sum().grad_fn], {id(w): "w"})
    square = GraphTree("SquareBackward", children=(acc("w"),))
    assert display_tree(fact) == GraphTree("SumBackward0", children=(square,))


# --- display limits ---------------------------------------------------------------------------


def test_depth_limit_counts_cut_children() -> None:
    fact = mlp_graph()
    tree = display_tree(fact, 3)
    # Level 3 shows Addmm's three children; Relu and T each have one child that is cut.
    assert tree == GraphTree("SumBackward0", children=(GraphTree("AddmmBackward0", children=(
        acc("2.bias"),
        GraphTree("ReluBackward0", truncated=1),
        GraphTree("TBackward0", truncated=1),
    )),))
    assert fact.nodes == 10  # the limit is for display only
    only_root = display_tree(fact, 1)
    assert only_root == GraphTree("SumBackward0", truncated=1)


def test_max_children_drops_and_counts_the_rest() -> None:
    leaves = [torch.randn(2, requires_grad=True) for _ in range(10)]
    names = {id(t): f"p{i}" for i, t in enumerate(leaves)}
    loss = torch.stack(leaves).sum()
    fact = walk_graph([loss.grad_fn], names)
    tree = display_tree(fact, max_children=6)
    assert fact.nodes == 12  # Sum, Stack, 10 AccumulateGrad
    (stack,) = tree.children
    assert stack.label == "StackBackward0"
    assert stack.children == tuple(acc(f"p{i}") for i in range(6))
    assert stack.truncated == 4
    assert fact.reached_params == frozenset(names.values())  # not limited by the display
    cut = display_tree(fact, 2, max_children=6).children[0]
    assert cut == GraphTree("StackBackward0", truncated=10)
    assert display_tree(fact, max_children=0) == GraphTree("SumBackward0", truncated=1)


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        display_tree(GraphFact(nodes=0, depth=0), -1)
    with pytest.raises(ValueError):
        display_tree(GraphFact(nodes=0, depth=0), max_children=-1)


# --- repeated chains --------------------------------------------------------------------------


def test_period_two_chain_collapses_to_one_line() -> None:
    w = leaf()
    x = w
    for _ in range(20_000):
        x = x + 1.0
        x = x * 2.0
    fact = walk_graph([x.sum().grad_fn], {id(w): "w"})
    held = [x]
    del x
    release_on_big_stack(held)  # 40,000 walked levels would take ~8 MB of the main thread's stack
    assert fact.nodes == 40_002  # Sum, 20,000 x (Mul, Add), Acc(w)
    assert fact.depth == 40_002
    assert display_tree(fact) == GraphTree("SumBackward0", children=(
        GraphTree("MulBackward0 → AddBackward0", repeat=20_000, children=(acc("w"),)),))


def test_chain_remainder_continues_below_the_collapsed_line() -> None:
    w = leaf()
    x = w.exp()
    for _ in range(5):
        x = x + 1.0
        x = x * 2.0
    x = x + 1.0  # one extra Add: the chain reads Add (Mul Add) x5 from the top
    fact = walk_graph([x.sum().grad_fn], {id(w): "w"})
    # From the top: Add, then Mul/Add alternating (11 nodes), Exp, Acc. Period 2 starting at the
    # first Add: "Add → Mul" x5, then the last Add, Exp and Acc follow one per level.
    assert display_tree(fact) == GraphTree("SumBackward0", children=(
        GraphTree("AddBackward0 → MulBackward0", repeat=5, children=(
            GraphTree("AddBackward0", children=(GraphTree("ExpBackward0", children=(acc("w"),)),)),)),))


def test_period_three_and_smallest_period_wins() -> None:
    w = leaf()
    x = w
    for _ in range(4):
        x = x.sin().cos().neg()
    for _ in range(6):
        x = x.exp()
    fact = walk_graph([x.sum().grad_fn], {id(w): "w"})
    # Six Exp read as period 1 x6 (not period 2 x3); below them Neg, Cos, Sin repeat 4 times.
    assert display_tree(fact) == GraphTree("SumBackward0", children=(
        GraphTree("ExpBackward0", repeat=6, children=(
            GraphTree("NegBackward0 → CosBackward0 → SinBackward0", repeat=4, children=(acc("w"),)),)),))


def test_two_repeats_are_not_collapsed() -> None:
    w = leaf()
    x = w
    for _ in range(2):
        x = x + 1.0
        x = x * 2.0
    fact = walk_graph([x.sum().grad_fn], {id(w): "w"})
    labels = []
    node: GraphTree | None = display_tree(fact)
    while node is not None:
        assert node.repeat == 1
        labels.append(node.label)
        node = node.children[0] if node.children else None
    assert labels == ["SumBackward0", "MulBackward0", "AddBackward0", "MulBackward0", "AddBackward0",
                      "AccumulateGrad (w)"]


def test_collapsed_chain_counts_as_one_level() -> None:
    w = leaf()
    x = w
    for _ in range(10):
        x = x.exp()
    fact = walk_graph([x.sum().grad_fn], {id(w): "w"})
    tree = display_tree(fact, 2)
    chain = GraphTree("ExpBackward0", repeat=10, truncated=1)  # Acc(w) is cut by the depth limit
    assert tree == GraphTree("SumBackward0", children=(chain,))


# --- several roots ----------------------------------------------------------------------------


def test_several_roots_get_a_synthetic_root() -> None:
    w, v = leaf(), leaf()
    names = {id(w): "w", id(v): "v"}
    first = (w * 2).sum()
    second = (w + v).sum()
    fact = walk_graph([first.grad_fn, None, second.grad_fn], names)
    # first: Sum, Mul, Acc(w); second: Sum, Add, Acc(v) and the same Acc(w) = 6 distinct nodes.
    assert (fact.nodes, fact.depth) == (6, 3)
    assert fact.reached_params == frozenset({"w", "v"})
    assert display_tree(fact) == GraphTree("(roots)", children=(
        GraphTree("SumBackward0", children=(GraphTree("MulBackward0", children=(acc("w"),)),)),
        GraphTree("SumBackward0", children=(GraphTree("AddBackward0", children=(
            GraphTree("AccumulateGrad (w)", shared=True), acc("v"))),)),
    ))
    twice = walk_graph([first.grad_fn, first.grad_fn], names)
    assert twice.nodes == 3
    assert display_tree(twice).children[1] == GraphTree("SumBackward0", shared=True)


def test_no_roots() -> None:
    assert walk_graph([], {}) == GraphFact(nodes=0, depth=0)
    assert walk_graph([None, None], {}) == GraphFact(nodes=0, depth=0)


# --- random DAGs against an independent reference ---------------------------------------------

UNARY = {"neg": torch.neg, "sin": torch.sin, "exp": torch.exp, "view": lambda t: t.view(3),
         "detach": torch.Tensor.detach, "square": lambda t: t * t}
BINARY = {"add": torch.add, "mul": torch.mul, "sub": torch.sub}


Program = tuple[list[bool], list[tuple[str, int, int]], list[int]]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    """Leaves (requires_grad flags), ops over earlier tensors, and which tensors are roots."""
    flags = draw(st.lists(st.booleans(), min_size=1, max_size=3))
    ops = []
    for k in range(draw(st.integers(0, 25))):
        count = len(flags) + k
        name = draw(st.sampled_from(sorted(UNARY) + sorted(BINARY)))
        ops.append((name, draw(st.integers(0, count - 1)), draw(st.integers(0, count - 1))))
    total = len(flags) + len(ops)
    roots = draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=3))
    return flags, ops, roots


def reference(roots: list) -> tuple[int, int]:
    """Distinct nodes and longest path, by plain recursion with memo (fine for these small graphs)."""
    longest: dict = {}

    def depth(node) -> int:
        if node not in longest:
            children = [child for child, _ in node.next_functions if child is not None]
            longest[node] = 1 + max((depth(child) for child in children), default=0)
        return longest[node]

    best = max((depth(root) for root in roots if root is not None), default=0)
    return len(longest), best


def covered(tree: GraphTree) -> int:
    """Graph nodes a tree entry stands for, summed over entries that are not repeats of shown ones."""
    total, stack = 0, [tree]
    while stack:
        entry = stack.pop()
        if not entry.shared and entry.label != "(roots)":
            total += entry.repeat * len(entry.label.split(" → "))
        stack.extend(entry.children)
    return total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_dags_match_reference(program: Program) -> None:
    flags, ops, root_ids = program
    tensors = [torch.randn(3, requires_grad=flag) for flag in flags]
    deps: list[frozenset[int]] = [frozenset({i}) if flag else frozenset() for i, flag in enumerate(flags)]
    for name, a, b in ops:
        if name in UNARY:
            tensors.append(UNARY[name](tensors[a]))
            deps.append(frozenset() if name == "detach" else deps[a])
        else:
            tensors.append(BINARY[name](tensors[a], tensors[b]))
            deps.append(deps[a] | deps[b])
    names = {id(t): f"leaf{i}" for i, t in enumerate(tensors[: len(flags)]) if i % 2 == 0}
    roots = [tensors[i].grad_fn for i in root_ids]
    fact = walk_graph(roots, names)
    nodes, depth = reference(roots)
    assert (fact.nodes, fact.depth) == (nodes, depth)
    # reached_params from the program itself, not from autograd (a leaf root has no grad_fn to walk).
    reached = frozenset().union(*(deps[i] for i in root_ids if i >= len(flags)))
    assert fact.reached_params == frozenset(f"leaf{i}" for i in reached if i % 2 == 0)
    if nodes == 0:
        assert display_tree(fact) is None
        return
    # With limits out of the way, every node appears exactly once unshared (chains count in full).
    assert covered(display_tree(fact, 10_000, max_children=100)) == nodes
    # With limits, the tree respects them.
    stack = [(display_tree(fact, 3, max_children=1), 1)]
    while stack:
        entry, level = stack.pop()
        assert level <= 3 and len(entry.children) <= 1
        stack.extend((child, level + 1) for child in entry.children)


# --- deep graphs ------------------------------------------------------------------------------


def test_walk_needs_no_recursion() -> None:
    w = leaf()
    x = w
    for _ in range(3_000):
        x = x.neg()
    loss = x.sum()
    limit = sys.getrecursionlimit()
    frames = 0
    frame = sys._getframe()
    while frame is not None:
        frames, frame = frames + 1, frame.f_back
    sys.setrecursionlimit(frames + 50)  # a recursive walk of 3,000 nodes could not run under this
    try:
        fact = walk_graph([loss.grad_fn], {id(w): "w"})
    finally:
        sys.setrecursionlimit(limit)
    assert (fact.nodes, fact.depth) == (3_002, 3_002)


def test_shallow_graph_is_released_at_once() -> None:
    w = leaf()
    probe = torch.randn(3, requires_grad=True)
    alive = weakref.ref(probe)
    loss = (w * probe).sum()
    del probe
    walk_graph([loss.grad_fn], {id(w): "w"})
    del loss  # the AccumulateGrad node held the only reference to probe
    assert alive() is None


# --- release_on_big_stack ---------------------------------------------------------------------


def freed_on(holder: list) -> tuple[list[int], weakref.ref]:
    """Put a fresh tensor in ``holder``; returns where (thread ids) it will be freed, and a weakref."""
    t = torch.ones(2)
    where: list[int] = []
    weakref.finalize(t, lambda: where.append(threading.get_ident()))
    holder.append(t)
    return where, weakref.ref(t)


def test_release_clears_on_another_thread_and_restores_the_stack_size() -> None:
    previous = threading.stack_size(512 * 1024)  # a setting of the user's own must survive
    try:
        holder: list = []
        where, alive = freed_on(holder)
        release_on_big_stack(holder)
        assert holder == [] and alive() is None
        assert where and where[0] != threading.get_ident()
        assert threading.stack_size() == 512 * 1024
    finally:
        threading.stack_size(previous)
    assert all(t.name != "gradprobe-release" for t in threading.enumerate())  # joined


def test_release_falls_back_to_this_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(size: int = 0) -> int:
        raise ValueError("size not valid")

    monkeypatch.setattr(threading, "stack_size", refuse)
    holder: list = []
    where, alive = freed_on(holder)
    release_on_big_stack(holder)
    assert holder == [] and alive() is None and where == [threading.get_ident()]


def test_release_clears_the_locals_of_a_traceback() -> None:
    refs: list[weakref.ref] = []

    def fails(t: torch.Tensor) -> None:
        raise RuntimeError("no")

    def outer() -> None:
        local = torch.ones(2)
        refs.append(weakref.ref(local))
        try:
            fails(local)
        except RuntimeError as exc:
            raise ValueError("wrapped") from exc

    try:
        outer()
    except ValueError as exc:
        error = exc
    assert refs[0]() is not None  # kept by the frames of outer() and fails() in the tracebacks
    release_on_big_stack([], error)
    assert refs[0]() is None
    text = "".join(traceback.format_exception(error))
    assert "RuntimeError: no" in text and "in fails" in text and "ValueError: wrapped" in text


# --- deep graphs in a subprocess: a crash while freeing fails one test instead of killing pytest -


def run_python(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": path}, timeout=180)


DIRECT_SCRIPT = textwrap.dedent("""
    import gc, sys, weakref
    import torch
    from gradprobe.run.trackers.graph import walk_graph
    from gradprobe.run.trackers.release import release_on_big_stack

    mode = sys.argv[1]
    w = torch.ones(1, requires_grad=True)
    probe = torch.ones(1, requires_grad=True)  # at the bottom of the chain: alive while the graph is
    alive = weakref.ref(probe)
    x = w * probe
    del probe
    for i in range(100_000):
        x = x * 1.0001
    loss = x.sum()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    assert (fact.nodes, fact.depth) == (100_004, 100_003), fact
    assert walk_graph([loss.grad_fn], {id(w): "w"}).nodes == 100_004  # a second walk changes nothing
    if mode == "backward":
        loss.backward()
        assert w.grad is not None
    held = [loss]
    del loss
    release_on_big_stack(held)  # the loss's own node only: x still owns the chain below it
    assert alive() is not None, "freed while x still owned it"
    held = [x]
    del x
    release_on_big_stack(held)
    assert held == [] and alive() is None, "the walked graph was not freed"
    y = (w * 3).sum()  # carry on working
    y.backward()
    gc.collect()
    print("survived", mode, flush=True)
""")


@pytest.mark.parametrize("mode", ["walk", "backward"])
@pytest.mark.slow
def test_deep_walked_chain_is_released_on_a_big_stack(mode: str) -> None:
    proc = run_python(DIRECT_SCRIPT, mode)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == f"survived {mode}"


API_SCRIPT = textwrap.dedent("""
    import atexit, gc, sys, threading, traceback, weakref
    import torch
    from torch import nn
    import gradprobe
    from gradprobe.errors import RunError

    bottoms = []  # weakrefs to a leaf at the bottom of each run's chain: dead once the graph is freed

    class Chain(nn.Module):
        def __init__(self, fail: bool = False) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))
            self.fail = fail

        def forward(self, x):
            bottom = torch.ones(3, requires_grad=True)
            bottoms.append(weakref.ref(bottom))
            x = x * self.w * bottom
            for _ in range(100_000):
                x = x * 1.00001
            if self.fail:
                x.register_hook(lambda grad: 1 / 0)  # backward raises at the top of the chain
            return x

    callbacks, exits = len(gc.callbacks), atexit._ncallbacks()
    report = gradprobe.probe(Chain(), torch.ones(3))
    # Sum, 100,000 Mul, Mul(bottom), Mul(w), AccumulateGrad(w) and AccumulateGrad(bottom).
    assert (report.facts.graph.nodes, report.facts.graph.depth) == (100_005, 100_004), report.facts.graph
    assert report.facts.backward and bottoms[-1]() is None
    print("probe", flush=True)

    report = gradprobe.probe(Chain(), torch.ones(3), backward=False, memory=False)
    assert not report.facts.backward and bottoms[-1]() is None
    print("no backward", flush=True)

    try:
        gradprobe.probe(Chain(fail=True), torch.ones(3), memory=False)
        raise AssertionError("backward did not raise")
    except RunError as exc:
        error = exc
    assert "backward raised" in str(error) and bottoms[-1]() is None  # the error does not keep the graph
    assert "ZeroDivisionError" in "".join(traceback.format_exception(error))
    del error
    print("failed backward", flush=True)

    small = gradprobe.probe(nn.Linear(3, 2), torch.ones(4, 3))  # carry on working
    assert small.facts.graph.depth == 4  # Sum, Addmm, T, AccumulateGrad(weight)
    assert threading.stack_size() == 0 and len(gc.callbacks) == callbacks and atexit._ncallbacks() == exits
    gc.collect()
    print("survived", flush=True)
""")


@pytest.mark.slow
def test_deep_chain_through_the_api_leaves_a_working_process() -> None:
    proc = run_python(API_SCRIPT)
    assert proc.returncode == 0, f"exit {proc.returncode} after {proc.stdout.split()}\n{proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["probe", "no", "backward", "failed", "backward", "survived"]


DEEP_MODEL = textwrap.dedent("""
    import torch
    from torch import nn


    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))
            self.example_input_array = torch.ones(3)

        def forward(self, x):
            x = x * self.w
            for _ in range(100_000):
                x = x * 1.00001
            return x
""")


@pytest.mark.slow
def test_deep_chain_through_the_cli(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "deep_model.py").write_text(DEEP_MODEL)
    result = run_cli("inspect", "deep_model.py:Deep", "--format", "json", cwd=tmp_path, timeout=180)
    assert result.code == 0, f"exit {result.code}\n{result.err[-2000:]}"
    graph = json.loads(result.out)["graph"]
    # Sum, 100,000 Mul, Mul(w), AccumulateGrad(w): one chain.
    assert (graph["nodes"], graph["depth"]) == (100_003, 100_003)


@pytest.mark.slow
def test_million_node_chain() -> None:
    w = leaf(1)
    x = w
    for _ in range(1_000_000):
        x = x.view(1)  # the cheapest op that adds a node (~1 µs)
    loss = x.sum()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})  # its time is measured in benchmarks/run.py
    assert (fact.nodes, fact.depth) == (1_000_002, 1_000_002)
    assert display_tree(fact) == GraphTree("SumBackward0", children=(
        GraphTree("ViewBackward0", repeat=1_000_000, children=(acc("w"),)),))
    held = [loss, x]
    del loss, x
    release_on_big_stack(held)  # in the main thread this would overflow the C stack
    gc.collect()
