"""A gradient that is exactly zero because an all-zero factor multiplies it (LoRA's first step), read off the
autograd graph, against plain PyTorch: the zero gradient, the all-zero partner, and the counterfactual (the
same model with the partner made nonzero gives a nonzero gradient)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import CliResult
from torch import nn

from gradprobe.api import freeze_check, probe
from tests.fixtures.grad_models import lora_adapter


def plain_grads(model: nn.Module, run: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor | None]:
    twin = copy.deepcopy(model)
    run(twin).backward()
    return {n: p.grad for n, p in twin.named_parameters()}


def nonzero_after_partner_moves(model: nn.Module, run: Callable[[nn.Module], torch.Tensor], param: str,
                                partner: str) -> bool:
    """Plain PyTorch counterfactual: ``param``'s gradient once ``partner`` is no longer all zeros."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.get_parameter(partner).add_(0.01)
    run(twin).backward()
    grad = twin.get_parameter(param).grad
    return grad is not None and bool(grad.any())


class Gated(nn.Module):
    """A product with a zero-initialised parameter that is not named like LoRA: ``(x W^T) * g``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.gate = nn.Parameter(torch.zeros(4))
        self.skip = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.proj(x) * self.gate


class Masked(nn.Module):
    """A zero gradient from a zero *input* mask, no zero parameter: must not be called a zero factor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.skip = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.proj(x) * torch.zeros(4)


class HandLoRA(nn.Module):
    """peft's structure by hand: frozen base, ``lora_B(lora_A(x)) * scaling`` with lora_B zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(8, 8).requires_grad_(False)
        self.lora_A = nn.Linear(8, 2, bias=False)
        self.lora_B = nn.Linear(2, 8, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.base(x) + self.lora_B(self.lora_A(x)) * 2.0))


X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
X8 = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


def partners(report: Any) -> dict[str, tuple[str, ...]]:
    assert report.facts.zero_grad_partners is not None  # measured in a real run
    return dict(report.facts.zero_grad_partners)


def finding(report: Any, subject: str) -> Any:
    (f,) = [f for f in report.findings if f.code == "grad-zero" and f.subject == subject]
    return f


def test_hand_lora_zero_partner_against_plain_pytorch() -> None:
    model = HandLoRA()
    run = lambda m: m(X8).sum()  # noqa: E731
    grads = plain_grads(model, run)
    assert not grads["lora_A.weight"].any() and grads["lora_B.weight"].any()  # type: ignore[union-attr]
    assert not model.lora_B.weight.any()
    assert nonzero_after_partner_moves(model, run, "lora_A.weight", "lora_B.weight")
    report = probe(model, X8)
    assert partners(report) == {"lora_A.weight": ("lora_B.weight",)}
    f = finding(report, "lora_A.weight")
    assert f.severity == "info" and "'lora_B.weight' is all zeros (its usual initialisation in LoRA)" in f.message
    assert "becomes nonzero once 'lora_B.weight' has taken its first optimizer step" in f.message
    assert "dead ReLU" not in f.hint


def test_any_zero_parameter_in_a_product() -> None:
    model = Gated()
    run = lambda m: m(X).sum()  # noqa: E731
    grads = plain_grads(model, run)
    zero = {n for n, g in grads.items() if g is not None and not g.any()}
    assert zero == {"proj.weight", "proj.bias"}
    for name in zero:
        assert nonzero_after_partner_moves(model, run, name, "gate")
    report = probe(model, X)
    assert partners(report) == {n: ("gate",) for n in zero}
    assert "a zero-initialised factor" in finding(report, "proj.weight").message


def test_a_zero_mask_is_not_a_zero_factor() -> None:
    model = Masked()
    grads = plain_grads(model, lambda m: m(X).sum())
    assert not grads["proj.weight"].any()  # type: ignore[union-attr]
    report = probe(model, X)
    assert partners(report) == {}
    f = finding(report, "proj.weight")
    assert f.severity == "warning" and "dead ReLU" in f.hint


def test_a_frozen_zero_partner_is_a_warning() -> None:
    class Stuck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Parameter(torch.randn(6, 3))
            self.b = nn.Parameter(torch.zeros(3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x @ self.a) @ self.b.detach().requires_grad_(False) + 0 * self.b.sum()

    model = Stuck()
    grads = plain_grads(model, lambda m: m(X).sum())
    assert not grads["a"].any() and not grads["b"].any()  # type: ignore[union-attr]
    report = probe(model, X)
    # b reaches the product through detach (no graph edge): the graph cannot tie a's zero gradient to it
    assert "a" not in partners(report)
    assert finding(report, "a").severity == "warning"


@pytest.mark.slow
@pytest.mark.transformers
def test_peft_lora_on_a_tiny_llama() -> None:
    transformers = pytest.importorskip("transformers")
    peft_mod = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=50)
    model = peft_mod.get_peft_model(transformers.LlamaForCausalLM(cfg),
                                    peft_mod.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(2, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    run = lambda m: m(**batch).loss  # noqa: E731
    grads = plain_grads(model, run)
    lora_a = sorted(n for n in grads if "lora_A" in n)
    assert lora_a and all(not grads[n].any() for n in lora_a)  # type: ignore[union-attr]
    expected = {a: (a.replace("lora_A", "lora_B"),) for a in lora_a}
    for (b,) in expected.values():
        assert not model.get_parameter(b).any() and grads[b].any()  # type: ignore[union-attr]
    assert nonzero_after_partner_moves(model, run, lora_a[0], expected[lora_a[0]][0])
    report = probe(model, batch, loss=lambda out, _inputs: out.loss)
    assert partners(report) == expected
    # four adapters: one finding for all of them, each lora_A named with its lora_B
    (f,) = [f for f in report.findings if f.code == "grad-zero"]
    assert f.severity == "info" and f"{len(lora_a)} parameters" in f.message
    assert "their usual initialisation in LoRA" in f.message and f.subject == "base_model.model.model.layers"
    assert f"'{lora_a[0]}' (with '{expected[lora_a[0]][0]}')" in f.message


@pytest.mark.slow
def test_cli_json_names_the_zero_factor(run_cli: Callable[..., CliResult]) -> None:
    model = lora_adapter()
    grads = plain_grads(model, lambda m: m(m.example_input_array).sum())
    assert not grads["0.lora_A"].any() and not model.get_parameter("0.lora_B").any()  # type: ignore[union-attr]
    assert grads["0.lora_B"].any()  # type: ignore[union-attr]
    result = run_cli("inspect", "tests.fixtures.grad_models:lora_adapter", "--format", "json", "--strict")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["zero_grad_partners"] == [{"parameter": "0.lora_A", "zero_factors": ["0.lora_B"]}]
    (f,) = [f for f in doc["findings"] if f["code"] == "grad-zero"]
    assert f["severity"] == "info" and "'0.lora_B' is all zeros (its usual initialisation in LoRA)" in f["message"]


def test_freeze_check_passes_a_lora_first_step_under_strict() -> None:
    """freeze-check reads the same measured partner: a zero-initialised lora_B that trains explains lora_A's
    zero gradient, so a correct LoRA freeze has no warning (``--strict`` passes) and a note names the pair."""
    model = HandLoRA()
    grads = plain_grads(model, lambda m: m(X8).sum())
    assert not grads["lora_A.weight"].any() and grads["lora_B.weight"].any()  # type: ignore[union-attr]
    assert grads["base.weight"] is None
    report = freeze_check(model, X8, frozen=["base"], trainable=["lora_A", "lora_B", "head"])
    assert report.passed and not report.violations and not report.warnings, report.warnings
    (note,) = [n for n in report.notes if "exactly zero" in n]
    assert "'lora_A.weight' (with 'lora_B.weight')" in note and "1 trainable parameter(s)" in note


def test_freeze_check_keeps_the_warning_when_the_zero_partner_cannot_train() -> None:
    """lora_B frozen at zero: lora_A's gradient stays zero for ever, so the warning stays (no note)."""
    model = HandLoRA()
    model.lora_B.requires_grad_(False)
    grads = plain_grads(model, lambda m: m(X8).sum())
    assert not grads["lora_A.weight"].any() and grads["lora_B.weight"] is None  # type: ignore[union-attr]
    report = freeze_check(model, X8, frozen=["base", "lora_B"], trainable=["lora_A", "head"])
    (w,) = [w for w in report.warnings if w.check == "gradient"]
    assert w.subject == "lora_A.weight" and w.found == "a gradient that is exactly zero"
    assert not any("exactly zero" in n for n in report.notes)
