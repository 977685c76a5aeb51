"""The pytest example of docs/ci-examples.md: a freeze gate inside a project's own test suite."""

import pytest
import torch

import gradprobe
from gradprobe.examples import FineTuneNet


def make_optimizer(model):
    """Only the parameters meant to train go to the optimizer."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)


def test_backbone_stays_frozen():
    model = FineTuneNet(fixed=True)
    gradprobe.assert_frozen(model, frozen=["backbone"], trainable=["head"], optimizer=make_optimizer)


def test_the_unfixed_model_is_caught():
    # FineTuneNet() leaves the frozen backbone's BatchNorm in train mode and never calls aux_head
    with pytest.raises(AssertionError, match=r"\[buffer\] backbone\.block1\.1\.running_mean"):
        gradprobe.assert_frozen(FineTuneNet(), frozen=["backbone"], trainable=["head", "aux_head"])
