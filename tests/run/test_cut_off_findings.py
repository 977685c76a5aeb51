"""Parameters cut off from the loss: an error even without a backward, and the same cause with or without
tensor records; a fully frozen model says nothing will train."""

from __future__ import annotations

import torch
from torch import nn

from gradprobe.api import probe


class _NoGradBackbone(nn.Module):
    """The backbone runs under no_grad inside forward; ``head_frozen`` also freezes the head."""

    def __init__(self, head_frozen: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.head.requires_grad_(not head_frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def test_cut_off_parameters_are_an_error_even_when_no_backward_is_possible() -> None:
    model = _NoGradBackbone(head_frozen=True)
    out = model(torch.randn(4, 8))
    assert not out.requires_grad  # plain PyTorch: nothing to call backward on
    report = probe(model, torch.randn(4, 8))
    assert not report.facts.backward
    (finding,) = [f for f in report.findings if f.code == "grad-none"]
    assert finding.severity == "error" and finding.subject == "backbone" and "no grad_fn" in finding.message


def test_a_fully_frozen_model_says_nothing_will_train() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).requires_grad_(False)
    codes = {f.code: f for f in probe(model, torch.randn(4, 8)).findings}
    assert codes["no-trainable-params"].severity == "warning"
    assert "no-backward" not in codes and "grad-none" not in codes
    trainable = nn.Sequential(nn.Linear(8, 2))
    assert "no-trainable-params" not in {f.code for f in probe(trainable, torch.randn(4, 8)).findings}


def test_the_cause_does_not_depend_on_recording_tensors() -> None:
    model = _NoGradBackbone()
    with_tensors = [f for f in probe(model, torch.randn(4, 8)).findings if f.code == "grad-none"]
    without = [f for f in probe(model, torch.randn(4, 8), tensors=False).findings if f.code == "grad-none"]
    assert with_tensors == without and "no grad_fn" in without[0].message
