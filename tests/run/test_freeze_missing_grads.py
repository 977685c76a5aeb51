"""A trainable parameter whose .grad is None after backward fails freeze-check, whatever the reason.

Each model is first run in plain PyTorch (train mode, ``sum().backward()``) to establish which
parameters get no gradient; ``freeze_check`` must then name exactly those as ``gradient`` violations,
with a cause that does not blame the wrong thing.
"""

from __future__ import annotations

import copy

import pytest
from fixtures.freeze_patterns import CustomFunctionNone, OneUnusedInModule, RootParamUnused, UsedThroughData
from torch import nn

import gradprobe


def plain_missing(model: nn.Module) -> set[str]:
    m = copy.deepcopy(model).train()
    m(m.example_input_array).sum().backward()
    return {n for n, p in m.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize(("make", "missing"), [
    (RootParamUnused, {"scale"}),
    (UsedThroughData, {"scale"}),
    (OneUnusedInModule, {"gate.spare"}),
    (CustomFunctionNone, {"w"}),
])
def test_each_trainable_parameter_without_gradient_is_a_violation(make: type[nn.Module], missing: set[str]) -> None:
    model = make()
    assert plain_missing(model) == missing
    report = gradprobe.freeze_check(model, trainable=["*"])
    assert not report.passed
    gradient = [v for v in report.violations if v.check == "gradient"]
    assert {v.subject for v in gradient} == missing
    for v in gradient:
        assert v.found == ".grad is None"
        # its module ran and its siblings got gradients: not "detached output", not "never called"
        assert "does not use this one" in v.message, v.message
        assert "never called" not in v.message and "its output is detached" not in v.message
    assert set(report.ddp_unused) == missing
    rows = {p.name: p.grad for p in report.parameters}
    assert all(rows[n] == "none" for n in missing) and all(rows[n] != "none" for n in rows if n not in missing)


def test_the_same_parameter_unlisted_is_a_warning_only() -> None:
    report = gradprobe.freeze_check(OneUnusedInModule(), trainable=["lin", "gate.weight"])
    assert report.passed
    assert {w.subject for w in report.warnings if w.check == "gradient"} == {"gate.spare"}
