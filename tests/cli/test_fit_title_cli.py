"""``inspect --world-size``: the title counts the FSDP units in words that agree with the count ("1 FSDP unit")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

pytestmark = pytest.mark.slow

MODEL = '''
import torch, torch.nn as nn

class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return x.sum()
'''


@pytest.mark.parametrize(("shard", "units"), [((), 1), (("--shard", "blocks.*"), 4)])
def test_title_counts_units(run_cli: Callable[..., CliResult], tmp_path: Path, shard: tuple[str, ...],
                            units: int) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    result = run_cli("inspect", "model.py:Stack", "--shape", "4,8", "--wrap", "fsdp", *shard, "--world-size", "2",
                     cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.code == 0, result.err
    # the root is always a unit; --shard 'blocks.*' adds one per block (3)
    counted = re.search(r"fsdp \((\d+) FSDP (units?)\)", result.out)
    assert counted is not None, result.out
    assert int(counted.group(1)) == units
    assert counted.group(2) == ("unit" if units == 1 else "units")


def test_tables_readable_at_80_columns(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """At 80 columns every cell of the summary and category tables is whole: no word or byte figure cut
    with "…", each line within 80 characters, and the summary's figures equal the JSON's."""
    (tmp_path / "model.py").write_text(MODEL)
    args = ("inspect", "model.py:Stack", "--shape", "4,8", "--wrap", "fsdp", "--shard", "blocks.*",
            "--world-size", "2,4", "--budget", "1MiB")
    result = run_cli(*args, cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.code == 0, result.err
    assert "…" not in result.out, result.out
    assert max(len(line) for line in result.out.splitlines()) <= 80
    doc = json.loads(run_cli(*args, "--format", "json", cwd=tmp_path).out)
    for row in doc["memory"]["per_rank"]:
        line = next(x for x in result.out.splitlines() if re.match(rf"\s*{row['world_size']}\s+simulated\s", x))
        assert "simulated" in line and ("yes" in line) == (row["peak_bytes"] <= 2**20)
    for category in ("sharded parameters", "unsharded parameters", "optimizer state", "activations"):
        assert re.search(rf"^\s+{category}\s+\d", result.out, re.M), category
