"""A CLI that teaches itself (issue 10 §4), the installed command in a subprocess: --help without ``<bool>``,
grouped options, an Examples epilog whose commands run; shell completion; a pattern that matches nothing; piped
output that is plain text; torch's import warnings kept out of gradprobe's lines; integer-input defaults and the
float-into-Embedding hint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.projects import make_project, write

COMMANDS = ["inspect", "compare-modes", "freeze-check"]
REPO = Path(__file__).resolve().parents[2]
GRADPROBE = [str(Path(sys.executable).with_name("gradprobe"))]


def help_text(run_cli: Callable[..., Any], *args: str) -> str:
    res = run_cli(*args, "--help", env={"COLUMNS": "200"})
    assert res.code == 0, res.err
    return res.out


def examples(text: str) -> list[str]:
    """The commands listed under "Examples" in a --help text."""
    tail = text.split("Examples", 1)[1]
    return [line.strip() for line in tail.splitlines() if line.strip().startswith("gradprobe ")]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_grouped_without_bool_noise(run_cli: Callable[..., Any], command: str) -> None:
    text = help_text(run_cli, command)
    assert "<bool>" not in text
    for panel in ("Target & inputs", "Run", "Output", "CI"):
        assert f"─ {panel} " in text, panel
    assert len(examples(text)) == 3
    assert "<bool>" not in help_text(run_cli)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_example_runs(tmp_path: Path, cli: Callable[..., Any], run_cli: Callable[..., Any],
                                 monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    for line in examples(help_text(run_cli, command)):
        argv = shlex.split(line.split("  #")[0])
        res = cli(*argv[1:])
        assert res.code in (0, 1), f"{line}: {res.err}"


def test_shell_completion_scripts_and_targets(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    project = make_project(tmp_path / "p", pyproject=None)
    show = run_cli("--show-completion", "bash")
    assert show.code == 0 and "_gradprobe_completion" in show.out
    home = tmp_path / "home"
    home.mkdir()
    installed = run_cli("--install-completion", "bash", env={"HOME": str(home), "SHELL": "/bin/bash"})
    assert installed.code == 0, installed.err
    assert (home / ".bash_completions/gradprobe.sh").is_file()

    def complete(*words: str) -> list[str]:
        env = {"_GRADPROBE_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["gradprobe", *words]),
               "COMP_CWORD": str(len(words))}
        res = run_cli(cwd=project, env=env)
        return res.out.split()

    assert "freeze-check" in complete("fre")
    assert complete("inspect", "mypkg.models.net:") == ["mypkg.models.net:Net", "mypkg.models.net:TokenNet"]
    assert complete("inspect", "src/mypkg/models/net.py:T") == ["src/mypkg/models/net.py:TokenNet"]
    assert "other.py:" in complete("inspect", "oth")
    assert "--no-config" in complete("inspect", "--no-c")


def test_a_filter_that_matches_nothing_says_so(run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "gradprobe.examples:FineTuneNet", "--filter", "backbon.block1*")
    assert res.code == 2 and len(res.err_lines) == 1
    assert "--filter 'backbon.block1*' matches no name; did you mean 'backbone.block1'" in res.err
    ok = run_cli("inspect", "gradprobe.examples:FineTuneNet", "--filter", "backbone")
    assert ok.code == 0, ok.err


def raw_run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The command with no colour settings of the test fixtures: stdout a pipe, as in `gradprobe ... | less`."""
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    full["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([*GRADPROBE, *args], capture_output=True, text=True, env={**full, **(env or {})},
                          cwd=cwd, timeout=300)


UNIT = re.compile(r"^\s*(B|KiB|MiB|GiB|ms|µs|s)\b")


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["inspect", "tests.fixtures.zoo:tiny_gpt"],
    ["compare-modes", "tests.fixtures.zoo:tiny_gpt", "--repeat", "1"],
    ["freeze-check", "gradprobe.examples:FineTuneNet", "--frozen", "backbone", "--trainable", "head"],
], ids=["inspect", "compare-modes", "freeze-check"])
def test_piped_output_is_plain_text_at_80_columns(args: list[str]) -> None:
    res = raw_run(args, env={"COLUMNS": "80"})
    assert res.returncode in (0, 1), res.stderr
    assert "\x1b" not in res.stdout
    lines = res.stdout.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    assert [line for line in lines if UNIT.match(line)] == []  # no "205.6 / KiB" split inside a cell


def fake_numpy(tmp_path: Path) -> Path:
    """A site folder where `import numpy` fails as on a machine without NumPy."""
    write(tmp_path / "site/numpy/__init__.py", "raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n")
    return tmp_path / "site"


def test_torch_import_warnings_stay_out(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    site = fake_numpy(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert "Failed to initialize NumPy" in probe.stderr  # the control: torch does warn here
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    res = run_cli("inspect", "gradprobe.examples:fixed", "--top", "1", env=env)
    assert res.code == 0 and res.err == "", res.err
    debug = run_cli("inspect", "gradprobe.examples:fixed", "--top", "1", "--debug", env=env)
    assert debug.code == 0
    assert [line for line in debug.err_lines if "NumPy" in line] == [debug.err_lines[0]]
    assert len(debug.err_lines) == 1 and debug.err_lines[0].startswith("gradprobe: debug: importing torch warned")


def test_integer_inputs_default_below_the_first_embedding(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    project = make_project(tmp_path / "p", pyproject=None)
    res = run_cli("inspect", "mypkg.models.net:TokenNet", "--shape", "2,5", "--dtype", "int64", "-f", "json",
                  cwd=project)
    assert res.code == 0, res.err
    notes = json.loads(res.out)["notes"]
    assert "--high 50: integer inputs drawn from [0, 50), the size of nn.Embedding 'emb'" in notes
    wrong = run_cli("inspect", "mypkg.models.net:TokenNet", "--shape", "2,5", cwd=project)
    assert wrong.code == 2 and len(wrong.err_lines) == 1
    assert "hint: a float input (arg0) reached an nn.Embedding" in wrong.err and "--dtype int64" in wrong.err
    past = run_cli("inspect", "mypkg.models.net:TokenNet", "--shape", "2,5", "--dtype", "int64", "--high", "500",
                   cwd=project)
    assert past.code == 2 and "--high N" in past.err and "50 for the first one" in past.err
