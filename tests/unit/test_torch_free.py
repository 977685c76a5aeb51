"""Facts, judges and units never import torch: they are tested, and usable, without it.

Each check runs in a fresh interpreter, where nothing else could have imported torch first.  Renderers are
covered by the import-linter contract in pyproject.toml (``lint-imports``).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import gradprobe

PACKAGE = Path(gradprobe.__file__).parent
TORCH_FREE = ["gradprobe.facts", "gradprobe.judges"]


def modules_of(package: str) -> list[str]:
    """Every module of the package, subpackages' modules included."""
    path = PACKAGE / package.split(".", 1)[1]
    return [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{package}.")]


MODULES = ["gradprobe.units", "gradprobe.errors", *(m for p in TORCH_FREE for m in modules_of(p)),
           "tests.fixtures.facts"]


def test_every_judge_and_facts_module_is_listed() -> None:
    assert {"gradprobe.judges.inspect", "gradprobe.judges.freeze", "gradprobe.judges.compare",
            "gradprobe.judges.checkpoint", "gradprobe.facts.run", "gradprobe.facts.freeze",
            "gradprobe.facts.compare", "gradprobe.judges.freeze.rules"} <= set(MODULES)


@pytest.mark.parametrize("blocked", [False, True], ids=["torch-installed", "torch-unimportable"])
def test_importing_facts_and_judges_leaves_torch_unimported(blocked: bool) -> None:
    """Import every module and run one judge; with ``blocked`` an import of torch would raise instead."""
    block = "import sys; sys.modules['torch'] = None\n" if blocked else ""
    code = block + (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "from gradprobe.judges.inspect import judge_run\n"
        "from tests.fixtures.facts import param, run_facts\n"
        "found = judge_run(run_facts([param('aux.weight', grad='none')]))\n"
        "assert [f.code for f in found] == ['grad-none'], found\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        f"assert leaked == ({['torch'] if blocked else []!r}), leaked\n"
    )
    root = PACKAGE.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
