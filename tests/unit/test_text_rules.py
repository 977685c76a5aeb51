"""One copy of each wording rule (module paths as Python, shortened lists), used by every judge."""

from __future__ import annotations

import ast

import pytest
from fixtures.run_facts import facts, module, param

from gradprobe.judges.inspect import judge_run
from gradprobe.units import py_path, shorten


@pytest.mark.parametrize(("module", "expected"), [
    ("", "model"),
    ("head", "model.head"),
    ("backbone.1", "model.backbone[1]"),
    ("backbone.1.proj", "model.backbone[1].proj"),
    ("experts.gate-up", "model.experts['gate-up']"),
])
def test_py_path_is_python(module: str, expected: str) -> None:
    assert py_path(module) == expected
    ast.parse(f"{py_path(module)}.requires_grad_(False)")  # valid Python, whatever the name


def test_shorten() -> None:
    assert shorten([]) == ""
    assert shorten(["a", "b"], 2) == "a, b"
    assert shorten(list("abcdefghi"), 2) == "a, b, … and 7 more"
    assert shorten(["x", "y", "z"], 1, quote=True) == "'x', … and 2 more"


def test_fixes_name_sequential_children_in_valid_python() -> None:
    """A never-called Sequential child: the fix reads ``model.backbone[1].requires_grad_(False)``."""
    run = facts([param("backbone.0.weight"), param("backbone.1.weight", "none")],
                [module("backbone", "Sequential", params=()), module("backbone.0", params=("backbone.0.weight",)),
                 module("backbone.1", calls=0, output_grad_fn=None, params=("backbone.1.weight",))])
    hints = [f.hint for f in judge_run(run) if f.code == "grad-none"]
    assert hints and all("model.backbone[1].requires_grad_(False)" in h for h in hints)
    assert not any("model.backbone.1" in h for h in hints)
