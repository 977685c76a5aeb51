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


def _at_80_columns(run_cli: Callable[..., CliResult], tmp_path: Path, source: str, code: int,
                   *args: str) -> tuple[CliResult, dict]:
    """The table view at 80 columns (exit ``code``, no cell cut with "…", no line past 80) and the JSON."""
    (tmp_path / "model.py").write_text(source)
    result = run_cli("inspect", *args, cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.code == code, result.err
    assert "…" not in result.out, result.out
    assert max(len(line) for line in result.out.splitlines()) <= 80, result.out
    return result, json.loads(run_cli("inspect", *args, "--format", "json", cwd=tmp_path).out)


def test_tables_readable_at_80_columns(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """At 80 columns every cell of the summary and category tables is whole: no word or byte figure cut
    with "…", each line within 80 characters, and the summary's figures equal the JSON's."""
    result, doc = _at_80_columns(run_cli, tmp_path, MODEL, 0, "model.py:Stack", "--shape", "4,8", "--wrap", "fsdp",
                                 "--shard", "blocks.*", "--world-size", "2,4", "--budget", "1MiB")
    for row in doc["memory"]["per_rank"]:
        line = next(x for x in result.out.splitlines() if re.match(rf"\s*{row['world_size']}\s+simulated\s", x))
        assert "simulated" in line and ("yes" in line) == (row["peak_bytes"] <= 2**20)
    for category in ("sharded parameters", "unsharded parameters", "optimizer state", "activations"):
        assert re.search(rf"^\s+{category}\s+\d", result.out, re.M), category


CNN = '''
import torch.nn as nn

class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
'''


def test_long_category_and_many_world_sizes_stay_whole_at_80_columns(run_cli: Callable[..., CliResult],
                                                                    tmp_path: Path) -> None:
    """'unsharded parameters' as the largest category (its header holds "peak", so it was sized as a figure)
    cut "estimated" to "estimat…" and left byte figures without their unit; four world sizes left the category
    table's description 7 columns, where rich cut its words ("this ra", "paramet"). Every figure the JSON
    gives is printed whole, every description word too, each line within 80 characters."""
    from gradprobe.facts.fit import MEANING
    from gradprobe.units import human_bytes

    result, doc = _at_80_columns(run_cli, tmp_path, CNN, 1, "model.py:CNN", "--shape", "1,3,8,8", "--wrap", "fsdp",
                                 "--world-size", "1,2,4,64", "--device", "meta", "--budget", "1KiB")
    words = set(result.out.split())
    for row in doc["memory"]["per_rank"]:
        line = next(x for x in result.out.splitlines() if re.match(rf"\s*{row['world_size']}\s+estimated\s", x))
        assert human_bytes(row["peak_bytes"]) in line, line
        assert human_bytes(row["forward"]["total_bytes"]) in line, line
    assert "unsharded" in words and "parameters" in words
    for category, meaning in MEANING.items():
        if f"{category}_bytes" in doc["memory"]["per_rank"][0]["step"] and any(
                r["step"].get(f"{category}_bytes") for r in doc["memory"]["per_rank"]):
            assert set(meaning.split()) <= words, (category, result.out)
