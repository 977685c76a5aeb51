"""``gradprobe compare-modes``: every column checked against plain PyTorch or hand arithmetic.

Models are built here, small enough that each comparison takes milliseconds.  Expected values come from
running the same model with plain ``torch`` (a deep copy, so the model under test is not disturbed) or
from counting bytes by hand; nothing is copied from gradprobe's own output.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from gradprobe.api import compare_modes
from gradprobe.errors import UsageError
from gradprobe.facts.compare import (
    COMPARE_SCHEMA,
    Attribution,
    CompareReport,
    Comparison,
    ModeRow,
    ModuleEffect,
)
from gradprobe.judges.compare import compare_verdict, judge_compare
from gradprobe.load.modes import parse_modes
from gradprobe.render.compare.json_out import compare_json
from gradprobe.render.compare.markdown import compare_markdown
from gradprobe.render.compare.table import render_compare
from gradprobe.run.compare import reads_training

B = 5  # batch of every test input
SIX = [("train", "grad"), ("train", "no_grad"), ("train", "inference_mode"),
       ("eval", "grad"), ("eval", "no_grad"), ("eval", "inference_mode")]
ROW_FIELDS = {"mode", "grad_mode", "ok", "error", "output_requires_grad", "output_grad_fn", "is_inference",
              "graph_nodes", "saved_for_backward_bytes", "forward_peak_bytes", "time_s", "max_abs_diff",
              "buffers_changed", "backward_possible", "backward_time_s", "backward_peak_bytes"}


# ------------------------------------------------------------------------------------------------ models


def plain_mlp() -> nn.Sequential:
    """Neither Dropout nor BatchNorm: every output must be bit-identical across the six rows."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def drop_net() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))


def bn_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


class EvalDropout(nn.Module):
    """The classic bug: F.dropout's training defaults to True, so eval mode still drops."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.dropout(self.lin(x), 0.5, training=True))


def x_in() -> torch.Tensor:
    return torch.randn(B, 6, generator=torch.Generator().manual_seed(4))


class InferenceInside(nn.Module):
    """Uses inference_mode inside forward: fine without grad, raises when grad is on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = x * 2
        return self.lin(y)


class EvalRaises(nn.Module):
    """Raises only in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise ValueError("this model refuses eval mode")
        return self.lin(x)


class MultiOut(nn.Module):
    """Float, integer and bool outputs; dropout changes the predicted class between train and eval."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(6, 40)
        self.drop = nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(self.lin(x))
        return {"ids": h.argmax(-1), "h": h, "positive": h > 0, "frozen": x.detach() * 2}


class Counter(nn.Module):
    """Nondeterministic in a way no seed controls: a Python attribute changes on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x) * self.calls


class GradBranch(nn.Module):
    """Behaves differently when grad is on: outputs must differ between grad modes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out * 2 if torch.is_grad_enabled() else out


def _scale_if_training(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x * 3 if module.training else x


class Sneaky(nn.Module):
    """Reads its flag only through a helper outside the class: the static filter misses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scale_if_training(self, x)


# ------------------------------------------------------------------------------------- plain PyTorch


def plain_forward(model: nn.Module, mode: str, grad_mode: str, seed: int = 0) -> torch.Tensor:
    """The model's output under one combination, on a copy, after torch.manual_seed(seed)."""
    m = copy.deepcopy(model)
    m.train(mode == "train")
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[grad_mode]
    torch.manual_seed(seed)
    with ctx():
        return m(x_in())


def count_nodes(root: Any) -> int:
    """Distinct autograd nodes reachable from ``root`` (AccumulateGrad included), iteratively."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def snapshot_model(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = model.state_dict()
    assert before["state"].keys() == after.keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after[k]), k
    assert [m.training for m in model.modules()] == before["training"]
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert all(a is b for a, b in zip([p.grad for p in model.parameters()], before["grads"], strict=True))
    for p, g in zip(model.parameters(), before["grad_values"], strict=True):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))


def rows_by_label(report: CompareReport) -> dict[tuple[str, str], ModeRow]:
    return {(r.mode, r.grad_mode): r for r in report.rows}


def codes(report: CompareReport) -> list[str]:
    return [f.code for f in report.findings]


@pytest.fixture(scope="module")
def mlp_report() -> CompareReport:
    return compare_modes(plain_mlp(), x_in(), repeat=3, backward=True)


@pytest.fixture(scope="module")
def drop_report() -> CompareReport:
    return compare_modes(drop_net(), x_in(), repeat=2)


@pytest.fixture(scope="module")
def bn_report() -> CompareReport:
    return compare_modes(bn_net(), x_in(), repeat=2)


# ------------------------------------------------------------------------------------ columns vs torch


@pytest.mark.parametrize("factory", [plain_mlp, drop_net, bn_net])
def test_flag_columns_match_plain_torch(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    report = compare_modes(model, x_in(), repeat=1)
    assert [(r.mode, r.grad_mode) for r in report.rows] == SIX
    for r in report.rows:
        out = plain_forward(model, r.mode, r.grad_mode)
        assert r.ok and r.error is None
        assert r.output_requires_grad == out.requires_grad
        assert r.output_grad_fn == (type(out.grad_fn).__name__ if out.grad_fn is not None else None)
        assert r.is_inference == out.is_inference()
        assert r.backward_possible == out.requires_grad
        assert r.graph_nodes == (count_nodes(out.sum().grad_fn) if out.requires_grad else 0)
        if r.grad_mode != "grad":
            assert r.saved_for_backward_bytes == 0


@pytest.mark.parametrize("factory", [plain_mlp, drop_net, bn_net])
def test_max_abs_diff_matches_plain_torch(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    report = compare_modes(model, x_in(), repeat=2)
    # rows run in the order train first: eval rows only match a fresh plain forward if every run started from
    # the same buffers (BatchNorm statistics) and RNG state
    reference = plain_forward(model, "eval", "no_grad")
    assert report.comparison.reference == "eval:no_grad"
    for r in report.rows:
        expected = (plain_forward(model, r.mode, r.grad_mode).detach() - reference).abs().max().item()
        assert r.max_abs_diff == expected, r.label
    if factory is plain_mlp:  # neither Dropout nor BatchNorm: exactly zero everywhere
        assert all(r.max_abs_diff == 0.0 for r in report.rows)
    else:
        assert all(r.max_abs_diff > 0 for r in report.rows if r.mode == "train")


def test_saved_and_peak_bytes_of_an_mlp_by_hand(mlp_report: CompareReport) -> None:
    # grad: Linear1 saves x (B*6 floats); ReLU1 saves r1 which Linear2 saves too (one storage, B*8); likewise r2.
    saved = 4 * B * (6 + 8 + 8)
    # peak with grad: r1 stays alive (saved) while Linear2's output h2 and ReLU2's r2 exist: 3 activations of B*8.
    # without grad r1 dies once Linear2 has run: at most two B*8 activations are alive.
    rows = rows_by_label(mlp_report)
    for mode in ("train", "eval"):
        assert rows[(mode, "grad")].saved_for_backward_bytes == saved
        assert rows[(mode, "grad")].forward_peak_bytes == 3 * 4 * B * 8
        for gm in ("no_grad", "inference_mode"):
            assert rows[(mode, gm)].saved_for_backward_bytes == 0
            assert rows[(mode, gm)].forward_peak_bytes == 2 * 4 * B * 8


def test_backward_columns(mlp_report: CompareReport) -> None:
    param_bytes = sum(p.numel() * 4 for p in plain_mlp().parameters())
    for r in mlp_report.rows:
        if r.grad_mode == "grad":
            assert r.backward_time_s is not None and r.backward_time_s > 0
            assert r.backward_peak_bytes is not None and r.backward_peak_bytes >= param_bytes  # new .grad tensors
        else:
            assert r.backward_time_s is None and r.backward_peak_bytes is None


def test_times(mlp_report: CompareReport) -> None:
    for r in mlp_report.rows:
        assert len(r.times_s) == 3 and all(t > 0 for t in r.times_s)
        assert len(r.cpu_times_s) == 3 and all(t >= 0 for t in r.cpu_times_s)  # the same runs, CPU time
        assert r.time_s == sorted(r.times_s)[1]  # the median


def test_buffers_changed_match_plain_torch(bn_report: CompareReport) -> None:
    for r in bn_report.rows:
        m = copy.deepcopy(bn_net())
        before = {k: v.clone() for k, v in m.named_buffers()}
        m.train(r.mode == "train")
        with {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[
                r.grad_mode]():
            m(x_in())
        changed = [k for k, v in m.named_buffers() if not torch.equal(v, before[k])]
        assert list(r.buffers_changed) == changed, r.label
    rows = rows_by_label(bn_report)
    assert set(rows[("train", "no_grad")].buffers_changed) == {"1.running_mean", "1.running_var",
                                                              "1.num_batches_tracked"}
    assert rows[("eval", "grad")].buffers_changed == ()


def test_meta_device_estimates_the_same_bytes() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        x = torch.randn(B, 6)
    report = compare_modes(model, x, repeat=2)
    rows = rows_by_label(report)
    assert rows[("train", "grad")].saved_for_backward_bytes == 4 * B * (6 + 8 + 8)  # as on CPU, by hand
    assert rows[("eval", "no_grad")].forward_peak_bytes == 2 * 4 * B * 8
    assert all(r.ok and r.time_s is None and r.max_abs_diff is None for r in report.rows)
    assert report.comparison.device == "meta" and report.notes
    assert report.comparison.eval_random_max_abs_diff is None and "eval-output-random" not in codes(report)


# ------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("factory", [drop_net, bn_net, EvalRaises])
def test_model_untouched(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    model.train()
    children = list(model.children())
    children[0].eval()  # a mixed state must come back as it was
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    last = list(model.parameters())[-1]
    last.requires_grad_(False)
    before = snapshot_model(model)
    rng = torch.get_rng_state()
    torch.set_grad_enabled(False)  # the ambient grad mode comes back too
    try:
        compare_modes(model, x_in(), repeat=2, backward=True)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_untouched(model, before)


# ------------------------------------------------------------------------------------ failing rows


def test_inference_mode_inside_forward_fails_only_with_grad() -> None:
    model = InferenceInside()
    report = compare_modes(model, x_in(), repeat=2)
    rows = rows_by_label(report)
    for key, r in rows.items():
        if key[1] == "grad":
            assert not r.ok and "Inference tensors cannot be saved for backward" in (r.error or "")
            assert r.time_s is None and r.max_abs_diff is None
        else:
            assert r.ok and r.error is None
    failed = [f for f in report.findings if f.code == "mode-failed"]
    assert {f.subject for f in failed} == {"train:grad", "eval:grad"}
    assert all(f.severity == "error" for f in failed) and "no_grad" in failed[0].hint
    assert report.has_errors
    doc = compare_json(report)
    assert [r["ok"] for r in doc["rows"]] == [False, True, True, False, True, True]


class _RefusesEval(nn.Module):
    """A submodule that raises in eval mode only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise ValueError("the inner block refuses eval mode")
        return x * 2


class _NestedEvalRaises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.blocks = nn.Sequential(nn.ReLU(), _RefusesEval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.lin(x))


def test_a_failing_row_names_the_module_it_raised_in() -> None:
    """The tracked rows run without the module call stack (issue 16); a forward that raises runs again with it, so
    the row names the submodule, as in a run that had it from the start.  Plain torch says where it raised."""
    model = _NestedEvalRaises()
    with pytest.raises(ValueError, match="refuses eval mode"):
        model.eval()(x_in())
    report = compare_modes(model.train(), x_in(), repeat=1)
    assert [r.ok for r in report.rows] == [True, True, True, False, False, False]
    for r in report.rows[3:]:
        assert r.error_phase == "forward" and r.failed_timed_run is None
        assert (r.error or "").startswith("forward raised in module 'blocks.1' (_RefusesEval): ValueError: the inner "
                                          "block refuses eval mode"), r.error


class _FailsOnce(nn.Module):
    """Raises on its first forward only: a flaky failure (a data-dependent bug, a race)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(x_in().shape[-1], 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("first call fails")
        return self.lin(x)


def test_a_row_that_failed_once_stays_failed() -> None:
    """The run again that names the module must not turn a failure into a measured row when it happens to pass."""
    report = compare_modes(_FailsOnce(), x_in(), repeat=1, modes="train:grad")
    (row,) = report.rows
    assert not row.ok and "first call fails" in (row.error or "")


def test_eval_only_failure_uses_another_reference() -> None:
    model = EvalRaises()
    report = compare_modes(model, x_in(), repeat=1)
    assert [r.ok for r in report.rows] == [True, True, True, False, False, False]
    assert report.comparison.reference == "train:grad"
    assert all(r.max_abs_diff == 0.0 for r in report.rows if r.ok)
    assert "refuses eval mode" in (report.rows[3].error or "")


# ------------------------------------------------------------------------------------ multi-output


def test_several_outputs() -> None:
    model = MultiOut()
    report = compare_modes(model, x_in(), repeat=2)
    rows = rows_by_label(report)
    ref = plain_forward(model, "eval", "no_grad")
    train = plain_forward(model, "train", "grad")
    r = rows[("train", "grad")]
    assert r.output_requires_grad is True  # "h" requires grad, "frozen" does not
    assert r.output_grad_fn == type(train["h"].grad_fn).__name__  # the first floating output, not the integer one
    assert r.max_abs_diff == max((train["h"].detach() - ref["h"]).abs().max().item(),
                                 (train["frozen"] - ref["frozen"]).abs().max().item())
    assert not torch.equal(train["ids"], ref["ids"])
    assert r.int_outputs_equal is False
    assert rows[("eval", "grad")].int_outputs_equal is True
    assert rows[("eval", "inference_mode")].is_inference is True
    assert "integer-output-differs" in codes(report)
    assert any("Integer/bool outputs differ" in line for line in report.verdict)


# ------------------------------------------------------------------------------------------ attribution


def test_dropout_only_difference(drop_report: CompareReport) -> None:
    a = drop_report.comparison.attribution
    assert a is not None and [e.name for e in a.modules] == ["1"] and a.modules[0].type == "Dropout"
    assert a.explained is True
    # the module's own output, train flag vs eval flag, same input: dropout zeroes and rescales (1/(1-p) = 2)
    assert a.modules[0].max_abs_diff is not None and a.modules[0].max_abs_diff > 0
    diff = next(f for f in drop_report.findings if f.code == "train-eval-difference")
    assert "only because of dropout" in diff.message and diff.subject == "1"
    assert "nondeterministic-output" not in codes(drop_report)
    assert all(r.repeat_max_abs_diff == 0.0 for r in drop_report.rows)
    assert any("only dropout" in line for line in drop_report.verdict)
    assert any(f"max |diff| {a.modules[0].max_abs_diff:.3g} on its own output" in line for line in drop_report.verdict)


def test_batchnorm_attribution_and_validation_buffers(bn_report: CompareReport) -> None:
    a = bn_report.comparison.attribution
    assert a is not None and [(e.name, e.type) for e in a.modules] == [("1", "BatchNorm1d")]
    assert a.explained is True
    # BatchNorm's own output with its flag flipped, from plain torch: batch statistics vs running statistics
    bn = copy.deepcopy(bn_net()[1])
    with torch.no_grad():
        h = bn_net()[0](x_in())
        bn.eval()
        e = bn(h)
        bn.train()
        t = bn(h)
    assert a.modules[0].max_abs_diff == (t - e).abs().max().item()
    f = next(f for f in bn_report.findings if f.code == "train-no-grad-buffers")
    assert f.severity == "warning" and f.subject == "1.running_mean" and "model.eval()" in f.message
    assert "train-no-grad-buffers" not in codes(compare_modes(drop_net(), x_in(), repeat=1))


def test_module_read_through_a_helper_is_still_found() -> None:
    assert reads_training(nn.Dropout) and reads_training(nn.BatchNorm1d) and not reads_training(nn.Linear)
    assert not reads_training(Sneaky)
    model = nn.Sequential(nn.Linear(6, 3), Sneaky())
    report = compare_modes(model, x_in(), repeat=1)
    a = report.comparison.attribution
    assert a is not None and [e.name for e in a.modules] == ["1"] and a.explained is True


def test_no_attribution_when_train_equals_eval(mlp_report: CompareReport) -> None:
    assert mlp_report.comparison.attribution is None
    assert any(line.startswith("Train and eval outputs are identical") for line in mlp_report.verdict)
    assert "train-eval-difference" not in codes(mlp_report)


def test_dropout_that_ignores_eval_is_caught() -> None:
    model = EvalDropout()
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():  # plain torch: the eval forward from seed 0 (the default) and from seed 1
        torch.manual_seed(0)
        out0 = twin(x_in())
        torch.manual_seed(1)
        out1 = twin(x_in())
    expected = (out1 - out0).abs().max().item()
    assert expected > 0
    rng = torch.random.get_rng_state()
    report = compare_modes(model, x_in(), repeat=2)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the user's RNG is left as found
    c = report.comparison
    assert c.eval_random_max_abs_diff == expected and c.eval_random
    f = next(f for f in report.findings if f.code == "eval-output-random")
    assert f.severity == "error" and report.has_errors
    assert "training=self.training" in f.message and "seed 1" in f.message and "F.dropout" in f.hint
    assert any(line.startswith("Eval outputs change with the random state") for line in report.verdict)
    # the same RNG state in every other run hides it there: train and eval outputs agree exactly
    assert all(r.max_abs_diff == 0.0 and not r.nondeterministic for r in report.rows)
    assert any("samples randomness in both modes" in line for line in report.verdict)
    doc = json.loads(json.dumps(compare_json(report), allow_nan=False))
    assert doc["eval_random_max_abs_diff"] == expected
    assert "eval-output-random" in {x["code"] for x in doc["findings"]}


@pytest.mark.parametrize("repeat", [3, 5])
def test_eval_randomness_from_the_reference_rows_last_timed_run(repeat: int) -> None:
    """With 3+ repeats the other-seed forward is the eval+no_grad row's last timed run: same figure, same runs."""
    twin = EvalDropout().eval()
    with torch.no_grad():
        torch.manual_seed(0)
        out0 = twin(x_in())
        torch.manual_seed(1)
        out1 = twin(x_in())
    c = compare_modes(EvalDropout(), x_in(), repeat=repeat).comparison
    assert c.eval_random_max_abs_diff == (out1 - out0).abs().max().item() > 0
    assert c.eval_random_error is None
    assert all(r.ok and len(r.times_s) == repeat and r.repeat_max_abs_diff == 0.0 for r in c.rows)


class FailsOnOtherSeed(nn.Module):
    """Raises when its random draw is not seed 0's: only the forward from another random state fails."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        torch.manual_seed(0)
        self.expected = torch.rand(1).item()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() != self.expected:
            raise ValueError("drew another number")
        return self.lin(x)


@pytest.mark.parametrize("repeat", [2, 4])
def test_a_failing_forward_from_another_random_state_is_reported_not_a_failed_row(repeat: int) -> None:
    c = compare_modes(FailsOnOtherSeed(), x_in(), repeat=repeat, seed=0).comparison
    assert c.eval_random_max_abs_diff is None and "drew another number" in (c.eval_random_error or "")
    assert all(r.ok and len(r.times_s) == repeat for r in c.rows)


def test_dropout_module_and_deterministic_models_are_not_random(drop_report: CompareReport,
                                                                 mlp_report: CompareReport) -> None:
    for report in (drop_report, mlp_report):
        assert report.comparison.eval_random_max_abs_diff == 0.0 and not report.comparison.eval_random
        assert "eval-output-random" not in codes(report)
        assert any(line.startswith("Eval outputs do not depend on the random state") for line in report.verdict)


def test_eval_randomness_is_noted_on_attributed_differences() -> None:
    rows = (_row("train", "no_grad", max_abs_diff=0.5), _row("eval", "no_grad"))
    a = Attribution((ModuleEffect("drop", "Dropout", 0.4),), ("drop",), explained=True)
    c = Comparison("t", "x", "cpu", 3, 5, False, rows, "eval:no_grad", attribution=a, eval_random_max_abs_diff=0.25)
    found = {x.code: x for x in judge_compare(c)}
    assert found["eval-output-random"].severity == "error" and "seed 4" in found["eval-output-random"].message
    assert "eval-output-random" in found["train-eval-difference"].message
    verdict = compare_verdict(c)
    line = next(v for v in verdict if v.startswith("Train and eval outputs differ"))
    assert "eval-output-random" in line and "disappears with model.eval()" not in line
    # an eval row that is nondeterministic from the same seed: the RNG is not to blame, no eval-output-random
    noisy = (rows[0], _row("eval", "no_grad", repeat_max_abs_diff=0.1))
    c = Comparison("t", "x", "cpu", 3, 5, False, noisy, "eval:no_grad", eval_random_max_abs_diff=0.25)
    assert "eval-output-random" not in {x.code for x in judge_compare(c)}


def test_nondeterminism_is_reported() -> None:
    report = compare_modes(Counter(), x_in(), repeat=2)
    assert all(r.nondeterministic for r in report.rows)
    f = next(f for f in report.findings if f.code == "nondeterministic-output")
    assert f.severity == "warning"
    assert "train-eval-difference" not in codes(report)


def test_grad_mode_changing_output() -> None:
    report = compare_modes(GradBranch(), x_in(), repeat=1)
    subjects = {f.subject for f in report.findings if f.code == "grad-mode-changes-output"}
    assert subjects == {"train:grad", "eval:grad"}
    assert "grad-mode-changes-output" not in codes(compare_modes(plain_mlp(), x_in(), repeat=1))


def test_eval_grad_graph_finding(mlp_report: CompareReport) -> None:
    f = next(f for f in mlp_report.findings if f.code == "eval-grad-graph")
    assert f.subject == "eval:grad" and f.severity == "info"
    assert f"{4 * B * 22} B saved for backward" in f.message  # 440 B, the hand-counted figure
    assert "15 nodes" in f.message  # 5 layers' worth of nodes, counted by count_nodes in the column test
    frozen = plain_mlp().requires_grad_(False)
    assert "eval-grad-graph" not in codes(compare_modes(frozen, x_in(), repeat=1))


# ------------------------------------------------------------------------------------------- options


def test_modes_subset_keeps_order_and_reference() -> None:
    model = drop_net()
    report = compare_modes(model, x_in(), modes="eval:inference_mode, train:grad", repeat=1)
    assert [r.label for r in report.rows] == ["eval:inference_mode", "train:grad"]
    assert report.comparison.reference == "eval:no_grad"  # run once more for the diff, not shown as a row
    expected = (plain_forward(model, "train", "grad").detach() - plain_forward(model, "eval", "no_grad")).abs().max()
    assert report.rows[1].max_abs_diff == expected.item()


@pytest.mark.parametrize("spec", ["train", "train:maybe", "test:grad", ",", "train:grad,eval"])
def test_bad_modes(spec: str) -> None:
    with pytest.raises(UsageError, match="--modes"):
        parse_modes(spec)


def test_modes_spellings() -> None:
    assert parse_modes("train:no-grad,EVAL:inference,train:no_grad") == [("train", "no_grad"),
                                                                          ("eval", "inference_mode")]
    assert parse_modes(None) == SIX


def test_repeat_must_be_positive() -> None:
    with pytest.raises(UsageError, match="--repeat"):
        compare_modes(plain_mlp(), x_in(), repeat=0)


def test_progress_callback_reaches_the_total() -> None:
    calls: list[tuple[str, int, int]] = []
    compare_modes(drop_net(), x_in(), repeat=2, progress=lambda d, done, total: calls.append((d, done, total)))
    assert calls and calls[-1][1] == calls[-1][2] and all(done <= total for _, done, total in calls)


# ---------------------------------------------------------------------------------------- judges alone


def _row(mode: str, gm: str, **kw: Any) -> ModeRow:
    base = {"output_requires_grad": gm == "grad", "graph_nodes": 0, "saved_for_backward_bytes": 0,
            "forward_peak_bytes": 1000, "time_s": 0.010, "max_abs_diff": 0.0, "repeat_max_abs_diff": 0.0}
    return ModeRow(mode, gm, ok=True, **{**base, **kw})


def test_verdict_arithmetic_from_hand_made_rows() -> None:
    rows = (_row("eval", "grad", graph_nodes=7, saved_for_backward_bytes=600, forward_peak_bytes=1000),
            _row("eval", "no_grad", forward_peak_bytes=250, time_s=0.008),
            _row("eval", "inference_mode", forward_peak_bytes=200, time_s=0.005))
    c = Comparison("t", "x", "cpu", 0, 5, False, rows, "eval:no_grad")
    verdict = " ".join(compare_verdict(c))
    assert "no_grad has a peak 750 B lower (75%) and runs 20% faster" in verdict
    assert "inference_mode has a peak 800 B lower (80%) and runs 50% faster" in verdict
    assert "Without grad nothing is kept for backward (grad keeps 600 B)." in verdict
    f = judge_compare(c)
    assert [x.code for x in f] == ["eval-grad-graph"]
    assert "7 nodes" in f[0].message and "600 B" in f[0].message and "750 B" in f[0].message


def test_unexplained_train_eval_difference_from_hand_made_facts() -> None:
    rows = (_row("train", "no_grad", max_abs_diff=0.5), _row("eval", "no_grad"))
    a = Attribution((ModuleEffect("drop", "Dropout", 0.4),), ("drop",), explained=False)
    c = Comparison("t", "x", "cpu", 0, 5, False, rows, "eval:no_grad", attribution=a)
    assert [x.code for x in judge_compare(c)] == ["train-eval-unexplained", "train-eval-difference"]


# ------------------------------------------------------------------------------------------- rendering


def test_json_document(drop_report: CompareReport) -> None:
    doc = json.loads(json.dumps(compare_json(drop_report), allow_nan=False))
    assert doc["schema"] == COMPARE_SCHEMA == "gradprobe.run.compare/1"
    assert {"target", "torch", "device", "rows", "findings"} <= doc.keys()
    assert doc["torch"] == torch.__version__ and doc["device"] == "cpu"
    assert len(doc["rows"]) == 6
    for row in doc["rows"]:
        assert ROW_FIELDS <= row.keys()
        assert isinstance(row["buffers_changed"], list) and isinstance(row["ok"], bool)
    for f in doc["findings"]:
        assert {"code", "severity", "subject", "message"} <= f.keys()
    assert doc["training_dependent"]["modules"][0]["name"] == "1"


def test_markdown(drop_report: CompareReport) -> None:
    md = compare_markdown(drop_report)
    assert md.startswith("## gradprobe compare-modes")
    header = next(line for line in md.splitlines() if line.startswith("|  |"))
    assert all(f"`{m}:{g}`" in header for m, g in SIX)
    assert "| max \\|diff\\| |" in md and "### Verdict" in md and "`train-eval-difference`" in md


def test_rich_table_fits_80_columns(bn_report: CompareReport) -> None:
    console = Console(record=True, width=80, color_system=None)
    render_compare(bn_report, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "fwd peak" in text and "verdict" in text and "train-no-grad-buf" in text


def test_table_and_verdict_share_the_console_width(bn_report: CompareReport) -> None:
    console = Console(record=True, width=100, color_system=None)
    render_compare(bn_report, console)
    lines = console.export_text().splitlines()
    table_rule = next(line for line in lines if line.startswith("─"))  # the rule under the header row
    panel_top = next(line for line in lines if line.startswith("╭"))
    assert len(table_rule.rstrip()) == len(panel_top.rstrip()) == 100


# -------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_json_on_the_bundled_example(run_cli: Callable[..., Any]) -> None:
    res = run_cli("compare-modes", "gradprobe.examples:FineTuneNet", "--format", "json", "--repeat", "2")
    assert res.code == 0, res.err
    doc = json.loads(res.out)  # stdout is the document and nothing else: no progress bar there
    assert doc["schema"] == "gradprobe.run.compare/1" and doc["target"] == "gradprobe.examples:FineTuneNet"
    assert [(r["mode"], r["grad_mode"]) for r in doc["rows"]] == SIX
    assert all(r["ok"] for r in doc["rows"])
    found = {f["code"] for f in doc["findings"]}
    assert {"train-no-grad-buffers", "eval-grad-graph", "train-eval-difference"} <= found
    names = {m["name"] for m in doc["training_dependent"]["modules"]}
    assert names == {"backbone.block1.1", "backbone.block2.1", "dropout"}
    assert "━" not in res.err and "\r" not in res.err  # no progress bar when stderr is not a terminal


@pytest.mark.slow
def test_cli_failing_row_strict_and_markdown_file(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    src = tmp_path / "badmodel.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(6, 3)\n"
        "        self.example_input_array = torch.randn(5, 6)\n\n"
        "    def forward(self, x):\n        print('hello from forward')\n"
        "        with torch.inference_mode():\n            y = x * 2\n        return self.lin(y)\n")
    out = tmp_path / "report.md"
    res = run_cli("compare-modes", f"{src}:Net", "--format", "markdown", "--repeat", "1", "--strict",
                  "-o", str(out))
    assert res.code == 1, res.err  # an error finding with --strict
    assert res.out == "" and "hello from forward" in res.err
    text = out.read_text()
    assert "`mode-failed`" in text and "FAILED" in text
    res = run_cli("compare-modes", f"{src}:Net", "--format", "json", "--repeat", "1",
                  "--modes", "train:grad,eval:no_grad")
    assert res.code == 0  # a failing row is not a failing command
    rows = json.loads(res.out)["rows"]
    assert rows[0]["ok"] is False and rows[1]["ok"] is True
    # when no requested mode runs at all there is nothing to compare: one error line, exit 2
    res = run_cli("compare-modes", f"{src}:Net", "--format", "json", "--repeat", "1", "--modes", "train:grad")
    assert res.code == 2 and res.out == ""
    assert "every mode failed" in res.err and "Traceback" not in res.err


@pytest.mark.slow
def test_cli_catches_dropout_that_ignores_eval(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    src = tmp_path / "evaldrop.py"
    src.write_text("import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n"
                   "class Net(nn.Module):\n"
                   "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(6, 3)\n"
                   "        self.example_input_array = torch.randn(5, 6)\n\n"
                   "    def forward(self, x):\n        return F.dropout(self.lin(x), 0.5, training=True)\n")
    res = run_cli("compare-modes", f"{src}:Net", "--format", "json", "--repeat", "1", "--strict")
    assert res.code == 1, res.err  # an error finding with --strict
    doc = json.loads(res.out)
    assert doc["eval_random_max_abs_diff"] > 0
    assert "eval-output-random" in {f["code"] for f in doc["findings"]}


def test_cli_bad_options_exit_2(cli: Callable[..., Any]) -> None:
    res = cli("compare-modes", "gradprobe.examples:FineTuneNet", "--modes", "train:sometimes")
    assert res.code == 2 and len(res.err_lines) == 1 and "--modes" in res.err and res.out == ""
    res = cli("compare-modes", "gradprobe.examples:FineTuneNet", "--repeat", "0")
    assert res.code == 2 and "--repeat" in res.err
    res = cli("compare-modes", "gradprobe.examples:NoSuchModel")
    assert res.code == 2 and len(res.err_lines) == 1


def _without_times(c: Comparison) -> Comparison:
    return dataclasses.replace(c, rows=tuple(
        dataclasses.replace(r, time_s=None, times_s=(), cpu_times_s=(), backward_time_s=None) for r in c.rows))


def test_the_attribution_inputs_come_from_the_tracked_eval_run() -> None:
    """The first flips' inputs are recorded by the eval+no_grad tracked run: one forward fewer (counted with a
    plain hook), the same Comparison as the attribution's own capturing forward gives."""
    from gradprobe.run.compare import attribution

    def run(early: bool) -> tuple[Comparison, int]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3))
        calls = []
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        of = attribution.EarlyInputs.of
        attribution.EarlyInputs.of = of if early else classmethod(lambda cls, s: None)  # type: ignore[method-assign]
        try:
            c = compare_modes(model, x_in(), repeat=3).comparison
        finally:
            attribution.EarlyInputs.of = of  # type: ignore[method-assign]
        return c, len(calls)

    (early, n_early), (own, n_own) = run(True), run(False)
    assert early.attribution is not None and {e.name for e in early.attribution.modules} == {"1", "2"}
    assert early.attribution.explained is True
    assert _without_times(early) == _without_times(own)
    # 6 tracked + 6 x 3 timed forwards, the check of the flips; the attribution's own capture only without
    assert (n_early, n_own) == (6 + 18 + 1, 6 + 18 + 2)


def test_each_pair_of_outputs_is_compared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval+grad and eval+inference_mode against eval+no_grad are both a row's diff and a grad-mode diff: one
    comparison each, the same figure in both places (a dropout model: train rows differ, eval rows agree)."""
    from gradprobe.run.compare import diffs

    pairs: list[tuple[int, int]] = []
    real = diffs.compare_outputs

    def counted(a: Any, b: Any) -> Any:
        pairs.append((id(a), id(b)))
        return real(a, b)

    monkeypatch.setattr(diffs, "compare_outputs", counted)
    c = compare_modes(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)), x_in(), repeat=2).comparison
    assert len(pairs) == len(set(pairs)) == 6 + 4 - 2
    rows = {r.label: r for r in c.rows}
    for d in c.grad_mode_diffs:
        if d.base == "eval:no_grad":
            assert d.max_abs_diff == rows[d.row].max_abs_diff == 0.0
    assert rows["train:grad"].max_abs_diff > 0
