"""Gradient-health verdicts (gradprobe.judges.grad_health) on hand-made facts: no torch, no model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fixtures.grad_facts import call, health, param, run_facts

from gradprobe.facts.grad_health import (
    CallGrad,
    DeadUnits,
    GradThresholds,
    NodeGrad,
    NonfiniteOrigin,
    ParamGrad,
    ValueStats,
)
from gradprobe.facts.run import RunFacts
from gradprobe.judges.grad_health import grad_health_findings
from gradprobe.judges.grad_health.dead_units import zero_grad_cause
from gradprobe.judges.grad_health.nonfinite import explain_op, node_hint
from gradprobe.judges.grad_health.scale import scale_profile


def codes(facts: RunFacts) -> list[str]:
    return [f.code for f in grad_health_findings(facts)]


def stats(**kw: Any) -> ValueStats:
    base: dict[str, Any] = dict(dtype="float32", shape=(4,), numel=4, min=-1.0, max=2.0, zeros=0, negatives=1,
                                nan=0, inf=0)
    base.update(kw)
    return ValueStats(**base)


# ------------------------------------------------------------------------------------------------- NaN / Inf


def test_no_grad_health_no_findings() -> None:
    facts = run_facts(health([call("a")]))
    assert codes(replace(facts, grad_health=None)) == []
    assert codes(replace(facts, grad_health=replace(facts.grad_health, measured=False))) == []  # type: ignore[arg-type]


def test_forward_origin_names_module_op_and_cause() -> None:
    origin = NonfiniteOrigin(call=2, op="aten.log.default", inputs=(stats(negatives=3, zeros=1, min=-0.5),),
                             made_nan=3, made_inf=1)
    gh = health([call("enc"), call("enc.log", parent=1, type="ShiftedLog")], forward_origin=origin)
    (finding,) = grad_health_findings(run_facts(gh))
    assert finding.code == "nonfinite-forward" and finding.severity == "error" and finding.subject == "enc.log"
    assert "'enc.log' (ShiftedLog)" in finding.message and "aten.log.default" in finding.message
    assert "3 NaN and 1 Inf" in finding.message and "3 negative and 1 zero of 4" in finding.message
    assert "clamp" in finding.hint


@pytest.mark.parametrize(("origin", "words"), [
    (NonfiniteOrigin(call=0, op="aten.div.Tensor", inputs=(stats(), stats(zeros=2)), made_inf=2),
     "division by zero: 2 of 4 divisor values are 0"),
    (NonfiniteOrigin(call=0, op="aten.div.Scalar", inputs=(stats(),), scalars=(0.0,), made_inf=4),
     "the divisor is the number 0"),
    (NonfiniteOrigin(call=0, op="aten.addmm.default", inputs=(stats(),), dtype="float16", made_inf=8,
                     wide_max_abs=76800.0, wide_finite=True),
     "overflow in float16: recomputed in float64 the result reaches 7.68e+04, above the largest float16 value (65504)"),
    (NonfiniteOrigin(call=0, op="aten.sqrt.default", inputs=(stats(negatives=2),), made_nan=2),
     "sqrt of values outside its domain"),
    (NonfiniteOrigin(call=0, op="aten.exp.default", inputs=(stats(max=100.0, negatives=0),), made_inf=1,
                     wide_finite=False), "exp overflowed: its input reached 100"),
    (NonfiniteOrigin(call=0, op="aten.foo.default", inputs=(stats(),), made_nan=1), "its inputs were finite"),
])
def test_explain_op(origin: NonfiniteOrigin, words: str) -> None:
    why, hint = explain_op(origin)
    assert words in why and hint


def test_forward_origin_without_op_and_model_inputs() -> None:
    unlocated = NonfiniteOrigin(call=1, note="running the call again on a copy of its inputs gave finite values")
    (f,) = grad_health_findings(run_facts(health([call("a", nonfinite=4)], forward_origin=unlocated)))
    assert f.subject == "a" and "not located" in f.message and "gave finite values" in f.message
    inputs = NonfiniteOrigin(call=None, note="the model's inputs held NaN/Inf")
    (f,) = grad_health_findings(run_facts(health([call("a")], forward_origin=inputs)))
    assert f.subject == "(inputs)" and "inputs already held NaN/Inf" in f.message


def test_backward_node_first_in_backward_order() -> None:
    gh = health([call("a", out=float("nan")), call("b", into=float("nan"))],
                backward_nodes=(NodeGrad("SqrtBackward0", 2, rank=3, nonfinite_out=5),
                                NodeGrad("DivBackward0", 1, rank=7, nonfinite_out=2)))
    (f,) = grad_health_findings(run_facts(gh))
    assert f.code == "nonfinite-backward" and f.subject == "b" and "SqrtBackward0" in f.message
    assert "5 NaN/Inf" in f.message and "sqrt" in f.hint


def test_backward_module_when_no_watched_node() -> None:
    """No watched node fired: the first call (backward order) with a finite output gradient and a non-finite
    input gradient; of nested calls, the inner one."""
    gh = health([call("outer", out=2.0, into=float("nan"), backward_rank=1),
                 call("outer.inner", parent=1, out=2.0, into=float("inf"), backward_rank=1),
                 call("first", out=float("nan"), backward_rank=5)])
    (f,) = grad_health_findings(run_facts(gh))
    assert f.subject == "outer.inner" and "gradient at the input of 'outer.inner'" in f.message


def test_backward_from_the_loss() -> None:
    gh = health([call("a", out=float("nan"))], root=False)
    gh = replace(gh, calls=(call("", None, out=float("nan"), backward_rank=0), *gh.calls))
    (f,) = grad_health_findings(run_facts(gh, loss=float("nan")))
    assert f.subject == "(loss)" and "comes from the loss" in f.message


def test_node_hint_known_and_custom() -> None:
    assert "sqrt" in node_hint("SqrtBackward0") and "norm" in node_hint("LinalgVectorNormBackward0")
    assert "custom autograd.Function" in node_hint("MyFnBackward")


# ---------------------------------------------------------------------------------------- vanishing / exploding


def chain(rms: list[float], numel: int = 100) -> list[CallGrad]:
    """Blocks b0..bn with the given gradient RMS at their outputs (forward order)."""
    return [call(f"b{i}", out=r * numel ** 0.5, numel=numel) for i, r in enumerate(rms)]


def test_vanishing_names_the_biggest_step() -> None:
    gh = health(chain([1e-6, 1e-5, 1e-1, 1.0]))
    profile = scale_profile(gh)
    assert profile is not None and profile.ratio == pytest.approx(1e-6)
    assert gh.calls[profile.worst].module == "b2"  # 1e-1 -> 1e-5: the largest drop
    (f,) = grad_health_findings(run_facts(gh))
    assert f.code == "grad-vanishing" and f.subject == "b2" and "falls by a factor of 1e+06" in f.message
    assert "67% of the total" in f.message and "threshold 1000" in f.message


def test_exploding_and_threshold() -> None:
    gh = health(chain([1e4, 1e2, 10.0, 1.0]))
    assert codes(run_facts(gh)) == ["grad-exploding"]
    assert codes(run_facts(replace(gh, thresholds=GradThresholds(factor=1e5)))) == []
    assert codes(run_facts(health(chain([1.0, 2.0, 0.5, 1.0])))) == []


def test_scale_uses_input_gradient_of_the_first_block_and_needs_three_blocks() -> None:
    blocks = chain([1.0, 1.0, 1.0])
    blocks[0] = replace(blocks[0], grad_in_norm=1e-5 * 10, grad_in_numel=100)
    profile = scale_profile(health(blocks))
    assert profile is not None and profile.ratio == pytest.approx(1e-5) and profile.worst == 1
    assert scale_profile(health(chain([1e-9, 1.0]))) is None


# ------------------------------------------------------------------------------------------------ fp16 underflow


def test_fp16_underflow_on_leaf_calls() -> None:
    half = dict(grad_out_dtype="float16")
    gh = health([call("l0", grad_out_zeros=50, grad_out_subnormal=30, **half),
                 call("l1", grad_out_zeros=0, grad_out_subnormal=0, **half)])
    (f,) = grad_health_findings(run_facts(gh))
    assert f.code == "fp16-underflow" and f.subject == "l0" and "30%" in f.message
    assert "exact zeros rise from 0% of the gradient at 'l1' (Linear) to 50% at 'l0' (Linear)" in f.message
    assert "GradScaler" in f.hint
    calm = health([call("l0", grad_out_zeros=0, grad_out_subnormal=0, **half)])
    assert codes(run_facts(calm)) == []
    flushed = health([call("l0", grad_out_zeros=100, grad_out_subnormal=0, **half)])
    assert "all zeros" in grad_health_findings(run_facts(flushed))[0].message


# ---------------------------------------------------------------------------------------------------- dead units


def test_dead_units_with_rows_and_columns() -> None:
    params = (param("fc1.weight", "fc1", (32, 16)), param("fc1.bias", "fc1", (32,)),
              param("fc2.weight", "fc2", (4, 32)))
    grads = (ParamGrad("fc1.weight", 512, 1.0, 1.0, 128, 0, 0, zero_rows=8, rows=32),
             ParamGrad("fc1.bias", 32, 1.0, 1.0, 8, 0, 0, zero_rows=8, rows=32),
             ParamGrad("fc2.weight", 128, 1.0, 1.0, 32, 0, 0, zero_cols=8, cols=32))
    relu = call("act", type="ReLU", inputs_from=(1,), dead=DeadUnits(32, 8, -1, 64, tuple(range(8))))
    gh = health([call("fc1"), relu, call("fc2", inputs_from=(2,))], parameters=grads)
    facts = run_facts(gh, params)
    (f,) = grad_health_findings(facts)
    assert f.code == "dead-units" and f.severity == "warning" and f.subject == "act"
    assert "8 of 32 units of 'act' (ReLU)" in f.message and "'fc1.weight' has 8 of 32 gradient rows" in f.message
    assert "'fc1.bias' has 8 of 32 gradient entries" in f.message
    assert "'fc2.weight' has 8 of 32 gradient columns" in f.message and "'fc1'" in f.hint
    assert zero_grad_cause(facts, "fc1.weight") == "dead units"
    few = replace(gh, calls=tuple(replace(c, dead=DeadUnits(32, 8, -1, 4)) if c.module == "act" else c
                                  for c in gh.calls))
    (f,) = grad_health_findings(run_facts(few, params))
    assert f.severity == "info" and "does not prove dead" in f.message
    one = replace(gh, calls=tuple(replace(c, dead=DeadUnits(1024, 1, -1, 64)) if c.module == "act" else c
                                  for c in gh.calls))
    (f,) = grad_health_findings(run_facts(one, params))
    assert f.severity == "info"  # 1 of 1024 (below GradThresholds.dead_share): worth knowing, not a warning


def test_zero_partner_is_not_dead_units() -> None:
    params = (param("ad.lora_A", "ad", (4, 16)), param("ad.lora_B", "ad", (32, 4)))
    grads = (ParamGrad("ad.lora_A", 64, 0.5, 0.0, 64, 0, 0), ParamGrad("ad.lora_B", 128, 0.0, 1.0, 0, 0, 0))
    facts = replace(run_facts(health([call("ad")], parameters=grads), params), zero_valued_parameters=("ad.lora_B",))
    assert zero_grad_cause(facts, "ad.lora_A") == "zero partner"  # the rule of judges.gradients (grad-zero)
    assert zero_grad_cause(facts, "ad.lora_B") is None
    assert codes(facts) == []
