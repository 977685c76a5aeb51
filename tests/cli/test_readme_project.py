"""README.md's set-up and "Your own project" sections stay true: their blocks are run as written.

A block follows a marker ``<!-- test GROUP KIND [PATH] -->``: ``file PATH`` is written into the group's project
folder, ``python`` is run there, ``run`` is a list of gradprobe commands that must succeed, and ``output`` starts with
``$ command`` followed by what it printed (stdout and stderr) at 80 columns, matched line by line in order (timings
excepted; the README's example folder /home/me/my-project stands for the test's folder).  Groups run in document
order, each group in the folder the earlier groups filled.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
EXAMPLE_ROOT = "/home/me/my-project"
TIMING = re.compile(r"\btime\b.*\b(ms|s|µs)\b")


@dataclass
class Block:
    group: str
    kind: str
    arg: str
    body: str


def blocks(group: str | None = None) -> list[Block]:
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"<!-- test (\S+) (\S+)(?: (\S+))? -->\n```\w*\n(.*?)```", text, flags=re.S)
    return [Block(*f) for f in found if group is None or f[0] == group]


def commands(block: Block) -> list[str]:
    lines = [line.split("  #")[0].strip() for line in block.body.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR",)}
    full.update({"COLUMNS": "80", "NO_COLOR": "1", "GRADPROBE_NO_PROGRESS": "1", **(env or {})})
    if argv[0] == "gradprobe":
        argv = [str(Path(sys.executable).with_name("gradprobe")), *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def fill(folder: Path, group: str) -> None:
    """Write the group's files and run its python blocks, in document order."""
    for block in blocks(group):
        if block.kind == "file":
            path = folder / block.arg
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.body, encoding="utf-8")
            if path.parent.name == "mypkg":
                (path.parent / "__init__.py").touch()
        elif block.kind == "python":
            res = run([sys.executable, "-c", block.body], folder)
            assert res.returncode == 0, res.stderr


def check_output(block: Block, folder: Path, env: dict[str, str] | None = None) -> None:
    first, *expected = block.body.rstrip("\n").splitlines()
    assert first.startswith("$ gradprobe "), first
    res = run(shlex.split(first[2:]), folder, env)
    actual = [line.rstrip() for line in (res.stdout + res.stderr).splitlines()]
    wanted = [line.rstrip().replace(EXAMPLE_ROOT, str(folder)) for line in expected if not TIMING.search(line)]
    position = 0
    for line in wanted:  # in order, each README line is a line of the real output
        assert line in actual[position:], f"{first}: README line not in the output:\n{line}\n--- output:\n" + \
            "\n".join(actual)
        position = actual.index(line, position) + 1


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("my-project")
    fill(folder, "layout")
    fill(folder, "settings")
    yield folder


# --------------------------------------------------------------------------------------------- set-up


def test_first_screen_commands_are_the_tested_ones() -> None:
    (block,) = blocks("setup")[:1]
    lines = commands(block)
    assert lines == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
        "gradprobe inspect gradprobe.examples:FineTuneNet",
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e \".[test]\" && "
        "python -m pytest",
    ]
    assert "CPU build" not in block.body  # a plain `pip install torch` from PyPI is not the CPU build on Linux


def test_setup_claims_match_the_package() -> None:
    assert '"torch>=2.3",' in (REPO / "pyproject.toml").read_text(encoding="utf-8")  # the dependency itself
    text = README.read_text(encoding="utf-8")
    assert "Any `torch>=2.3` works" in text
    (cpu,) = [b for b in blocks("setup") if b.arg == "" and "index-url" in b.body]
    assert commands(cpu) == ["pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"]


@pytest.mark.slow
def test_an_environment_with_torch_only_needs_the_package() -> None:
    """`pip install -e .` where torch is installed installs gradprobe and leaves torch alone."""
    res = run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "-e", "."],
              REPO)
    assert res.returncode == 0, res.stderr
    (would,) = [line for line in res.stdout.splitlines() if line.startswith("Would install")]
    assert would.split()[2:] == ["gradprobe-0.1.0"]


# --------------------------------------------------------------------------------------------- layouts and settings


def test_layout_commands_run(project: Path) -> None:
    for block in blocks("layout"):
        if block.kind == "run":
            for line in commands(block):
                res = run(shlex.split(line), project)
                assert res.returncode == 0, f"{line}: {res.stderr}"


@pytest.mark.parametrize("index", range(len([b for b in blocks() if b.group in ("layout", "settings")
                                             and b.kind == "output"])))
def test_layout_and_settings_outputs(project: Path, index: int) -> None:
    block = [b for b in blocks() if b.group in ("layout", "settings") and b.kind == "output"][index]
    check_output(block, project)


# --------------------------------------------------------------------------------------------- models


@pytest.mark.slow
@pytest.mark.transformers
def test_hugging_face_recipes(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    fill(tmp_path, "hf")
    for block in blocks("hf"):
        if block.kind == "output":
            check_output(block, tmp_path)
        elif block.kind == "run":
            for line in commands(block):
                res = run(shlex.split(line), tmp_path)
                assert res.returncode == 0, f"{line}: {res.stderr}"


STAND_IN = '''
"""A stand-in for the lightning package where it is not installed: a LightningModule is an nn.Module with
training hooks; gradprobe uses nothing else of it."""
from torch import nn


class LightningModule(nn.Module):
    def save_hyperparameters(self, *args, **kwargs):
        pass
'''


def test_lightning_recipe(tmp_path: Path) -> None:
    """With lightning installed the real LightningModule; without (this repository's CI), a stand-in of its shape."""
    fill(tmp_path, "lightning")
    env: dict[str, str] = {}
    try:
        import lightning  # noqa: F401
    except ImportError:
        (tmp_path / "stand_in/lightning").mkdir(parents=True)
        (tmp_path / "stand_in/lightning/__init__.py").write_text(STAND_IN, encoding="utf-8")
        env["PYTHONPATH"] = str(tmp_path / "stand_in")
    for block in blocks("lightning"):
        if block.kind == "output":
            check_output(block, tmp_path, env)


def test_every_marker_is_a_known_kind() -> None:
    kinds = {(b.group, b.kind) for b in blocks()}
    assert {k for _, k in kinds} <= {"file", "python", "run", "output", "first-screen", "cpu-wheel"}
    assert {"setup", "layout", "settings", "hf", "lightning"} == {g for g, _ in kinds}


def test_untested_recipes_say_so() -> None:
    text = README.read_text(encoding="utf-8")
    (untested,) = re.findall(r"<!-- untested: [^>]*-->\n```bash\n(.*?)```", text, flags=re.S)
    assert "torchvision.models:resnet18" in untested and "timm:create_model" in untested
    before = text[:text.index(untested)]
    assert "*Not run in this repository's CI*" in before[-400:]


# ------------------------------------------------------------------------------- the tour's outputs
def bundled_outputs() -> list[Block]:
    """The README's pasted ``inspect``/``freeze-check`` outputs of the bundled example and the test-fixture
    models: runnable from the repository root as written.  Blocks that elide lines (``...``) or start ranks
    (``--nproc``) are left to their own tests."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"```text\n(\$ gradprobe (?:inspect|freeze-check) (?:gradprobe\.examples|tests\.fixtures)"
                       r"[^\n]*\n.*?)```", text, flags=re.S)
    return [Block("tour", "output", "", body) for body in found
            if "--nproc" not in body.splitlines()[0] and "\n..." not in body]


def test_the_tour_has_bundled_outputs() -> None:
    assert len(bundled_outputs()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(bundled_outputs())))
def test_bundled_outputs_match_a_real_run(index: int) -> None:
    check_output(bundled_outputs()[index], REPO)
