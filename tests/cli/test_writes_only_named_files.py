"""gradprobe writes nowhere but stdout/stderr and the files the user names.

Each command runs in a fresh user project (a model file and a package) with bytecode writing allowed
(the test environment may set PYTHONDONTWRITEBYTECODE; a user's shell does not), TMPDIR pointed at an
empty directory, and HOME-independent paths; afterwards the project holds exactly the files it held plus
the ones named by --output, --junit and --write-baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    import helpers


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
            self.head = nn.Linear(8, 2)
            self.backbone.requires_grad_(False)
            self.example_input_array = helpers.example()

        def forward(self, x):
            return self.head(self.backbone(x))
    """)

HELPERS = "import torch\n\n\ndef example():\n    return torch.randn(5, 4)\n"


def make_project(root: Path) -> None:
    (root / "model.py").write_text(MODEL)
    (root / "helpers.py").write_text(HELPERS)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "net.py").write_text("from model import Net\n\n\ndef build():\n    return Net()\n")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def gradprobe_command() -> list[str]:
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


COMMANDS: list[tuple[str, list[str], set[str], int]] = [
    ("inspect", ["inspect", "model.py:Net"], set(), 0),
    ("inspect-module-form", ["inspect", "pkg.net:build", "--format", "json"], set(), 0),
    ("inspect-output", ["inspect", "model.py:Net", "--format", "json", "--output", "report.json"],
     {"report.json"}, 0),
    ("compare-modes", ["compare-modes", "pkg.net:build", "--repeat", "1", "--format", "markdown", "-o", "cmp.md"],
     {"cmp.md"}, 0),
    ("freeze-check", ["freeze-check", "model.py:Net", "--frozen", "backbone", "--trainable", "head",
                      "--allow-buffer-updates", "--junit", "junit.xml", "--write-baseline", "base.json"],
     {"junit.xml", "base.json"}, 0),
    ("failing-run-writes-no-output", ["inspect", "model.py:Nope", "--format", "json", "--output", "never.json"],
     set(), 2),
]


@pytest.mark.slow
def test_commands_create_only_the_files_named(tmp_path: Path) -> None:
    """Every command, in its own fresh project, in parallel (each process pays the torch import)."""
    def run(item: tuple[str, list[str], set[str], int]) -> tuple[str, subprocess.CompletedProcess[str], Path, Path]:
        name, args, _, _ = item
        project, tmpdir = tmp_path / name / "project", tmp_path / name / "tmp"
        project.mkdir(parents=True)
        tmpdir.mkdir()
        make_project(project)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        env.update({"TMPDIR": str(tmpdir), "COLUMNS": "100", "NO_COLOR": "1"})
        proc = subprocess.run([*gradprobe_command(), *args], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        return name, proc, project, tmpdir

    before = files(_fresh(tmp_path / "reference"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, COMMANDS))
    for (name, _, named, code), (_, proc, project, tmpdir) in zip(COMMANDS, results, strict=True):
        assert proc.returncode == code, f"{name}: {proc.stderr}"
        assert "Traceback" not in proc.stderr
        assert files(project) == before | named, f"{name}: unexpected files {files(project) - before - named}"
        assert not any(tmpdir.iterdir()), f"{name}: temp files left in TMPDIR: {list(tmpdir.iterdir())}"
        for f in named:
            assert (project / f).stat().st_size > 0
    # the named files are what they claim to be
    doc = json.loads((tmp_path / "inspect-output" / "project" / "report.json").read_text())
    assert doc["schema"] == "gradprobe.inspect/1"
    baseline = json.loads((tmp_path / "freeze-check" / "project" / "base.json").read_text())
    assert baseline["parameters"]["head.weight"] is True and baseline["parameters"]["backbone.0.weight"] is False


def _fresh(root: Path) -> Path:
    root.mkdir()
    make_project(root)
    return root


def test_importing_the_users_file_writes_no_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process too: sys.dont_write_bytecode is set only while the user's code is imported, then restored."""
    from gradprobe.api import load

    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    loaded, _ = load("pkg.net:build")
    loaded2, _ = load(f"{tmp_path}/model.py:Net")
    assert type(loaded.model).__name__ == type(loaded2.model).__name__ == "Net"
    assert not list(tmp_path.rglob("__pycache__"))
    assert sys.dont_write_bytecode is False
    for name in ("pkg", "pkg.net", "model", "helpers"):
        sys.modules.pop(name, None)


def test_plain_import_would_write_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the same import without gradprobe does write __pycache__ here."""
    import importlib

    make_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    importlib.invalidate_caches()
    importlib.import_module("helpers")
    sys.modules.pop("helpers", None)
    assert list(tmp_path.rglob("__pycache__"))
