"""--graph and --grads where the run is distributed or simulated: exported from rank 0, or refused in one line.

They were silently dropped under --wrap/torchrun and with --world-size (exit 0, no file, no gradient figures)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
'''


def _plain_node_count() -> int:
    """grad_fn nodes behind the default loss (sum of the output), AccumulateGrad included, walked in plain torch."""
    torch.manual_seed(0)
    a, b = nn.Linear(8, 16), nn.Linear(16, 4)  # MODEL's Net: addmm, relu, addmm, then the sum
    loss = b(torch.relu(a(torch.randn(4, 8)))).sum()
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def test_graph_under_wrap_is_rank0s_graph(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "m.py").write_text(MODEL)
    one = run_cli("inspect", "m.py:Net", "--shape", "4,8", "--graph", "one.dot", cwd=tmp_path)
    ddp = run_cli("inspect", "m.py:Net", "--shape", "4,8", "--wrap", "ddp", "--graph", "ddp.dot", cwd=tmp_path)
    assert one.code == 0 and ddp.code == 0, ddp.err
    text = (tmp_path / "ddp.dot").read_text()
    assert text == (tmp_path / "one.dot").read_text()  # DDP's own call is not a node: the user's modules are
    count = re.search(r"\((\d+) grad_fn nodes", text)
    assert count and int(count.group(1)) == _plain_node_count()
    for name in ("a.weight", "a.bias", "b.weight", "b.bias"):
        assert f'"{name}\\n' in text or f"{name}\\n" in text


@pytest.mark.parametrize("extra", [("--wrap", "ddp"), ("--wrap", "fsdp", "--world-size", "2")])
def test_grads_where_no_one_process_run_exists_is_refused(tmp_path: Path, run_cli: Callable[..., Any],
                                                           extra: tuple[str, ...]) -> None:
    (tmp_path / "m.py").write_text(MODEL)
    res = run_cli("inspect", "m.py:Net", "--shape", "4,8", "--grads", *extra, cwd=tmp_path)
    assert res.code == 2
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--grads" in lines[0] and "Traceback" not in res.err


def test_graph_with_world_size_is_refused(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "m.py").write_text(MODEL)
    res = run_cli("inspect", "m.py:Net", "--shape", "4,8", "--wrap", "fsdp", "--world-size", "2", "--graph", "g.svg",
                  cwd=tmp_path)
    assert res.code == 2 and "--graph" in res.err and not (tmp_path / "g.svg").exists()
