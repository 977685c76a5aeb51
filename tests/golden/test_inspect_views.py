"""Golden output of ``inspect``: the whole terminal view (summary, parameters, buffers, tensors, graph, memory,
checkpoint advice, findings) and the Markdown report, for models that each show something different."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.examples import FineTuneNet
from gradprobe.facts.run import InspectReport
from gradprobe.render.inspect.markdown import inspect_markdown
from gradprobe.render.inspect.table import render_inspect
from tests.fixtures import models as mi
from tests.fixtures import zoo

MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "finetune_net": (FineTuneNet, {}),  # the README's model: grad-none and frozen-bn-drift, memory
    "frozen_backbone": (mi.FrozenBackbone, {}),
    "tied": (mi.Tied, {}),  # one parameter under two names
    "called_twice": (mi.CalledTwice, {}),  # calls #0 and #1
    "never_called": (mi.NeverCalled, {}),
    "tiny_gpt": (zoo.tiny_gpt, {}),  # memory by module call and checkpoint advice
    "mlp_eval_no_grad": (mi.MLP, {"mode": "eval", "grad_mode": "no_grad"}),  # no backward, and why
}


@pytest.fixture(scope="module", params=list(MODELS))
def report(request: pytest.FixtureRequest, steady: Callable[[Any], Any]) -> InspectReport:
    factory, options = MODELS[request.param]
    torch.manual_seed(0)
    result = probe(factory(), **options)
    return replace(result, facts=steady(result.facts))


def test_terminal_view(report: InspectReport, as_text: Callable[..., str], text_snapshot: Any) -> None:
    assert as_text(render_inspect, report) == text_snapshot


def test_markdown(report: InspectReport, md_snapshot: Any) -> None:
    assert inspect_markdown(report) == md_snapshot
