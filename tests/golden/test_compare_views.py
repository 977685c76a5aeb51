"""Golden output of ``compare-modes``: the terminal grid, verdict and findings, and the Markdown report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from gradprobe.api import compare_modes
from gradprobe.examples import FineTuneNet
from gradprobe.facts.compare import CompareReport
from gradprobe.render.compare.markdown import compare_markdown
from gradprobe.render.compare.table import render_compare
from tests.fixtures import models as mi


class EvalRaises(nn.Module):
    """Refuses eval mode: three failed rows, and the train rows compared without the eval reference."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.example_input_array = torch.randn(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise ValueError("this model refuses eval mode")
        return self.lin(x)


MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    # BatchNorm and Dropout: a train/eval difference attributed to modules, buffers changed, backward columns
    # (narrow and on small images: the view is the same, the run takes a fraction of the time)
    "finetune_net_backward": (lambda: FineTuneNet(width=4), {"backward": True, "small_images": True}),
    # inference_mode inside forward: inference outputs where grad was asked for
    "inference_inside": (mi.InferenceInside, {}),
    "eval_raises": (EvalRaises, {}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def report(request: pytest.FixtureRequest, steady_compare: Callable[[Any], Any]) -> CompareReport:
    factory, options = MODELS[request.param]
    options = dict(options)
    torch.manual_seed(0)
    model = factory()
    if options.pop("small_images", False):
        options["inputs"] = torch.randn(2, 3, 8, 8)
    return steady_compare(compare_modes(model, repeat=2, **options))


def test_terminal_view(report: CompareReport, as_text: Callable[..., str], text_snapshot: Any) -> None:
    assert as_text(render_compare, report) == text_snapshot


def test_markdown(report: CompareReport, md_snapshot: Any) -> None:
    assert compare_markdown(report) == md_snapshot
