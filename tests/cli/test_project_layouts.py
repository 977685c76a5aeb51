"""Any project layout loads (issue 10 §2): the installed CLI, run from a user's project folder.

The project (tests/fixtures/projects.py) is a ``src/`` package with relative imports, a file inside that
package, a folder only ``--path`` makes importable; the loss gradprobe reports is checked against the same
model run in plain PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.projects import make_project, write


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "my-project", pyproject=None)


@pytest.fixture
def mypkg(project: Path) -> Iterator[Any]:
    """``mypkg.models.net`` imported in this process from the project's src/, removed again afterwards."""
    sys.path.insert(0, str(project / "src"))
    try:
        yield importlib.import_module("mypkg.models.net")
    finally:
        sys.path.remove(str(project / "src"))
        for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
            del sys.modules[name]


def plain_loss(module: Any, seed: int, *shape: int) -> float:
    """What gradprobe does, in plain PyTorch: seed, build, draw the --shape input, sum the output."""
    torch.manual_seed(seed)
    model = module.Net()
    x = torch.randn(*shape)
    return float(model(x).sum().detach())


def loss_of(res: Any) -> float:
    assert res.code == 0, res.err
    return float(json.loads(res.out)["loss"])


def test_src_layout_module_from_the_project_root(project: Path, mypkg: Any, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "mypkg.models.net:Net", "--shape", "2,8", "-f", "json", cwd=project)
    assert loss_of(res) == pytest.approx(plain_loss(mypkg, 0, 2, 8), rel=1e-6)


def test_file_inside_a_package_keeps_its_relative_imports(project: Path, mypkg: Any,
                                                          run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "src/mypkg/models/net.py:Net", "--shape", "2,8", "-f", "json", cwd=project)
    assert loss_of(res) == pytest.approx(plain_loss(mypkg, 0, 2, 8), rel=1e-6)
    # from a subfolder, with a relative path
    res = run_cli("inspect", "models/net.py:Net", "--shape", "2,8", "-f", "json", cwd=project / "src/mypkg")
    assert loss_of(res) == pytest.approx(plain_loss(mypkg, 0, 2, 8), rel=1e-6)


def test_script_style_sibling_imports_still_work(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    """A file in a folder with __init__.py that imports its sibling as a top-level module (``python pkg/x.py``)."""
    write(tmp_path / "exp/__init__.py", "")
    write(tmp_path / "exp/parts.py", "from torch import nn\n\ndef head():\n    return nn.Linear(3, 1)\n")
    write(tmp_path / "exp/model.py", "from parts import head\n\ndef build():\n    return head()\n")
    res = run_cli("inspect", "exp/model.py:build", "--shape", "2,3", "-f", "json", cwd=tmp_path)
    assert res.code == 0, res.err


def test_import_failure_names_the_folders_searched_and_the_fix(project: Path, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "vendored.model:Vendored", "--shape", "2,3", cwd=project)
    assert res.code == 2 and len(res.err_lines) == 1 and "Traceback" not in res.err
    line = res.err_lines[0]
    assert "module 'vendored.model' not found" in line
    assert f"searched {project}, {project / 'src'}" in line
    assert "--path DIR" in line and 'path = ["DIR"]' in line


def test_path_option_and_table_key_make_a_folder_importable(project: Path, run_cli: Callable[..., Any]) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    expected = float(lin(torch.randn(2, 3)).sum().detach())
    res = run_cli("inspect", "vendored.model:Vendored", "--shape", "2,3", "--path", "third_party", "-f", "json",
                  cwd=project)
    assert loss_of(res) == pytest.approx(expected, rel=1e-6)
    write(project / "pyproject.toml", '[tool.gradprobe]\npath = ["third_party"]\n')
    sub = project / "src"  # from a subfolder: the table's path is relative to the pyproject.toml
    res = run_cli("inspect", "vendored.model:Vendored", "--shape", "2,3", "-f", "json", cwd=sub)
    assert loss_of(res) == pytest.approx(expected, rel=1e-6)
    assert "supplied path" in res.err
    bad = run_cli("inspect", "vendored.model:Vendored", "--path", "nowhere", cwd=project)
    assert bad.code == 2 and "--path 'nowhere' is not a directory" in bad.err


def test_the_file_named_is_the_file_run_with_another_copy_on_the_path(project: Path, tmp_path: Path,
                                                                     run_cli: Callable[..., Any]) -> None:
    """Another copy of 'mypkg' on PYTHONPATH (like an older non-editable install) does not replace the file."""
    other = make_project(tmp_path / "installed", pyproject=None)
    (other / "src/mypkg/models/net.py").write_text("raise ImportError('the installed copy was imported')\n")
    res = run_cli("inspect", "src/mypkg/models/net.py:Net", "--shape", "2,8", cwd=project,
                  env={"PYTHONPATH": str(other / "src")})
    assert res.code == 0, res.err


def test_a_package_already_imported_from_elsewhere_is_named(project: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process (the API from pytest), 'mypkg' already imported from another copy: refuse, and say why."""
    from gradprobe.api import load
    from gradprobe.errors import TargetError

    other = make_project(tmp_path / "installed", pyproject=None)
    monkeypatch.syspath_prepend(str(other / "src"))
    importlib.import_module("mypkg.models.net")
    try:
        with pytest.raises(TargetError, match=r"is module 'mypkg.models.net' of a package, but 'mypkg' is imported "
                                              r"from .*installed.*pip install -e"):
            load(str(project / "src/mypkg/models/net.py") + ":Net", shapes=["2,8"])
    finally:
        for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
            del sys.modules[name]
