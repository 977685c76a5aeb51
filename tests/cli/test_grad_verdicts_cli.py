"""The gradient verdicts through the installed ``gradprobe inspect --strict``, in a subprocess (the user's path),
each beside the plain-PyTorch fact it rests on."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import pytest
import torch
from conftest import CliResult
from fixtures import verdict_models as vm

pytestmark = pytest.mark.slow  # the installed command, once per test: seconds each

TARGET = "tests.fixtures.verdict_models:"


def plain_missing(model: torch.nn.Module) -> set[str]:
    """Trainable parameters without a gradient after ``model(x).sum().backward()`` in plain PyTorch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(model.example_input_array).sum().backward()
    return {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}


def test_strict_fails_on_an_unused_root_parameter(run_cli: Callable[..., CliResult]) -> None:
    assert plain_missing(vm.RootUnused()) == {"unused"}
    result = run_cli("inspect", TARGET + "RootUnused", "--strict")
    assert result.code == 1, result.err
    out = result.out
    assert "grad-none  unused" in out and "never reads it" in out and "model.unused.requires_grad_(False)" in out


def test_strict_json_names_the_downstream_cut(run_cli: Callable[..., CliResult]) -> None:
    missing = plain_missing(vm.DownstreamNoGrad())
    assert missing == {"encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias", "mid.weight",
                       "mid.bias"}
    result = run_cli("inspect", TARGET + "DownstreamNoGrad", "--strict", "--format", "json")
    assert result.code == 1, result.err
    doc = json.loads(result.out)
    assert {p["name"] for p in doc["parameters"] if p["grad"] == "none"} == missing
    findings = {f["subject"]: f for f in doc["findings"] if f["code"] == "grad-none"}
    assert set(findings) == {"encoder", "mid"}
    assert "downstream, in 'mid'" in findings["encoder"]["message"]
    (cut,) = [c for c in doc["graph_cuts"] if c["module"] == "mid"]
    assert cut["how"] == "no_grad" and set(cut["parameters"]) == missing


def test_strict_passes_an_expected_lora_zero_gradient(run_cli: Callable[..., CliResult]) -> None:
    model = vm.LoRANet()
    model(model.example_input_array).sum().backward()
    assert not model.proj.lora_a.weight.grad.any()  # type: ignore[union-attr]
    result = run_cli("inspect", TARGET + "LoRANet", "--strict")
    assert result.code == 0, result.out
    assert "info  grad-zero  proj.lora_a.weight" in result.out and "error" not in result.out


def test_strict_markdown_on_routing(run_cli: Callable[..., CliResult]) -> None:
    assert plain_missing(vm.MoE()) == {"experts.2.weight", "experts.2.bias", "experts.3.weight", "experts.3.bias"}
    result = run_cli("inspect", TARGET + "MoE", "--strict", "--format", "markdown")
    assert result.code == 1
    assert "| error | `grad-none` | `experts` |" in result.out
    assert "these inputs did not reach it" in result.out


def test_strict_on_a_reentrant_checkpoint(run_cli: Callable[..., CliResult]) -> None:
    assert plain_missing(vm.ReentrantCheckpoint()) == {"block.0.weight", "block.0.bias"}
    result = run_cli("inspect", TARGET + "ReentrantCheckpoint", "--strict")
    assert result.code == 1
    assert "use_reentrant=False" in " ".join(result.out.split())
