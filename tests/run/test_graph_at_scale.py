"""Graphs of real size: a million-node grad_fn walk in seconds and bounded memory, collapsed tree views."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from rich.console import Console

from gradprobe.api import probe
from gradprobe.render.inspect.table import graph_tree
from gradprobe.run.trackers.graph import walk_graph
from gradprobe.run.trackers.release import release_on_big_stack

WALK_SCRIPT = textwrap.dedent("""
    import json, sys, time, tracemalloc, torch
    from gradprobe.run.trackers.graph import walk_graph
    from gradprobe.run.trackers.release import release_on_big_stack

    def chain(n):
        w = torch.ones(1, requires_grad=True)
        x = w
        for _ in range(n):
            x = x.view(1)
        return w, x.sum()

    n = int(sys.argv[1])
    w, loss = chain(n)
    if sys.argv[2] == "memory":
        tracemalloc.start()
    start = time.perf_counter()
    fact = walk_graph([loss.grad_fn], {id(w): "w"})
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if sys.argv[2] == "memory" else None
    held = [w, loss]
    del w, loss
    release_on_big_stack(held)  # freeing a walked deep graph on the main thread's stack would crash
    print(json.dumps({"nodes": fact.nodes, "depth": fact.depth, "seconds": seconds, "peak": peak}))
""")


def _walk(nodes: int, mode: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", WALK_SCRIPT, str(nodes), mode], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_million_node_walk_in_a_fresh_process() -> None:
    """Its time (~1.2-1.8 s on a 2-core machine) is measured by benchmarks/run.py, not asserted here."""
    result = _walk(1_000_000, "time")
    assert (result["nodes"], result["depth"]) == (1_000_002, 1_000_002)


@pytest.mark.slow
def test_walk_memory_is_linear_and_small() -> None:
    """Python heap at the walk's peak: ~160-190 bytes per node (~180 MiB for a million), none of it kept."""
    small, large = _walk(20_000, "memory"), _walk(100_000, "memory")
    per_node = large["peak"] / large["nodes"]
    assert per_node < 400
    assert large["peak"] < 8 * small["peak"]  # 5x the nodes: linear (dict and list growth aside), not quadratic


def _tree_text(loss: torch.Tensor, names: dict[int, str]) -> str:
    from gradprobe.facts.run import RunFacts

    fact = dataclasses.replace(walk_graph([loss.grad_fn], names), display_depth=12)
    held = [loss]
    del loss
    release_on_big_stack(held)  # the caller's tensors still hold the graph; this drops only our reference
    facts = RunFacts("t", "2", "cpu", "train", "grad", False, None, None, (), (), (), (), (), fact, None, True)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(graph_tree(facts))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_repeated_chain_is_one_line() -> None:
    """``x = x * 2 + 1`` twenty thousand times: one line ``MulBackward0 → AddBackward0 × 20000``."""
    w = torch.ones(3, requires_grad=True)
    x = w
    for _ in range(20_000):
        x = x * 2 + 1
    held = [x]
    del x
    text = _tree_text(held[0].sum(), {id(w): "w"})
    release_on_big_stack(held)  # 40,000 walked levels: free them on a big stack
    assert "× 20000" in text
    assert text.count("MulBackward0") == 1 and text.count("AddBackward0") == 1
    assert len(text.splitlines()) < 10


def test_shared_subgraph_is_shown_once() -> None:
    w = torch.ones(3, requires_grad=True)
    shared = (w * 3).exp().sin()
    loss = (shared * 2).sum() + (shared + 1).sum()
    text = _tree_text(loss, {id(w): "w"})
    assert text.count("SinBackward0") == 2  # once expanded, once marked
    assert text.count("ExpBackward0") == 1
    assert "shared, shown above" in text


def test_long_rnn_like_model_reports_counts() -> None:
    """A model whose graph is deep: counts are exact, the tree stays short."""
    class Loop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = torch.nn.Linear(4, 4)
            self.example_input_array = torch.randn(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(500):
                x = torch.tanh(self.cell(x))
            return x

    facts = probe(Loop()).facts
    assert facts.graph is not None and facts.graph.nodes > 500 * 3
    assert facts.graph.depth > 500 * 2
    assert {"cell.weight", "cell.bias"} <= facts.graph.reached_params
