"""Models with 10,000+ module calls: the terminal view summarises in under 2 s, JSON keeps every row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from gradprobe.api import probe
from gradprobe.facts.run import InspectReport
from gradprobe.render.inspect.json_out import dumps, inspect_json
from gradprobe.render.inspect.table import render_inspect

pytestmark = pytest.mark.slow  # building and probing 15,000 module calls: seconds

BLOCKS = 5_000  # Sequential(Linear, Tanh) each: 15,001 module calls with the model and the Sequentials

WIDE = f"""
import torch
from torch import nn

class Wide(nn.Module):
    def __init__(self, blocks: int = {BLOCKS}) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(blocks))
        self.example_input_array = torch.randn(2, 8)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x
"""


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory: pytest.TempPathFactory) -> InspectReport:
    namespace: dict[str, object] = {}
    exec(WIDE, namespace)  # the same source the CLI test imports from a file
    torch.manual_seed(0)
    model: nn.Module = namespace["Wide"]()  # type: ignore[operator]
    return probe(model)


def test_wide_model_has_more_than_10000_calls(wide_report: InspectReport) -> None:
    facts = wide_report.facts
    assert sum(m.calls for m in facts.modules) == 3 * BLOCKS + 1
    assert len(facts.memory.by_module) == 3 * BLOCKS + 1
    assert len(facts.tensors) == 3 * BLOCKS + 1


def test_terminal_view_summarises_a_huge_model(wide_report: InspectReport) -> None:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    render_inspect(wide_report, console, top=40)  # its time is measured by benchmarks/run.py
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert len(text.splitlines()) < 600  # summarised: top rows plus "N more rows" captions
    assert "more rows" in text


def test_json_keeps_every_row(wide_report: InspectReport) -> None:
    doc = json.loads(dumps(inspect_json(wide_report)))
    assert len(doc["tensors"]) == 3 * BLOCKS + 1
    assert len(doc["memory"]["by_module"]) == 3 * BLOCKS + 1
    assert len(doc["parameters"]) == 2 * BLOCKS


def test_cli_top_and_filter_on_a_wide_model(run_cli, tmp_path: Path) -> None:
    (tmp_path / "wide.py").write_text(WIDE)
    result = run_cli("inspect", "wide.py:Wide", "--init", '{"blocks": 2000}', "--top", "5",
                     "--filter", "blocks.1999*", cwd=tmp_path, timeout=300)
    assert result.code == 0, result.err
    tensors = result.out.split("Tensors (")[1].split("grad_fn graph")[0]
    assert "blocks.1999" in tensors and "blocks.1998" not in tensors
    assert len(result.out.splitlines()) < 300
