"""Explicit flags always win over ``[tool.gradprobe]`` (issue 10 §1): flags > table > defaults, for every key and
every command; stderr names the table and the keys it supplied; ``--no-config``; a table's target-specific keys
(inputs, optimizer ...) only for the target it names.  The installed CLI in a project folder, with the losses
checked against plain PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.projects import make_project, write


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "my-project")


def config_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gradprobe: config:")]


def net_loss(seed: int, rows: int) -> float:
    """Net from the project in plain PyTorch: seeded build, a --shape rows,8 input, the sum of the outputs."""
    from torch import nn

    torch.manual_seed(seed)
    block, head = nn.Linear(8, 8), nn.Linear(8, 2)
    x = torch.randn(rows, 8)
    with torch.no_grad():
        return float(head(block(x).relu()).sum())


def test_the_table_supplies_what_the_command_line_leaves_out(project: Path, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "-f", "json", cwd=project)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["target"] == "mypkg.models.net:Net"
    assert doc["loss"] == pytest.approx(net_loss(seed=1, rows=2), rel=1e-6)  # shape and seed from the table
    (line,) = config_lines(res.err)
    assert line == f"gradprobe: config: {project / 'pyproject.toml'} [tool.gradprobe] supplied target, shape, seed"


@pytest.mark.parametrize("command", ["inspect", "compare-modes", "freeze-check"])
def test_flags_win_over_the_table_in_every_command(project: Path, run_cli: Callable[..., Any], command: str) -> None:
    extra = {"compare-modes": ["--repeat", "1"], "freeze-check": ["--frozen", "block"]}.get(command, [])
    res = run_cli(command, "mypkg.models.net:Net", "--shape", "3,8", "--seed", "2", "--no-config", *extra,
                  "-f", "json", cwd=project)
    assert res.code in (0, 1), res.err
    assert not config_lines(res.err)
    given = run_cli(command, "--shape", "3,8", "--seed", "2", *extra, "-f", "json", cwd=project)
    assert given.code in (0, 1), given.err
    doc, doc_given = json.loads(res.out), json.loads(given.out)
    if command == "inspect":
        assert doc_given["loss"] == doc["loss"] == pytest.approx(net_loss(seed=2, rows=3), rel=1e-6)
    elif command == "compare-modes":  # saved bytes follow the batch: 3 rows from the flag, not 2 from the table
        saved = [r["saved_for_backward_bytes"] for r in doc["rows"]]
        assert [r["saved_for_backward_bytes"] for r in doc_given["rows"]] == saved
        table = json.loads(run_cli(command, *extra, "-f", "json", cwd=project).out)
        assert saved[0] != table["rows"][0]["saved_for_backward_bytes"]
    else:  # the freeze table's inputs (3 rows from inputs.py) and optimizer are the table's; --shape wins
        assert doc_given["optimizer"]["type"] == "SGD"
    (line,) = config_lines(given.err)
    assert "supplied target" in line and "shape" not in line and "seed" not in line


def test_a_table_written_for_another_model_keeps_its_inputs_and_optimizer(project: Path,
                                                                          run_cli: Callable[..., Any]) -> None:
    """The reported case: the freeze table's inputs (8 features) and optimizer must not reach other.py:Other."""
    res = run_cli("freeze-check", "other.py:Other", "--shape", "2,4", "--frozen", "backbone", "--trainable", "head",
                  "-f", "json", cwd=project)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["passed"] and doc["optimizer"] is None
    (line,) = config_lines(res.err)
    assert "not used, as written for target 'mypkg.models.net:Net': inputs, optimizer" in line
    # the table's own target still gets them
    own = run_cli("freeze-check", "mypkg.models.net:Net", "--frozen", "nothing_matches_this", "-f", "json",
                  cwd=project)
    assert own.code == 2 and "matches no" in own.err
    own = run_cli("freeze-check", "mypkg.models.net:Net", "-f", "json", cwd=project)
    assert own.code == 1, own.err  # block is listed as frozen but trains: a violation, with the table's optimizer
    doc = json.loads(own.out)
    assert doc["optimizer"]["type"] == "SGD"
    (line,) = config_lines(own.err)
    assert "supplied" in line and "inputs" in line and "optimizer" in line and "not used" not in line


def test_no_config_ignores_the_table(project: Path, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "--no-config", cwd=project)
    assert res.code == 2 and "no TARGET" in res.err and not config_lines(res.err)


def test_command_tables_and_unknown_keys(project: Path, run_cli: Callable[..., Any]) -> None:
    write(project / "pyproject.toml", '[tool.gradprobe]\ntarget = "other.py:Other"\nshape = "2,4"\n\n'
                                      '[tool.gradprobe.inspect]\nseed = 5\n\n'
                                      '[tool.gradprobe.compare-modes]\nseed = 6\n')
    res = run_cli("inspect", "-f", "json", cwd=project)
    assert res.code == 0, res.err
    assert "[tool.gradprobe] + [tool.gradprobe.inspect] supplied target, shape, seed" in config_lines(res.err)[0]
    write(project / "pyproject.toml", '[tool.gradprobe]\ntarget = "other.py:Other"\nfrozen = ["backbone"]\n')
    bad = run_cli("inspect", cwd=project)
    assert bad.code == 2 and "'frozen' belongs under [tool.gradprobe.freeze]" in bad.err
    write(project / "pyproject.toml", '[tool.gradprobe]\ntarget = "other.py:Other"\nshapes = "2,4"\n')
    bad = run_cli("inspect", cwd=project)
    assert bad.code == 2 and "did you mean 'shape'" in bad.err
