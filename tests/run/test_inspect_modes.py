"""All six mode combinations (issue 2 §4), checked against the same run in plain PyTorch."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from gradprobe.api import load, probe
from gradprobe.errors import UsageError
from tests.fixtures import models as mi

GRAD_CONTEXTS = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
COMBOS = list(itertools.product(("train", "eval"), GRAD_CONTEXTS))


class ModeNet(nn.Module):
    """Linear → BatchNorm → Dropout → Linear: train and eval really differ."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(mi.IN, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, mi.OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.bn(self.inp(x))))


def _plain_run(model: nn.Module, x: torch.Tensor, mode: str, grad_mode: str) -> dict:
    """The same run in plain PyTorch on a copy: outputs' flags, loss, and each parameter's gradient."""
    twin = copy.deepcopy(model)
    twin.train(mode == "train")
    torch.manual_seed(0)  # probe's default --seed
    with GRAD_CONTEXTS[grad_mode]():
        out = twin(x)
    facts = {"requires_grad": out.requires_grad, "grad_fn": type(out.grad_fn).__name__ if out.grad_fn else None,
             "is_inference": out.is_inference(), "loss": float(out.detach().sum()) if not out.is_inference()
             else float(out.sum())}
    if out.requires_grad:
        out.sum().backward()
    facts["grads"] = {n: p.grad for n, p in twin.named_parameters()}
    return facts


@pytest.mark.parametrize(("mode", "grad_mode"), COMBOS)
def test_mode_combination_matches_plain_pytorch(mode: str, grad_mode: str) -> None:
    torch.manual_seed(1)
    model, x = ModeNet(), torch.randn(mi.B, mi.IN)
    expected = _plain_run(model, x, mode, grad_mode)
    report = probe(model, x, mode=mode, grad_mode=grad_mode)
    f = report.facts
    assert (f.mode, f.grad_mode) == (mode, grad_mode)
    (out,) = f.outputs
    assert out.requires_grad is expected["requires_grad"]
    assert out.grad_fn == expected["grad_fn"]
    assert out.is_inference is expected["is_inference"]
    assert f.loss == pytest.approx(expected["loss"], rel=1e-5)  # same dropout mask and batch statistics
    # modules in the requested mode during the forward
    assert all(m.training is (mode == "train") for m in f.modules)
    assert all(p.module_training is (mode == "train") for p in f.parameters)
    if grad_mode == "grad":
        assert f.backward and f.backward_skipped_reason is None
        for p in f.parameters:
            grad = expected["grads"][p.name]
            assert p.grad == "nonzero"
            assert p.grad_norm == pytest.approx(float(grad.norm()), rel=1e-5)
        assert f.graph is not None and f.graph.nodes > 0
    else:
        assert not f.backward
        assert grad_mode in f.backward_skipped_reason
        assert all(p.grad is None for p in f.parameters)  # no backward: unknown, not "none"
        assert all(g is None for g in expected["grads"].values())
        assert f.graph is None


@pytest.mark.parametrize(("mode", "grad_mode"), COMBOS)
def test_module_output_flags_match_plain_pytorch(mode: str, grad_mode: str) -> None:
    """Every module's output flags, recorded by hooks, equal what plain forward hooks see."""
    torch.manual_seed(2)
    model, x = ModeNet(), torch.randn(mi.B, mi.IN)
    twin = copy.deepcopy(model).train(mode == "train")
    seen = {}
    handles = [m.register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, (out.requires_grad, out.is_inference(),
                                                                  type(out.grad_fn).__name__ if out.grad_fn
                                                                  else None)))
        for name, m in twin.named_modules()]
    torch.manual_seed(0)
    with GRAD_CONTEXTS[grad_mode]():
        twin(x)
    for h in handles:
        h.remove()
    report = probe(model, x, mode=mode, grad_mode=grad_mode)
    got = {t.module: (t.requires_grad, t.is_inference, t.grad_fn) for t in report.facts.tensors}
    assert got == seen


def test_grad_means_enabled_even_when_ambient_mode_is_off() -> None:
    model = mi.MLP()
    with torch.no_grad():
        report = probe(model)
        assert not torch.is_grad_enabled()  # left as found
    f = report.facts
    assert not f.global_grad_enabled
    assert f.outputs[0].requires_grad and f.outputs[0].grad_fn == "AddmmBackward0"
    assert f.backward
    assert "global-grad-disabled" in {x.code for x in report.findings}


def test_grad_mode_when_user_module_disables_grad_at_import(tmp_path: Path) -> None:
    path = tmp_path / "grad_off_at_import.py"
    path.write_text(
        "import torch\nfrom torch import nn\ntorch.set_grad_enabled(False)\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(3, 2)\n"
        "        self.example_input_array = torch.ones(2, 3)\n"
        "    def forward(self, x):\n        return self.lin(x)\n")
    loaded, example = load(f"{path}:Net")
    assert not torch.is_grad_enabled()  # the user's import really switched it off
    report = probe(loaded.model, example)
    assert not torch.is_grad_enabled()  # and gradprobe left it as found
    f = report.facts
    assert f.backward and all(p.grad == "nonzero" for p in f.parameters)
    assert f.outputs[0].requires_grad
    finding = next(x for x in report.findings if x.code == "global-grad-disabled")
    assert finding.severity == "warning"


def test_no_backward_option() -> None:
    report = probe(mi.MLP(), backward=False)
    f = report.facts
    assert not f.backward and f.backward_skipped_reason == "skipped by --no-backward"
    assert f.outputs[0].requires_grad  # the forward still built the graph
    assert all(p.grad is None for p in f.parameters)
    assert not [x for x in report.findings if x.code in ("grad-none", "grad-zero")]


def test_no_backward_reason_when_nothing_requires_grad() -> None:
    model = mi.MLP().requires_grad_(False)
    f = probe(model).facts
    assert not f.backward and "no output requires grad" in f.backward_skipped_reason


def test_custom_loss_function() -> None:
    model = mi.MLP()
    x = model.example_input_array
    f = probe(model, loss=mi.loss_first_column).facts
    with torch.no_grad():
        assert f.loss == pytest.approx(float(model(x)[:, 0].sum()), rel=1e-6)


def test_mean_loss() -> None:
    model = mi.StructuredOut("tuple")
    x = model.example_input_array
    f = probe(model, loss="mean").facts
    with torch.no_grad():
        logits, hidden = model(x)
    assert f.loss == pytest.approx(float(logits.mean() + hidden.mean()), rel=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "test"}, "--mode 'test' is not a mode"),
    ({"grad_mode": "nograd"}, "--grad 'nograd' is not a grad mode"),
    ({"depth": -1}, "--depth -1"),
])
def test_bad_mode_values(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        probe(mi.MLP(), **kwargs)
