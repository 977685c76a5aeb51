"""``gradprobe inspect --grads`` as a user runs it: the installed command in a subprocess."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
from fixtures import grad_models

pytestmark = pytest.mark.slow  # a fresh process per test (torch import)


def test_forward_nan_text_view(run_cli: Callable[..., object]) -> None:
    res = run_cli("inspect", "tests.fixtures.grad_models:forward_log_nan", "--grads", env={"COLUMNS": "80"})
    assert res.code == 0, res.err  # type: ignore[attr-defined]
    out = res.out  # type: ignore[attr-defined]
    assert "Gradient flow (6 module calls" in out and "Parameter gradients (4" in out
    assert "log_out ◀2" in out and "◀2 log_out: NaN/Inf made here (24 in its output)" in out
    assert "nonfinite-forward" in out and "aten.log.default" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "\x1b[" not in out  # NO_COLOR: characters only


def test_backward_nan_json_against_plain_pytorch(run_cli: Callable[..., object]) -> None:
    res = run_cli("inspect", "tests.fixtures.grad_models:backward_sqrt_nan", "--grads", "--format", "json",
                  "--strict")
    assert res.code == 1, res.err  # type: ignore[attr-defined]  # --strict: the NaN is an error finding
    doc = json.loads(res.out)  # type: ignore[attr-defined]
    gh = doc["grad_health"]
    (node, *_) = gh["backward_nodes"]
    assert node["kind"] == "SqrtBackward0" and gh["calls"][node["call_index"]]["module"] == "magnitude"
    torch.manual_seed(0)  # the same build as the CLI's (seed 0), in plain PyTorch
    model = grad_models.backward_sqrt_nan()
    model(model.example_input_array).sum().backward()
    for p in gh["parameters"]:
        g = dict(model.named_parameters())[p["name"]].grad
        assert p["nan"] == int(g.isnan().sum()) and p["inf"] == int(g.isinf().sum())
        expected = float(g.abs().max())
        assert (p["grad_max_abs"] == "nan") if math.isnan(expected) else p["grad_max_abs"] == pytest.approx(expected)
    finding = next(f for f in doc["findings"] if f["code"] == "nonfinite-backward")
    assert finding["subject"] == "magnitude"


def test_markdown_and_depth(run_cli: Callable[..., object]) -> None:
    res = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--grads", "--format", "markdown", "--depth", "1")
    assert res.code == 0, res.err  # type: ignore[attr-defined]
    md = res.out  # type: ignore[attr-defined]
    assert "### Gradient flow" in md and "`transformer.h.0` (+11)" in md and "### Parameter gradients" in md


def test_without_grads_no_key_and_bad_factor(run_cli: Callable[..., object]) -> None:
    res = run_cli("inspect", "tests.fixtures.grad_models:dead_relu", "--format", "json")
    assert res.code == 0 and "grad_health" not in json.loads(res.out)  # type: ignore[attr-defined]
    bad = run_cli("inspect", "tests.fixtures.grad_models:dead_relu", "--grads", "--grad-factor", "0.5")
    assert bad.code == 2 and bad.err_lines == [  # type: ignore[attr-defined]
        "gradprobe: usage error: --grad-factor 0.5: use a factor above 1 (e.g. 1000)"]
    vanish = run_cli("inspect", "tests.fixtures.grad_models:deep_sigmoid", "--grads", "--grad-factor", "1e20")
    assert vanish.code == 0 and "grad-vanishing" not in vanish.out  # type: ignore[attr-defined]
