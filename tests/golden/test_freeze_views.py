"""Golden output of ``freeze-check``: the terminal view and the Markdown report, passing and failing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gradprobe
from gradprobe.examples import FineTuneNet, fixed
from gradprobe.judges.freeze import FreezeReport
from gradprobe.render.freeze.view import freeze_markdown, render_freeze
from tests.fixtures import freeze_models as fm

CASES: dict[str, Callable[[], FreezeReport]] = {
    # the corrected README model: every check passes
    "pass_finetune_fixed": lambda: gradprobe.freeze_check(fixed(), frozen=["backbone"], trainable=["head"]),
    # the README model: BatchNorm statistics drift in the frozen backbone, an unlisted layer never called
    "fail_finetune": lambda: gradprobe.freeze_check(FineTuneNet(), frozen=["backbone"], trainable=["head"]),
    # a no_grad "freeze" and an AdamW over every parameter: flag and gradient violations, param-group warnings
    "fail_no_grad_adamw": lambda: gradprobe.freeze_check(fm.NoGradFreeze(), **fm.SPEC, optimizer=fm.adamw_all),
    # a correct freeze with an optimizer resumed from a checkpoint: momentum moves the frozen backbone
    "fail_resumed_momentum": lambda: gradprobe.freeze_check(fm.Frozen(), **fm.SPEC, optimizer=fm.sgd_momentum_resumed),
    # a tied weight frozen under one name and trained under the other
    "fail_tied": lambda: gradprobe.freeze_check(fm.TiedLM(), frozen=["embed"], trainable=["head", "body"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def report(request: pytest.FixtureRequest, steady_frozen: Callable[[Any], Any]) -> FreezeReport:
    torch.manual_seed(0)
    result = CASES[request.param]()
    assert result.passed == request.param.startswith("pass")
    return steady_frozen(result)


def test_terminal_view(report: FreezeReport, as_text: Callable[..., str], text_snapshot: Any) -> None:
    assert as_text(render_freeze, report) == text_snapshot


def test_markdown(report: FreezeReport, md_snapshot: Any) -> None:
    assert freeze_markdown(report) == md_snapshot
