"""``inspect --graph FILE.dot|.mmd|.svg`` and the Mermaid block of ``--format markdown``, on a real model with
trainable, frozen, unused and tied parameters."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import CliResult
from tests.fixtures.mermaid_check import check_mermaid

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Mixed(nn.Module):
        example_input_array = torch.randn(4, 8)

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
            self.backbone[0].requires_grad_(False)  # frozen
            self.head = nn.Linear(16, 16)
            self.tied = nn.Linear(16, 16)
            self.tied.weight = self.head.weight  # tied: one parameter, two names
            self.aux = nn.Linear(16, 2)  # never called: unused

        def forward(self, x):
            h = self.backbone(x)
            return self.tied(torch.relu(self.head(h)))
""")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.py"
    path.write_text(MODEL)
    return path


def _names() -> list[str]:
    namespace: dict[str, object] = {}
    exec(MODEL, namespace)
    model = namespace["Mixed"]()  # type: ignore[operator]
    return [n for n, _ in model.named_parameters(remove_duplicate=False)]


@pytest.mark.parametrize("suffix", ["dot", "mmd", "svg"])
def test_graph_file_names_every_parameter(run_cli: Callable[..., CliResult], model_file: Path, tmp_path: Path,
                                          suffix: str) -> None:
    out = tmp_path / f"graph.{suffix}"
    result = run_cli("inspect", f"{model_file}:Mixed", "--graph", str(out))
    assert result.code == 0, result.err
    assert f"wrote {out}" in result.err
    text = out.read_text()
    names = _names()
    # tied parameters: the canonical name labels the node, the alias is in its tooltip (DOT, SVG)
    canonical = [n for n in names if n != "tied.weight"]
    assert all(name in text for name in canonical)
    if suffix == "dot":
        assert "tied.weight" in text
        if shutil.which("dot"):
            proc = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        assert re.search(r'label="backbone\.0\.weight\\n16×8", shape=ellipse, style="filled,dashed", '
                         r'fillcolor="#f1f5f9"', text)  # frozen: dashed grey
        assert re.search(r'label="aux\.weight\\n2×16", shape=ellipse, style="filled,dashed", fillcolor="#fee2e2"',
                         text)  # unused: dashed red
    elif suffix == "mmd":
        check_mermaid(text)
        assert re.search(r"class [\w,]+ gp_frozen", text) and re.search(r"class [\w,]+ gp_unused", text)
    else:
        ET.fromstring(text)
        assert "tied.weight" in text


def test_markdown_embeds_a_mermaid_block(run_cli: Callable[..., CliResult], model_file: Path) -> None:
    result = run_cli("inspect", f"{model_file}:Mixed", "--format", "markdown")
    assert result.code == 0, result.err
    block = re.search(r"```mermaid\n(.*?)```", result.out, re.S)
    assert block is not None
    check_mermaid(block.group(1))
    assert all(name in block.group(1) for name in _names() if name != "tied.weight")


def test_depth_collapses_and_bad_suffix_is_a_usage_error(run_cli: Callable[..., CliResult], model_file: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    assert run_cli("inspect", f"{model_file}:Mixed", "--graph", str(out), "--depth", "1").code == 0
    text = out.read_text()
    assert '"backbone\\nSequential' in text and "backbone.2\\n" not in text
    bad = run_cli("inspect", f"{model_file}:Mixed", "--graph", str(tmp_path / "g.png"))
    assert bad.code == 2 and len(bad.err_lines) == 1 and "name a .dot, .mmd or .svg file" in bad.err


def test_torch_not_needed_to_reject_the_path(run_cli: Callable[..., CliResult]) -> None:
    assert torch.__version__  # the check runs before the model loads: a missing target is not reached
    bad = run_cli("inspect", "nowhere:Nothing", "--graph", "x.pdf")
    assert bad.code == 2 and "name a .dot, .mmd or .svg file" in bad.err
