"""``judges.compare`` on hand-made rows: every finding and verdict sentence with its arithmetic, without torch.

Rows default to: ran, outputs equal to the eval:no_grad reference, deterministic, a 1000 B forward peak,
10 ms (``tests/fixtures/facts.py``).  Percentages and byte counts below are worked out by hand.
"""

from __future__ import annotations

from gradprobe.facts.compare import Attribution, GradModeDiff, ModuleEffect
from gradprobe.facts.run import Finding
from gradprobe.judges.compare import CODES, compare_verdict, duration, judge_compare
from tests.fixtures.facts import comparison, mode_row


def only(findings: list[Finding], code: str) -> Finding:
    [found] = [f for f in findings if f.code == code]
    return found


def test_durations_keep_three_significant_digits() -> None:
    assert [duration(t) for t in (None, 0.0005, 0.0123, 0.5, 1.5, 12.345)] == [
        "-", "500 µs", "12.3 ms", "500 ms", "1.5 s", "12.3 s"]


def test_eval_grad_graph_with_its_saved_bytes_and_extra_peak() -> None:
    c = comparison(mode_row("eval", "grad", graph_nodes=7, saved_for_backward_bytes=600, forward_peak_bytes=1000),
                   mode_row("eval", "no_grad", forward_peak_bytes=250))
    f = only(judge_compare(c), "eval-grad-graph")
    # 1000 - 250 = 750 B more, 750 / 250 = 300 % more
    assert f.message == ("eval + grad builds an autograd graph of 7 nodes that an evaluation never uses: it keeps "
                         "600 B saved for backward and raises the forward peak by 750 B (1000 B vs 250 B with "
                         "no_grad, 300% more)")
    assert (f.severity, f.subject) == ("info", "eval:grad")


def test_savings_within_timing_noise_are_not_called_faster() -> None:
    c = comparison(mode_row("eval", "grad", saved_for_backward_bytes=600, time_s=0.011, times_s=(0.010, 0.012)),
                   mode_row("eval", "no_grad", forward_peak_bytes=250, time_s=0.010, times_s=(0.009, 0.011)))
    assert compare_verdict(c)[0] == (
        "Eval mode against grad (peak 1000 B, 600 B saved for backward, 11 ms): no_grad has a peak 750 B lower (75%) "
        "and runs within timing noise of it (10 ms). Without grad nothing is kept for backward (grad keeps 600 B).")


def test_wall_clock_apart_but_cpu_time_alike_is_timing_noise() -> None:
    """A load burst during one row's back-to-back runs (seen: grad 67.8 ms, no_grad 492 us on the wall clock while
    plain PyTorch measured 460 vs 410 us) moves its wall clock, not its CPU time: no speed claim then."""
    c = comparison(mode_row("eval", "grad", time_s=0.0678, times_s=(0.0671, 0.0678, 0.0690),
                            cpu_times_s=(0.00046, 0.00047, 0.00049)),
                   mode_row("eval", "no_grad", time_s=0.000492, times_s=(0.000480, 0.000492, 0.000500),
                            cpu_times_s=(0.00041, 0.00047, 0.00052)))
    line = compare_verdict(c)[0]
    assert "runs within timing noise of it" in line and "faster" not in line
    # CPU times apart as well: the difference is the mode's, said as measured
    apart = comparison(mode_row("eval", "grad", time_s=0.020, times_s=(0.019, 0.020, 0.021),
                                cpu_times_s=(0.019, 0.020, 0.021)),
                       mode_row("eval", "no_grad", time_s=0.015, times_s=(0.014, 0.015, 0.016),
                                cpu_times_s=(0.014, 0.015, 0.016)))
    assert "runs 25% faster (15 ms)" in compare_verdict(apart)[0]  # (20 - 15) / 20


def test_a_slower_mode_and_a_higher_peak_are_said_as_such() -> None:
    c = comparison(mode_row("train", "grad", forward_peak_bytes=2048, time_s=0.020),
                   mode_row("train", "no_grad", forward_peak_bytes=3072, time_s=0.025))
    # 3072 - 2048 = 1 KiB higher, 1024 / 2048 = 50 %; 5 ms / 20 ms = 25 % slower
    assert compare_verdict(c)[0] == ("Train mode against grad (peak 2.0 KiB, 0 B saved for backward, 20 ms): "
                                     "no_grad has a peak 1.0 KiB higher (50%) and runs 25% slower (25 ms).")


def test_failed_rows_are_errors_with_the_right_hint_and_counted_in_the_verdict() -> None:
    c = comparison(mode_row("train", "inference_mode", ok=False, error_cause="inference-tensor",
                            error="RuntimeError: Inference tensors cannot be saved for backward"),
                   mode_row("eval", "grad", ok=False, error="ValueError: boom"),
                   mode_row("eval", "no_grad"))
    failed = [f for f in judge_compare(c) if f.code == "mode-failed"]
    assert [(f.severity, f.subject) for f in failed] == [("error", "train:inference_mode"), ("error", "eval:grad")]
    assert failed[0].message == ("the forward failed under train:inference_mode: RuntimeError: Inference tensors "
                                 "cannot be saved for backward")
    assert "inference tensors reached autograd" in failed[0].hint and "torch.no_grad()" in failed[0].hint
    assert failed[1].hint == "run 'gradprobe inspect TARGET --mode eval --grad grad --debug' for the traceback"
    assert compare_verdict(c)[0] == ("2 of 3 combination(s) failed: train:inference_mode, eval:grad (the errors "
                                     "are in the findings); every other row ran.")


def test_inference_outputs_outside_inference_mode_are_an_error() -> None:
    c = comparison(mode_row("eval", "no_grad", is_inference=True), mode_row("eval", "inference_mode",
                                                                             is_inference=True))
    [f] = [f for f in judge_compare(c) if f.code == "inference-output"]
    assert (f.severity, f.subject) == ("error", "eval:no_grad")


def test_buffers_changed_without_grad_in_train_mode() -> None:
    stats = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    c = comparison(mode_row("train", "grad", buffers_changed=stats),
                   mode_row("train", "no_grad", buffers_changed=stats),
                   mode_row("train", "inference_mode", buffers_changed=stats[:2]), mode_row("eval", "no_grad"),
                   buffer_owners=tuple((b, "BatchNorm1d", True) for b in stats))
    f = only(judge_compare(c), "train-no-grad-buffers")
    assert (f.severity, f.subject) == ("warning", "bn.running_mean")
    assert f.message.startswith("in train mode the forward changes 3 buffer(s) even under no_grad and "
                                "inference_mode: bn.running_mean, bn.running_var, bn.num_batches_tracked;")
    assert ("In train mode the forward changes 3 buffer(s) even under no_grad and inference_mode: bn.running_mean, "
            "bn.running_var, bn.num_batches_tracked. A validation loop without model.eval() corrupts these "
            "(BatchNorm running statistics).") in compare_verdict(c)


def test_buffers_changed_name_their_owners_not_always_batchnorm() -> None:
    """A custom module's buffers (an EMA) are not BatchNorm statistics: the verdict said so for every buffer."""
    ema = ("norm.ema", "norm.count")
    c = comparison(mode_row("train", "no_grad", buffers_changed=ema), mode_row("eval", "no_grad"),
                   buffer_owners=tuple((b, "EmaNorm", False) for b in ema))
    verdict = " ".join(compare_verdict(c))
    assert "corrupts these (buffers of EmaNorm)." in verdict
    assert "BatchNorm" not in verdict
    unknown = comparison(mode_row("train", "no_grad", buffers_changed=ema), mode_row("eval", "no_grad"))
    assert "A validation loop without model.eval() corrupts these." in " ".join(compare_verdict(unknown))


def test_buffer_sentences_for_train_grad_only_and_for_none() -> None:
    only_grad = comparison(mode_row("train", "grad", buffers_changed=("bn.running_mean",)), mode_row("eval", "no_grad"))
    assert "Only train + grad changes buffers (bn.running_mean); with model.eval() they stay put." \
        in compare_verdict(only_grad)
    assert "train-no-grad-buffers" not in {f.code for f in judge_compare(only_grad)}
    assert "No combination changes a buffer." in compare_verdict(comparison(mode_row("eval", "no_grad")))


def test_nondeterministic_rows() -> None:
    c = comparison(mode_row("train", "grad", repeat_max_abs_diff=0.03), mode_row("eval", "no_grad",
                                                                                repeat_max_abs_diff=0.01))
    f = only(judge_compare(c), "nondeterministic-output")
    assert f.message.startswith("two runs from the same seed and starting state give different outputs under "
                                "train:grad, eval:no_grad (max |diff| 0.03)")
    assert ("Two runs from the same seed and starting state differ under train:grad (max |diff| 0.03), eval:no_grad "
            "(max |diff| 0.01): the forward is nondeterministic.") in compare_verdict(c)
    steady = comparison(mode_row("eval", "no_grad"))
    assert "Two runs from the same seed and starting state give identical outputs in every combination." \
        in compare_verdict(steady)


def test_eval_outputs_that_follow_the_random_state() -> None:
    c = comparison(mode_row("eval", "no_grad"), seed=3, eval_random_max_abs_diff=0.25)
    f = only(judge_compare(c), "eval-output-random")
    assert f.message.startswith("eval outputs change with the random state: the eval:no_grad forward from seed 4 "
                                "differs from the one from seed 3 (max |diff| 0.25);")
    unseeded = comparison(mode_row("eval", "no_grad"), seed=None, eval_random_max_abs_diff=0.25)
    assert "from another random state differs" in only(judge_compare(unseeded), "eval-output-random").message
    # the reference itself is nondeterministic: the RNG cannot be blamed
    noisy = comparison(mode_row("eval", "no_grad", repeat_max_abs_diff=0.1), seed=3, eval_random_max_abs_diff=0.25)
    assert "eval-output-random" not in {f.code for f in judge_compare(noisy)}
    assert any(line.endswith("but two runs from the same seed differ too, so it cannot be pinned on the RNG.")
               for line in compare_verdict(noisy))
    calm = comparison(mode_row("eval", "no_grad"), eval_random_max_abs_diff=0.0)
    assert ("Eval outputs do not depend on the random state: an eval:no_grad forward from another seed gives "
            "identical outputs.") in compare_verdict(calm)


def test_a_train_eval_difference_pinned_on_dropout() -> None:
    a = Attribution((ModuleEffect("drop", "Dropout", 0.4),), ("drop", "bn"), explained=True)
    c = comparison(mode_row("train", "grad", max_abs_diff=0.5), mode_row("train", "no_grad", max_abs_diff=0.5),
                   mode_row("eval", "no_grad"), attribution=a)
    f = only(judge_compare(c), "train-eval-difference")
    assert (f.severity, f.subject) == ("info", "drop")
    # the train row with the reference's grad mode is the one compared
    assert f.message == ("train:no_grad and eval:no_grad outputs differ (up to 0.5) only because of dropout "
                         "(random masks in train mode): drop (Dropout, max |diff| 0.4 on its own output)")
    assert ("Train and eval outputs differ by up to 0.5 (train:no_grad vs eval:no_grad). Flipping one module's "
            "training flag at a time pins it on 1 of 2 tested module(s): drop (Dropout, max |diff| 0.4 on its own "
            "output). Switching only these to train mode reproduces the train output exactly. The difference is "
            "only dropout: it disappears with model.eval().") in compare_verdict(c)


def test_a_batchnorm_difference_and_an_unexplained_one() -> None:
    a = Attribution((ModuleEffect("bn", "BatchNorm1d", 0.2),), ("bn",), explained=False)
    c = comparison(mode_row("train", "no_grad", max_abs_diff=0.3), mode_row("eval", "no_grad"), attribution=a)
    assert [f.code for f in judge_compare(c)] == ["train-eval-unexplained", "train-eval-difference"]
    line = next(s for s in compare_verdict(c) if s.startswith("Train and eval"))
    assert "does not reproduce the train output: something else differs." in line
    assert "BatchNorm uses batch statistics in train mode and running statistics in eval mode." in line


def test_identical_train_and_eval_outputs() -> None:
    c = comparison(mode_row("train", "no_grad"), mode_row("eval", "no_grad"))
    assert ("Train and eval outputs are identical (train:no_grad vs eval:no_grad, max |diff| 0): nothing in this "
            "forward behaves differently in train mode.") in compare_verdict(c)
    assert judge_compare(c) == []


def test_a_grad_mode_that_changes_the_output_unless_the_row_is_nondeterministic() -> None:
    diff = GradModeDiff("eval:inference_mode", "eval:no_grad", 1e-3, within_tolerance=False, tolerance=1e-6)
    c = comparison(mode_row("eval", "no_grad"), mode_row("eval", "inference_mode"), grad_mode_diffs=(diff,))
    f = only(judge_compare(c), "grad-mode-changes-output")
    assert f.message.startswith("eval:inference_mode's output differs from eval:no_grad's (max |diff| 0.001, more "
                                "than float rounding explains) although only the grad mode changed")
    # within float rounding it is no finding
    rounding = GradModeDiff("eval:inference_mode", "eval:no_grad", 1e-7, within_tolerance=True, tolerance=1e-6)
    calm = comparison(mode_row("eval", "no_grad"), mode_row("eval", "inference_mode"), grad_mode_diffs=(rounding,))
    assert "grad-mode-changes-output" not in {f.code for f in judge_compare(calm)}
    noisy = comparison(mode_row("eval", "no_grad"), mode_row("eval", "inference_mode", repeat_max_abs_diff=0.1),
                       grad_mode_diffs=(diff,))
    assert "grad-mode-changes-output" not in {f.code for f in judge_compare(noisy)}


def test_integer_outputs_and_a_failed_backward() -> None:
    c = comparison(mode_row("eval", "grad", int_outputs_equal=False, backward_error="RuntimeError: x"),
                   mode_row("eval", "no_grad", int_outputs_equal=True))
    f = only(judge_compare(c), "integer-output-differs")
    assert (f.severity, f.subject) == ("info", "eval:grad")
    verdict = compare_verdict(c)
    assert "Integer/bool outputs differ from eval:no_grad's under eval:grad." in verdict
    assert "eval:grad: the backward failed (RuntimeError: x)." in verdict


def test_findings_are_sorted_by_severity_and_every_code_is_documented() -> None:
    a = Attribution((ModuleEffect("drop", "Dropout", 0.4),), ("drop",), explained=True)
    c = comparison(mode_row("eval", "grad", graph_nodes=3, saved_for_backward_bytes=8),
                   mode_row("train", "no_grad", max_abs_diff=0.5, buffers_changed=("bn.running_mean",)),
                   mode_row("train", "grad", ok=False, error="boom"), mode_row("eval", "no_grad"),
                   attribution=a, eval_random_max_abs_diff=0.1)
    findings = judge_compare(c)
    order = {"error": 0, "warning": 1, "info": 2}
    assert [order[f.severity] for f in findings] == sorted(order[f.severity] for f in findings)
    assert {f.code for f in findings} == {"mode-failed", "eval-output-random", "train-no-grad-buffers",
                                          "eval-grad-graph", "train-eval-difference"}
    assert {f.code for f in findings} <= CODES.keys()
