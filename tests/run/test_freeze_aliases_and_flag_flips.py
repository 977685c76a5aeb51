"""Adversarial freeze-check models: cases that once gave a silent wrong answer.

Each expectation is first established with plain PyTorch on a fresh copy of the model, then
compared with what ``freeze_check`` (and, for one case, the real CLI) says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.judges.freeze import FreezeReport


def _subjects(report: FreezeReport, check: str) -> set[str]:
    return {v.subject for v in report.violations if v.check == check}


class AliasedBackbone(nn.Module):
    """A backbone registered under two names: its BatchNorm buffers have two names too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.encoder = self.backbone  # the alias the training code uses
        self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def make_aliased() -> AliasedBackbone:
    return AliasedBackbone()


def test_buffer_of_aliased_frozen_module_is_checked_under_its_second_name() -> None:
    x = torch.randn(3, 4)
    plain = AliasedBackbone().train()
    buffer_names = {n for n, _ in plain.named_buffers(remove_duplicate=False)}
    assert "encoder.1.running_mean" in buffer_names  # frozen pattern 'encoder' names it
    before = plain.backbone[1].running_mean.clone()
    plain(x)
    assert not torch.equal(before, plain.backbone[1].running_mean)  # the statistics drift: the freeze fails

    model = AliasedBackbone()
    report = gradprobe.freeze_check(model, x, frozen=["encoder"], trainable=["head"])
    assert not report.passed
    assert "backbone.1.running_mean" in _subjects(report, "buffer")
    # with the buffer check off, the parameters themselves are frozen as intended
    ok = gradprobe.freeze_check(model, x, frozen=["encoder"], trainable=["head"], allow_buffer_updates=True)
    assert ok.passed


@pytest.mark.slow
def test_aliased_buffer_through_the_cli(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("gradprobe")
    cmd = [str(exe), "freeze-check", f"{Path(__file__).resolve()}:make_aliased", "--frozen", "encoder",
           "--trainable", "head", "--shape", "3,4", "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"backbone.1.running_mean", "backbone.1.running_var"} <= {
        v["subject"] for v in doc["violations"] if v["check"] == "buffer"}


class FreezesInForward(nn.Module):
    """Calls ``requires_grad_(False)`` inside forward: the flag is True when the optimizer is built."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.a.requires_grad_(False)
        return self.b(self.a(x))


def test_frozen_only_inside_forward_is_a_flag_violation() -> None:
    x = torch.randn(3, 4)
    plain = FreezesInForward()
    opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=0.1)  # built before forward
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(plain.a.weight) in held  # the "frozen" weight is in the optimizer built from the flags
    plain(x).sum().backward()
    # it required grad when handed over yet receives none: DDP, built before forward, would fail on it
    assert plain.a.weight.grad is None

    model = FreezesInForward()
    report = gradprobe.freeze_check(model, x, frozen=["a"], trainable=["b"])
    assert not report.passed
    assert _subjects(report, "flag") == {"a.weight", "a.bias"}
    assert model.a.weight.requires_grad  # the model is left as found


class UnfreezesInForward(nn.Module):
    """Frozen when handed over, but forward turns the flag on (and optionally back off)."""

    def __init__(self, restore: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
        self.a.requires_grad_(False)
        self.restore = restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.a.requires_grad_(True)
        h = self.a(x)
        if self.restore:
            self.a.requires_grad_(False)
        return self.b(h)


def test_unfrozen_inside_forward_and_left_on_is_caught() -> None:
    x = torch.randn(3, 4)
    plain = UnfreezesInForward(restore=False)
    plain(x).sum().backward()
    assert plain.a.weight.grad is not None and plain.a.weight.requires_grad  # it is trained from now on
    report = gradprobe.freeze_check(UnfreezesInForward(restore=False), x, frozen=["a"], trainable=["b"])
    assert not report.passed
    assert {"a.weight", "a.bias"} <= _subjects(report, "flag")
    assert {"a.weight", "a.bias"} <= _subjects(report, "gradient")


def test_flag_restored_inside_forward_holds() -> None:
    x = torch.randn(3, 4)
    plain = UnfreezesInForward(restore=True)
    plain(x).sum().backward()
    assert plain.a.weight.grad is None and not plain.a.weight.requires_grad  # AccumulateGrad skips it
    assert plain.b.weight.grad is not None
    report = gradprobe.freeze_check(UnfreezesInForward(restore=True), x, frozen=["a"], trainable=["b"])
    assert report.passed, report.explain()


class TrainableFrozenInForward(FreezesInForward):
    """The trainable layer is frozen by forward: it never receives a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.b.requires_grad_(False)
        return self.b(self.a(x))


def test_trainable_frozen_inside_forward_is_caught() -> None:
    x = torch.randn(3, 4)
    plain = TrainableFrozenInForward()
    plain(x).sum().backward()
    assert plain.b.weight.grad is None
    report = gradprobe.freeze_check(TrainableFrozenInForward(), x, trainable=["a", "b"])
    assert not report.passed
    assert {"b.weight", "b.bias"} <= _subjects(report, "flag")


def test_frozen_parameter_aliasing_a_trainable_one_names_the_shared_storage() -> None:
    """Plain torch: a step on the trainable parameter writes the frozen view too; the cause is the alias."""
    import torch
    from torch import nn

    from gradprobe.api import freeze_check

    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.frozen_view = nn.Parameter(self.head.weight.data[:1], requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x) + self.frozen_view.sum()

    model = Aliased()
    before = model.frozen_view.detach().clone()
    opt = torch.optim.SGD([model.head.weight, model.head.bias], lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.frozen_view)  # plain torch: the frozen alias moved

    model = Aliased()
    report = freeze_check(model, torch.randn(3, 4), frozen=["frozen_view"], trainable=["head"],
                          optimizer=lambda m: torch.optim.SGD([m.head.weight, m.head.bias], lr=0.1))
    (step,) = [v for v in report.violations if v.check == "step" and v.subject == "frozen_view"]
    assert "shares storage" in step.message and "without any gradient" not in step.message
