"""Outputs that hold their tensors inside torch.distributions objects or plain objects.

The default loss is the sum of every floating tensor gradprobe finds; the tests compute that loss in plain
PyTorch from the same tensors and compare every parameter's gradient.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.model_state import assert_same_state, snapshot
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

from gradprobe import GradprobeError, probe
from gradprobe.run.flatten import flatten_tensors


class Policy(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)
        self.log_std = nn.Parameter(torch.zeros(3))
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        h = torch.tanh(self.body(x))
        if self.kind == "normal":
            return Normal(self.head(h), self.log_std.exp())
        if self.kind == "categorical":
            return Categorical(logits=self.head(h))
        if self.kind == "mixture":
            return MixtureSameFamily(Categorical(logits=self.head(h)), Normal(self.head(h), self.log_std.exp()))
        return (h, Categorical(logits=self.head(h)))


def plain_default_loss(model: nn.Module, x: torch.Tensor,
                       tensors: list[torch.Tensor]) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    sum(t.float().sum() for t in tensors).backward()  # type: ignore[union-attr]
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(("kind", "paths", "attrs"), [
    ("normal", ["output.loc", "output.scale"], ["loc", "scale"]),
    ("categorical", ["output.logits"], ["logits"]),
    ("tuple", ["output[0]", "output[1].logits"], None),
    ("mixture", ["output.mixture_distribution.logits", "output.component_distribution.loc",
                 "output.component_distribution.scale"], None),
])
def test_distribution_parameters_are_the_outputs(kind: str, paths: list[str], attrs: list[str] | None) -> None:
    torch.manual_seed(0)
    model = Policy(kind)
    x = torch.randn(2, 4)
    before = snapshot(model)
    report = probe(model, x)
    assert_same_state(before, snapshot(model))
    assert [o.path for o in report.facts.outputs] == paths
    out = model(x)
    if kind == "normal" or kind == "categorical":
        tensors = [getattr(out, a) for a in attrs or []]  # the parameters the distribution holds, nothing computed
        assert "probs" not in vars(out)
    else:
        tensors = [t for _, t in flatten_tensors(out)]
    grads = plain_default_loss(model, x, tensors)
    facts = {p.name: p for p in report.facts.parameters}
    for name, grad in grads.items():
        if grad is None:  # log_std of a Categorical policy: unused, as in plain PyTorch
            assert facts[name].grad == "none", name
        else:
            assert facts[name].grad_norm == pytest.approx(float(grad.double().norm()), rel=1e-6), name
    assert report.facts.loss == pytest.approx(float(sum(t.detach().sum() for t in tensors)), rel=1e-6)
    if kind in ("normal", "categorical", "mixture"):
        assert any("--loss module:fn" in n and "log_prob" in n for n in report.facts.notes)


class Holder:
    """A plain result object, as some research code returns."""

    def __init__(self, logits: torch.Tensor, aux: torch.Tensor) -> None:
        self.logits = logits
        self.aux = aux
        self._cache = logits * 2  # private: not an output
        self.owner: nn.Module | None = None
        self.count = 3


class ReturnsObject(nn.Module):
    def __init__(self, empty: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.empty = empty

    def forward(self, x: torch.Tensor) -> object:
        if self.empty:
            return object()
        out = Holder(self.fc(x), self.fc.weight.sum() * 0.5)
        out.owner = self  # a reference back to the model must not pull its parameters in as outputs
        return out


def test_plain_object_attributes_are_found_when_nothing_else_holds_a_tensor() -> None:
    torch.manual_seed(0)
    model = ReturnsObject()
    x = torch.randn(3, 4)
    report = probe(model, x)
    assert [o.path for o in report.facts.outputs] == ["output.logits", "output.aux"]
    out = model(x)
    grads = plain_default_loss(model, x, [out.logits, out.aux])
    for p in report.facts.parameters:
        assert p.grad_norm == pytest.approx(float(grads[p.name].double().norm()), rel=1e-6)  # type: ignore[union-attr]
    (note,) = [n for n in report.facts.notes if "Holder" in n]
    assert "output.logits, output.aux" in note and "--loss module:fn" in note


def test_object_without_tensors_says_what_to_pass() -> None:
    with pytest.raises(GradprobeError, match=r"returned a object holding no tensor.*--loss module:fn"):
        probe(ReturnsObject(empty=True), torch.randn(3, 4))


def loss_from_hidden(outputs: object, inputs: object) -> torch.Tensor:
    return torch.ones(())  # a scalar without a graph: a loss function decides, not gradprobe


def test_custom_loss_accepts_an_output_gradprobe_cannot_read() -> None:
    report = probe(ReturnsObject(empty=True), torch.randn(3, 4), loss=loss_from_hidden)
    assert report.facts.outputs == () and not report.facts.backward
    assert report.facts.loss == 1.0
