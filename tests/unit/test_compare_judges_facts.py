"""compare-modes judges on hand-made facts (no torch): tolerance, kernels, the nested fast path, failed replays."""

from __future__ import annotations

from typing import Any

from gradprobe.facts.compare import (
    Attribution,
    Comparison,
    GradModeDiff,
    Mismatch,
    ModeRow,
    ModuleEffect,
    NestedFastPath,
    ReplayFailure,
)
from gradprobe.judges.compare import attribution_note, compare_report, mismatch_text


def row(mode: str, grad_mode: str, **kw: Any) -> ModeRow:
    base = {"output_requires_grad": grad_mode == "grad", "graph_nodes": 0, "saved_for_backward_bytes": 0,
            "forward_peak_bytes": 100, "time_s": 0.01, "max_abs_diff": 0.0, "repeat_max_abs_diff": 0.0,
            "within_tolerance": True, "tolerance": 1e-5}
    return ModeRow(mode, grad_mode, ok=True, **{**base, **kw})


def comparison(rows: tuple[ModeRow, ...], **kw: Any) -> Comparison:
    return Comparison("t", "2.x", "cpu", 0, 1, False, rows, "eval:no_grad", **kw)


def text(c: Comparison) -> str:
    report = compare_report(c)
    return " ".join([*report.verdict, *(f.message for f in report.findings)])


def test_grad_mode_rounding_is_named_not_warned() -> None:
    d = GradModeDiff("eval:grad", "eval:no_grad", 9e-7, within_tolerance=True, tolerance=4e-5,
                     ops_only_row=("_safe_softmax", "bmm"),
                     ops_only_base=("_scaled_dot_product_flash_attention_for_cpu",))
    report = compare_report(comparison((row("eval", "grad", max_abs_diff=9e-7), row("eval", "no_grad")),
                                       grad_mode_diffs=(d,)))
    assert "grad-mode-changes-output" not in {f.code for f in report.findings}
    line = next(v for v in report.verdict if "within float rounding" in v)
    assert "9e-07" in line and "4e-05" in line and "aten._safe_softmax" in line
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in line


def test_grad_mode_difference_past_tolerance_warns_with_the_ops() -> None:
    d = GradModeDiff("eval:grad", "eval:no_grad", 0.3, within_tolerance=False, tolerance=4e-5, ops_only_row=("mul",))
    report = compare_report(comparison((row("eval", "grad", max_abs_diff=0.3), row("eval", "no_grad")),
                                       grad_mode_diffs=(d,)))
    f = next(f for f in report.findings if f.code == "grad-mode-changes-output")
    assert f.severity == "warning" and "0.3" in f.message and "only eval:grad ran aten.mul" in f.message


def test_padded_positions_differ_by_design() -> None:
    fast = NestedFastPath(("enc",), ("eval:no_grad", "eval:inference_mode"), 2, 18, True)
    d = GradModeDiff("eval:grad", "eval:no_grad", 2.1, within_tolerance=False, tolerance=3e-5,
                     unpadded_max_abs_diff=0.0, unpadded_within_tolerance=True)
    rows = (row("train", "no_grad", max_abs_diff=2.1, within_tolerance=False, unpadded_max_abs_diff=0.0,
                unpadded_within_tolerance=True),
            row("eval", "grad", max_abs_diff=2.1, within_tolerance=False, unpadded_max_abs_diff=0.0,
                unpadded_within_tolerance=True),
            row("eval", "no_grad"))
    report = compare_report(comparison(rows, grad_mode_diffs=(d,), nested_fast_path=fast,
                                       attribution=Attribution((), ("enc",), True, fast_path_off=True)))
    assert not {f.code for f in report.findings} & {"grad-mode-changes-output", "train-eval-unexplained",
                                                    "train-eval-difference"}
    assert sum("nested-tensor fast path" in v for v in report.verdict) == 1
    assert any(v.startswith("Train and eval outputs are identical on the non-padded positions") for v in report.verdict)
    assert any("only at padded positions" in v for v in report.verdict)


def test_a_failed_replay_is_gradprobes_limit() -> None:
    failure = ReplayFailure("replay", "child", "RuntimeError", "child needs its parent")
    a = Attribution((), ("child",), False, failures=(failure,))
    c = comparison((row("train", "no_grad", max_abs_diff=0.5, within_tolerance=False), row("eval", "no_grad")),
                   attribution=a)
    codes = {f.code: f for f in compare_report(c).findings}
    assert "train-eval-unexplained" not in codes
    assert codes["attribution-incomplete"].severity == "info"
    assert "replaying 'child' alone raised RuntimeError" in codes["attribution-incomplete"].message
    assert "needs its parent" not in text(c)
    assert attribution_note(a) == "gradprobe could not do 1 step(s) of its replay: replaying 'child' alone raised " \
                                  "RuntimeError"


def test_every_replay_ran_and_still_unexplained_is_a_warning() -> None:
    a = Attribution((ModuleEffect("drop", "Dropout", 0.4, within_tolerance=False),), ("drop",), False)
    c = comparison((row("train", "no_grad", max_abs_diff=0.5, within_tolerance=False), row("eval", "no_grad")),
                   attribution=a)
    assert [f.code for f in compare_report(c).findings] == ["train-eval-unexplained", "train-eval-difference"]


def test_kernel_choice_of_a_module_within_rounding() -> None:
    effect = ModuleEffect("attn", "MultiheadAttention", 1.2e-7, within_tolerance=True,
                          ops_only_eval=("_native_multi_head_attention",), ops_only_train=("addmm",))
    c = comparison((row("train", "no_grad", max_abs_diff=1.2e-7), row("eval", "no_grad")),
                   attribution=Attribution((effect,), ("attn",), True))
    report = compare_report(c)
    assert "train-eval-difference" not in {f.code for f in report.findings}
    line = next(v for v in report.verdict if v.startswith("Train and eval outputs differ"))
    assert "within float rounding" in line and "attn (MultiheadAttention) runs aten._native_multi_head_attention " \
                                              "in eval and aten.addmm in train" in line


def test_mismatch_words() -> None:
    assert mismatch_text(Mismatch("structure", counts=(3, 2))) == "the outputs differ in structure (3 vs 2 tensors)"
    assert mismatch_text(Mismatch("shape", "output[0]", shapes=((2, 3), (2,)), dtypes=("float32", "float32"))) \
        == "'output[0]' is 2×3 float32 in one run and 2 float32 in the other"
    assert mismatch_text(None) is None
