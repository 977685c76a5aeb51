"""freeze-check's optimizer verdicts against what plain PyTorch does to the parameters over several steps.

Each test runs the user's training loop in plain PyTorch on one copy (backward, ``step()``,
``zero_grad()``, three times) and ``freeze_check`` on another built the same way, then compares: a
frozen parameter is a ``step`` violation exactly when plain PyTorch moves it; a frozen parameter that
only sits in a param group is a warning; optimizer state held for it is a violation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fixtures import freeze_patterns as fp
from torch import nn

import gradprobe
from gradprobe.facts.freeze import MECHANISMS

Factory = Callable[[nn.Module], torch.optim.Optimizer]


def state_bytes(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    return sum(v.numel() * v.element_size() for p in params for v in opt.state.get(p, {}).values()
               if isinstance(v, torch.Tensor))


def subjects(issues: tuple[Any, ...], check: str) -> set[str]:
    return {i.subject for i in issues if i.check == check}


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Everything a run could change: values, .grad (object and values), flags, buffers, modes, optimizer, RNG."""
    return {
        "values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: (id(p.grad), None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "optimizer": None if opt is None else copy.deepcopy(opt.state_dict()),
        "grad_enabled": torch.is_grad_enabled(),
        "rng": torch.random.get_rng_state(),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return bool(a == b)

    for key in before:
        assert same(before[key], after[key]), key


# --------------------------------------------------------------------------- frozen params that cannot move: warnings


@pytest.mark.parametrize("factory", [fp.sgd_all, fp.sgd_momentum_all, fp.adam_all, fp.adamw_all,
                                     fp.sgd_stale_zero_grad])
def test_frozen_parameters_in_param_groups_that_do_not_move_are_warnings(factory: Factory) -> None:
    plain, plain_opt, moved = fp.plain_loop(factory)
    frozen = fp.frozen_names(plain)
    assert not moved & frozen  # plain PyTorch: bit-identical over every step
    assert {"stem.weight", "head.weight"} <= moved  # and the loop does train
    assert not any(p in plain_opt.state for p in plain.backbone.parameters())  # no state created for them

    report = gradprobe.freeze_check(fp.Net(), optimizer=factory, **fp.SPEC)
    assert report.passed, report.explain()
    assert subjects(report.warnings, "optimizer") == frozen
    assert not subjects(report.warnings, "step")
    for w in report.warnings:
        assert "would move if it ever got a gradient" in w.message and "creates no state" in w.message
        assert w.fix is not None and w.message.endswith(w.fix)
    assert not any("optimizer state" in n for n in report.notes)  # no memory claimed: none exists


def test_adam_creates_state_for_a_stale_zero_grad_and_says_so() -> None:
    plain, plain_opt, moved = fp.plain_loop(fp.adam_stale_zero_grad)
    frozen = fp.frozen_names(plain)
    assert not moved & frozen
    held = state_bytes(plain_opt, list(plain.backbone.parameters()))
    assert held > 0  # plain torch: Adam created exp_avg/exp_avg_sq for the zero .grad

    report = gradprobe.freeze_check(fp.Net(), optimizer=fp.adam_stale_zero_grad, **fp.SPEC)
    assert report.passed, report.explain()
    assert subjects(report.warnings, "optimizer") == frozen
    assert all("does create optimizer state" in w.message for w in report.warnings if w.check == "optimizer")
    (note,) = [n for n in report.notes if "optimizer state" in n]
    from gradprobe.units import human_bytes

    assert f"creates {human_bytes(held)}" in note and f"{len(frozen)} frozen" in note


# --------------------------------------------------------------------------- frozen params that move: violations


@pytest.mark.parametrize(("factory", "mechanism"), [
    (fp.adam_resumed_zero_grads, "adam-state"),
    (fp.sgd_stale_grad, "stale-grad"),
    (fp.adamw_stale_zero_grad, "weight-decay"),
])
def test_frozen_parameters_that_move_are_violations_naming_the_mechanism(factory: Factory, mechanism: str) -> None:
    plain, _, moved = fp.plain_loop(factory)
    frozen = fp.frozen_names(plain)
    assert moved & frozen == frozen  # plain PyTorch moves every frozen parameter

    report = gradprobe.freeze_check(fp.Net(), optimizer=factory, **fp.SPEC)
    assert not report.passed
    assert subjects(report.violations, "step") == moved & frozen
    for v in (v for v in report.violations if v.check == "step"):
        assert mechanism in v.mechanism and set(v.mechanism) <= set(MECHANISMS)
        assert "without a gradient from backward" in v.message
    if mechanism == "adam-state":
        assert all("resumed checkpoint" in v.message for v in report.violations if v.check == "step")


def test_resumed_state_without_a_grad_is_a_violation_that_names_the_state() -> None:
    """Momentum state from before the freeze, .grad None: plain torch skips it, but the state is a fact."""
    plain, plain_opt, moved = fp.plain_loop(fp.sgd_momentum_resumed)
    frozen = fp.frozen_names(plain)
    assert not moved & frozen
    assert all("momentum_buffer" in plain_opt.state[p] for p in plain.backbone.parameters())

    report = gradprobe.freeze_check(fp.Net(), optimizer=fp.sgd_momentum_resumed, **fp.SPEC)
    assert not report.passed
    assert subjects(report.violations, "optimizer") == frozen
    assert not subjects(report.violations, "step")
    for v in report.violations:
        assert "already holds optimizer state" in v.message and "momentum_buffer" in v.found
        assert "moves it in every step() in which it has a .grad" in v.message
    from gradprobe.units import human_bytes

    held = state_bytes(plain_opt, list(plain.backbone.parameters()))
    assert any(f"holds {human_bytes(held)} of optimizer state for {len(frozen)} frozen" in n for n in report.notes)


def test_a_parameter_in_two_param_groups_is_a_violation() -> None:
    model = fp.Net()
    opt = fp.two_groups(model)
    model(model.example_input_array).sum().backward()
    grad, before = model.stem.weight.grad.clone(), model.stem.weight.detach().clone()
    opt.step()
    # plain torch: updated once per group, with each group's lr
    assert torch.allclose(model.stem.weight, before - (0.1 + 0.01) * grad)

    report = gradprobe.freeze_check(fp.Net(), optimizer=fp.two_groups, **fp.SPEC)
    (twice,) = [v for v in report.violations if v.check == "optimizer"]
    assert twice.subject == "stem.weight" and twice.found == "in param groups 0, 1"
    assert "once per listing" in twice.message


def test_lr_zero_group_moves_nothing() -> None:
    plain, _, moved = fp.plain_loop(fp.lr_zero_group)
    in_lr0 = {n for n, _ in plain.named_parameters() if n.startswith(("stem.", "backbone."))}
    assert not moved & in_lr0 and moved == {"head.weight", "head.bias"}

    report = gradprobe.freeze_check(fp.Net(), optimizer=fp.lr_zero_group, **fp.SPEC)
    assert report.passed, report.explain()
    assert subjects(report.warnings, "optimizer") == fp.frozen_names(plain)  # stale .grad, lr=0: still
    assert subjects(report.warnings, "step") == {"stem.weight", "stem.bias"}  # trainable yet unchanged
    assert all("lr=0.0" in w.message for w in report.warnings if w.check == "step")


# --------------------------------------------------------------------------- no placeholder, state unchanged


@pytest.mark.parametrize("factory", [fp.adamw_all, fp.sgd_momentum_resumed, fp.adam_resumed_zero_grads,
                                     fp.sgd_stale_grad, fp.two_groups])
def test_every_view_prints_real_names_only(factory: Factory) -> None:
    import io

    from rich.console import Console

    from gradprobe.render.freeze.junit import junit_xml
    from gradprobe.render.freeze.view import freeze_markdown, render_freeze

    report = gradprobe.freeze_check(fp.Net(), optimizer=factory, **fp.SPEC)
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    render_freeze(report, console)
    for text in (console.export_text(), freeze_markdown(report), junit_xml(report), report.explain()):
        assert "<name>" not in text and "<module>" not in text


@pytest.mark.parametrize("factory", [fp.sgd_momentum_all, fp.sgd_momentum_resumed, fp.adam_resumed_zero_grads,
                                     fp.sgd_stale_grad, fp.adamw_stale_zero_grad, fp.two_groups])
def test_model_and_optimizer_state_unchanged(factory: Factory) -> None:
    model = fp.Net()
    opt = factory(model)  # handed over as built: stale .grad tensors, resumed state
    model.eval()
    before = snapshot(model, opt)
    gradprobe.freeze_check(model, optimizer=opt, **fp.SPEC)
    assert_same(before, snapshot(model, opt))


def test_foreign_tensors_in_the_optimizer_are_put_back() -> None:
    other = nn.Linear(4, 4)
    other.weight.grad = torch.ones_like(other.weight)
    weight, grad = other.weight.detach().clone(), other.weight.grad
    report = gradprobe.freeze_check(
        fp.Net(), optimizer=lambda m: torch.optim.SGD([*m.parameters(), other.weight], lr=0.1), **fp.SPEC)
    assert subjects(report.warnings, "optimizer") >= {"(optimizer)"}
    assert torch.equal(other.weight, weight) and other.weight.grad is grad and torch.equal(grad, torch.ones(4, 4))
