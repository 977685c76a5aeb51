"""The ``inspect`` command end to end: formats, --output, --strict, clean stdout, and a torch-free --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import models as mi

FILE = str(Path(mi.__file__))

USER_MODULE = """
import sys
import torch
from torch import nn

print("user: printed at import")
torch.set_grad_enabled(False)  # a careless script-style module


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        print("user: printed in the constructor")
        self.lin = nn.Linear(3, 2)
        self.example_input_array = torch.ones(4, 3)

    def forward(self, x):
        print("user: printed in forward")
        sys.stdout.write("user: written to sys.stdout\\n")
        return self.lin(x)
"""


# ------------------------------------------------------------------ --help never imports torch


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from gradprobe.cli.app import main\n"
        "for argv in (['--help'], ['inspect', '--help'], ['--version']):\n"
        "    assert main(argv) == 0, argv\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stdout and "inspect" in proc.stdout and "--format" in proc.stdout


def test_help_importtime_has_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradprobe", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")]
    assert "gradprobe.cli" in imported
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]
    assert "inspect" in proc.stdout


# ------------------------------------------------------------------ stdout carries only the report


@pytest.mark.slow
def test_user_prints_go_to_stderr_and_grad_mode_is_forced(tmp_path: Path, run_cli) -> None:
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    result = run_cli("inspect", "user_module:Net", "--format", "json", cwd=tmp_path)
    assert result.code == 0, result.err
    doc = json.loads(result.out)  # stdout is exactly one JSON document
    for line in ("printed at import", "printed in the constructor", "printed in forward", "written to sys.stdout"):
        assert f"user: {line}" in result.err
        assert line not in result.out
    # the module switched grad off at import: `--grad grad` still means enabled, and the report says so
    assert doc["backward"] is True
    assert doc["outputs"][0]["requires_grad"] is True
    assert {p["grad"] for p in doc["parameters"]} == {"nonzero"}
    assert doc["global_grad_enabled"] is False
    assert "global-grad-disabled" in {f["code"] for f in doc["findings"]}


def test_user_prints_in_process_too(cli, tmp_path: Path) -> None:
    (tmp_path / "chatty_inproc.py").write_text(USER_MODULE)
    result = cli("inspect", f"{tmp_path}/chatty_inproc.py:Net", "--format", "json")
    assert result.code == 0
    json.loads(result.out)
    assert "user: printed in forward" in result.err


# ------------------------------------------------------------------ formats and --output


@pytest.mark.slow
def test_table_format_through_python_m(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gradprobe", "inspect", f"{FILE}:NeverCalled"],
                          capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("gradprobe inspect", "Parameters (4; all float32", "aux.weight", "grad-none", "Memory",
                   "grad_fn graph"):
        assert needle in out
    assert "\x1b[" not in out  # not a terminal: no escape codes
    assert proc.stderr == ""


def test_markdown_format(cli) -> None:
    result = cli("inspect", f"{FILE}:NeverCalled", "--format", "markdown")
    assert result.code == 0
    md = result.out
    assert md.startswith(f"## gradprobe inspect `{FILE}:NeverCalled`")
    assert "### Findings" in md and "| error | `grad-none` | `aux` |" in md
    assert "### Parameters (4)" in md and "| aux.weight | 3×6 | float32 | True | none |" in md
    assert "### Memory" in md


def test_markdown_lists_tied_names_and_escapes_pipes(cli) -> None:
    result = cli("inspect", f"{FILE}:Tied", "-f", "markdown")
    assert "| emb.weight, lm_head.weight | 7×4 |" in result.out


@pytest.mark.parametrize(("fmt", "suffix"), [("json", "json"), ("markdown", "md"), ("table", "txt")])
def test_output_file(cli, tmp_path: Path, fmt: str, suffix: str) -> None:
    target = tmp_path / f"report.{suffix}"
    result = cli("inspect", f"{FILE}:NeverCalled", "--format", fmt, "--output", str(target))
    assert result.code == 0
    assert result.out == ""
    assert result.err.strip() == f"gradprobe: wrote {target}"
    text = target.read_text(encoding="utf-8")
    if fmt == "json":
        assert json.loads(text)["schema"] == "gradprobe.inspect/1"
    elif fmt == "markdown":
        assert text.startswith("## gradprobe inspect")
    else:
        assert "\x1b[" not in text  # plain text, no terminal escapes
        assert "Parameters (4; all float32" in text and "grad-none" in text


@pytest.mark.slow
def test_strict_exits_1_and_writes_the_report(run_cli, tmp_path: Path) -> None:
    """Through the installed command: --strict with an error finding exits 1, and the report is still written."""
    target = tmp_path / "out.md"
    result = run_cli("inspect", f"{FILE}:NeverCalled", "--strict", "-f", "markdown", "-o", str(target))
    assert result.code == 1
    assert result.out == "" and result.err.strip() == f"gradprobe: wrote {target}"
    text = target.read_text()
    assert "### Parameters (4)" in text and "| error | `grad-none` | `aux` |" in text


def test_strict_exit_codes_in_process(cli) -> None:
    assert cli("inspect", f"{FILE}:NeverCalled", "-f", "json").code == 0  # findings do not fail inspect
    assert cli("inspect", f"{FILE}:MLP", "--strict", "-f", "json").code == 0
    # warnings only: not a failure even with --strict
    assert cli("inspect", f"{FILE}:FrozenBackbone", "--strict", "-f", "json").code == 0
    assert cli("inspect", f"{FILE}:RequiresGradAttr", "--strict", "-f", "json").code == 1


# ------------------------------------------------------------------ options reach the run


def test_mode_options_reach_the_run(cli) -> None:
    doc = json.loads(cli("inspect", f"{FILE}:WithDropout", "--mode", "eval", "--grad", "no_grad", "-f", "json").out)
    assert (doc["mode"], doc["grad_mode"], doc["backward"]) == ("eval", "no_grad", False)
    assert "no_grad" in doc["backward_skipped_reason"]
    doc = json.loads(cli("inspect", f"{FILE}:MLP", "--no-backward", "--no-memory", "--no-tensors", "-f", "json").out)
    assert doc["backward"] is False and doc["memory"] is None and doc["tensors"] == []
    assert len(doc["skipped"]) == 2


def test_training_step_without_backward_is_a_lower_bound(cli) -> None:
    """No backward ran: the step's total is shown as a lower bound, not as a measured peak holding the gradients."""
    doc = json.loads(cli("inspect", f"{FILE}:MLP", "--no-backward", "-f", "json").out)
    step = doc["memory"]["training_step"]
    trainable = sum(p["numel"] * 4 for p in doc["parameters"] if p["requires_grad"])
    assert step["backward_measured"] is False and step["gradient_bytes"] == trainable
    assert step["total_bytes"] == (step["parameter_bytes"] + step["optimizer_state_bytes"]
                                   + max(step["activation_peak_bytes"], trainable))
    table = cli("inspect", f"{FILE}:MLP", "--no-backward").out
    assert "at least" in table and "inside that peak" not in table and "forward peak (no backward ran)" in table
    measured = cli("inspect", f"{FILE}:MLP").out
    assert "inside that peak" in measured and "at least" not in measured


def test_init_shape_dtype_high_through_cli(cli) -> None:
    doc = json.loads(cli("inspect", f"{FILE}:TokenModel", "--shape", "3,4", "--dtype", "int64", "--high", "11",
                         "-f", "json").out)
    assert doc["outputs"][0]["shape"] == [3, 4, 2]
    doc = json.loads(cli("inspect", f"{FILE}:make_mlp", "--init", '{"hidden": 2}', "-f", "json").out)
    assert doc["parameters"][0]["shape"] == [2, mi.IN]


def test_top_and_filter_limit_table_rows_only(cli) -> None:
    out = cli("inspect", "gradprobe.examples:FineTuneNet", "--top", "2").out
    assert "more rows" in out
    out = cli("inspect", f"{FILE}:NeverCalled", "--filter", "aux").out
    params = out.split("Parameters", 1)[1].split("Tensors", 1)[0]
    assert "aux.weight" in params and "main.weight" not in params
    doc = json.loads(cli("inspect", "gradprobe.examples:FineTuneNet", "--top", "2", "-f", "json").out)
    assert len(doc["parameters"]) == 10  # JSON keeps every row
