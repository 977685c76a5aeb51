"""``--format html`` with DDP (``--wrap ddp``, a world of one process here; torchrun takes the same path): the
graph picture used to loop forever.  Renamed to the user's names, DDP's own call ``('', 1)`` and the model's
``('module', 1)`` became one call that was its own parent in the call tree; the page is now written, with the
same module clusters as the model run unwrapped."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

pytestmark = pytest.mark.slow

MODEL = '''
import torch, torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))

class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x).sum()
'''


def _clusters(page: Path) -> list[str]:
    """The graph's nodes for the blocks' own ops (one per block call)."""
    return sorted(set(re.findall(r"blocks\.\d \(own ops\)", page.read_text())))


@pytest.mark.parametrize("command", [("inspect",), ("freeze-check", "--frozen", "blocks.0", "--trainable", "blocks.1",
                                                    "--trainable", "blocks.2", "--trainable", "head")])
def test_ddp_html_page_is_written(run_cli: Callable[..., CliResult], tmp_path: Path,
                                  command: tuple[str, ...]) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    name, *rest = command
    args = (name, "model.py:Stack", *rest, "--shape", "4,8", "--format", "html")
    plain = run_cli(*args, "--output", "plain.html", cwd=tmp_path, timeout=90)
    ddp = run_cli(*args, "--wrap", "ddp", "--output", "ddp.html", cwd=tmp_path, timeout=90)
    assert ddp.code == plain.code, ddp.err
    assert _clusters(tmp_path / "plain.html") == [f"blocks.{i} (own ops)" for i in range(3)]
    assert _clusters(tmp_path / "ddp.html") == _clusters(tmp_path / "plain.html")
