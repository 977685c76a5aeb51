"""grad-none and friends on hand-made facts (no torch): every missing gradient named, each cause and fix."""

from __future__ import annotations

import subprocess
import sys

from fixtures.run_facts import buffer, facts, module, param, tensor

from gradprobe.facts.run import Finding, GradState, GraphCut, GraphFact
from gradprobe.judges.inspect import CODES, judge_run

NONE = GradState.ABSENT


def grad_none(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.code == "grad-none"]


def one(findings: list[Finding], code: str = "grad-none") -> Finding:
    found = [f for f in findings if f.code == code]
    assert len(found) == 1, found
    return found[0]


def test_judges_and_renderers_import_no_torch() -> None:
    code = ("import sys, gradprobe.judges.inspect, gradprobe.render.inspect.table, gradprobe.render.common; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_missing_parameter_is_named_once() -> None:
    """Root-owned, one-of-a-module, and a whole module: three causes, every parameter in exactly one finding."""
    run = facts(
        [param("lin.weight"), param("lin.bias"), param("unused", NONE, module=""),
         param("block.weight"), param("block.gate", NONE), param("aux.weight", NONE), param("aux.bias", NONE)],
        [module("lin", params=("lin.weight", "lin.bias")), module("block", "Gated"),
         module("aux", calls=0, output_grad_fn=None)],
        parameters_read=frozenset({"lin.weight", "lin.bias", "block.weight"}),
    )
    found = grad_none(judge_run(run))
    assert {f.subject for f in found} == {"unused", "block.gate", "aux"}
    assert all(f.severity == "error" for f in found)
    by = {f.subject: f for f in found}
    assert "the model ran, but its forward never reads it" in by["unused"].message
    assert "'block' ran" in by["block.gate"].message
    assert "'aux' was never called" in by["aux"].message and "2 parameter(s) of module 'aux'" in by["aux"].message


def test_frozen_parameters_without_gradient_are_fine() -> None:
    run = facts([param("a.weight"), param("b.weight", NONE, requires_grad=False)],
                [module("a"), module("b")], parameters_read=frozenset({"a.weight"}))
    assert not grad_none(judge_run(run))


def test_cut_downstream_names_the_cut_not_the_upstream_module() -> None:
    cut = GraphCut("mid", 0, "no_grad", "linear", ("enc.weight", "mid.weight"))
    run = facts([param("enc.weight", NONE), param("mid.weight", NONE), param("head.weight")],
                [module("enc"), module("mid"), module("head")], graph_cuts=(cut,),
                parameters_read=frozenset({"enc.weight", "mid.weight", "head.weight"}))
    by = {f.subject: f for f in grad_none(judge_run(run))}
    assert "downstream, in 'mid'" in by["enc"].message and ".detach()" not in by["enc"].message
    assert "used under torch.no_grad()" in by["mid"].message


def test_detach_data_inference_and_non_differentiable_cuts() -> None:
    cases = {
        "detach": ".detach() in 'wrap'",
        "data": ".data in 'wrap'",
        "inference_mode": "torch.inference_mode()",
        "non_differentiable": "'argmax' in 'wrap'",
    }
    for how, words in cases.items():
        cut = GraphCut("wrap", 0, how, "argmax" if how == "non_differentiable" else how, ("enc.weight",))
        run = facts([param("enc.weight", NONE), param("wrap.head.weight")],
                    [module("wrap"), module("enc"), module("wrap.head")], graph_cuts=(cut,),
                    parameters_read=frozenset({"enc.weight", "wrap.head.weight"}))
        assert words in one(judge_run(run)).message, how


def test_deliberate_cuts_come_before_a_non_differentiable_op() -> None:
    cuts = (GraphCut("", 0, "non_differentiable", "argmax", ("enc.weight",)),
            GraphCut("mid", 0, "no_grad", "linear", ("enc.weight",)))
    run = facts([param("enc.weight", NONE), param("mid.weight", requires_grad=False)],
                [module("enc"), module("mid")], graph_cuts=cuts, parameters_read=frozenset({"enc.weight"}))
    msg = one(judge_run(run)).message
    assert "torch.no_grad()" in msg and "argmax" not in msg


def test_reentrant_checkpoint() -> None:
    cuts = (GraphCut("block.0", 0, "reentrant_checkpoint", "linear", ("block.0.weight",)),
            GraphCut("block.2", 0, "reentrant_checkpoint", "linear", ("block.2.weight",)))
    run = facts([param("block.0.weight", NONE), param("block.2.weight", NONE), param("head.weight")],
                [module("block", "Sequential"), module("block.0"), module("block.2"), module("head")],
                graph_cuts=cuts, parameters_read=frozenset({"block.0.weight", "block.2.weight", "head.weight"}))
    f = one(judge_run(run))
    assert f.subject == "block" and "use_reentrant=False" in f.hint


def test_backward_returned_none() -> None:
    run = facts([param("w", NONE, module=""), param("lin.weight")], [module("lin")],
                graph=GraphFact(3, 2, frozenset({"w", "lin.weight"})), parameters_read=frozenset({"w", "lin.weight"}))
    f = one(judge_run(run))
    assert f.subject == "w" and "autograd.Function" in f.message


def test_container_and_routing() -> None:
    layers = [module("layers", "ModuleList", calls=0)] + [
        module(f"layers.{i}", calls=1 if i < 2 else 0) for i in range(4)]
    params = [param(f"layers.{i}.weight", GradState.NONZERO if i < 2 else NONE) for i in range(4)]
    run = facts(params, layers, parameters_read=frozenset({"layers.0.weight", "layers.1.weight"}))
    f = one(judge_run(run))
    assert f.subject == "layers" and "'layers.2'" in f.message and "'layers.3'" in f.message
    assert "2 of the 4 Linear modules in 'layers' ran" in f.message and "--inputs" in f.hint


def test_a_container_nothing_calls() -> None:
    mods = [module("main"), module("extra", "ModuleList", calls=0), module("extra.0", calls=0),
            module("extra.1", calls=0)]
    run = facts([param("main.weight"), param("extra.0.weight", NONE), param("extra.1.weight", NONE)], mods,
                parameters_read=frozenset({"main.weight"}))
    f = one(judge_run(run))
    assert f.subject == "extra" and "container" in f.message and "model.extra.requires_grad_(False)" in f.hint


def test_torchscript_cannot_be_told() -> None:
    mods = [module("", "RecursiveScriptModule", params=()), module("main", "RecursiveScriptModule", calls=0),
            module("aux", "RecursiveScriptModule", calls=0)]
    run = facts([param("main.weight"), param("aux.weight", NONE)], mods, parameters_read=frozenset())
    f = one(judge_run(run))
    assert "cannot be told" in f.message and "never called" not in f.message


def test_flag_flipped_in_forward() -> None:
    run = facts([param("enc.weight", NONE), param("head.weight")], [module("enc"), module("head")],
                requires_grad_changed=("enc.weight",), parameters_read=frozenset({"enc.weight", "head.weight"}))
    findings = judge_run(run)
    assert "requires_grad_(False)" in one(findings).message
    assert "requires_grad=True" in one(findings, "flags-changed-in-forward").message


def test_training_flag_flipped_in_forward() -> None:
    run = facts([param("head.weight")], [module("drop", "Dropout"), module("head")], training_changed=("drop",))
    f = one(judge_run(run), "flags-changed-in-forward")
    assert f.subject == "drop" and "from train to eval mode" in f.message


def test_without_cut_facts_the_cause_is_hedged() -> None:
    """Facts from a run without the cut tracker (parameters_read None): the module-level facts decide."""
    run = facts([param("backbone.weight", NONE), param("head.weight")],
                [module("backbone", output_grad_fn=False), module("head")])
    f = one(judge_run(run))
    assert "no grad_fn" in f.message and "(or detaches inside it)" in f.message


def test_unknown_cause_is_said_to_be_unknown() -> None:
    run = facts([param("enc.weight", NONE), param("head.weight")], [module("enc"), module("head")],
                parameters_read=frozenset({"enc.weight", "head.weight"}))
    assert "cannot be told" in one(judge_run(run)).message


def test_no_backward_possible_names_the_cut() -> None:
    cut = GraphCut("", 0, "detach", "detach", ("enc.weight",))
    run = facts([param("enc.weight", None)], [module("enc")], backward=False, graph_cuts=(cut,),
                backward_skipped_reason="no output requires grad", parameters_read=frozenset({"enc.weight"}),
                outputs=(tensor("", requires_grad=False, grad_fn=None),))
    f = one(judge_run(run))
    assert "can receive no gradient" in f.message and ".detach()" in f.message


def test_lora_zero_gradient_is_expected() -> None:
    a = param("proj.lora_a.weight", GradState.ZERO, shape=(2, 8))
    b = param("proj.lora_b.weight", shape=(8, 2))
    run = facts([a, b], [module("proj"), module("proj.lora_a"), module("proj.lora_b")],
                zero_valued_parameters=("proj.lora_b.weight",))
    f = one(judge_run(run), "grad-zero")
    assert f.severity == "info" and "as expected" in f.message and "dead ReLU" not in f.hint


def test_zero_gradient_next_to_a_zero_bias_is_still_a_warning() -> None:
    w = param("lin.weight", GradState.ZERO, shape=(8, 8))
    run = facts([w, param("lin.bias")], [module("lin")], zero_valued_parameters=("lin.bias",))
    assert one(judge_run(run), "grad-zero").severity == "warning"


def test_buffer_drift_batchnorm_versus_other_buffers() -> None:
    mods = [module("backbone", "Sequential"), module("backbone.0", "BatchNorm2d"),
            module("backbone.1", "Linear"), module("head")]
    params = [param("backbone.0.weight", requires_grad=False), param("backbone.1.weight", requires_grad=False),
              param("head.weight")]
    run = facts(params, mods, buffers=(buffer("backbone.0.running_mean"), buffer("backbone.1.weight_u")))
    findings = judge_run(run)
    bn = one(findings, "frozen-bn-drift")
    other = one(findings, "frozen-buffer-drift")
    assert "running_mean" not in other.message and "weight_u" in other.message
    assert "running statistics" in bn.message and "running statistics" not in other.message
    assert "BatchNorm" in bn.hint and "frozen BatchNorm" not in other.hint


def test_every_code_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Findings"):]
    section = section[:section.index("\n### ", 1)]
    for code in CODES:
        assert f"`{code}`" in section, code
