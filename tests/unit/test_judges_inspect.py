"""``judges.inspect.judge_run`` on hand-made facts: each finding, its subject, counts and fix, without torch."""

from __future__ import annotations

from gradprobe.facts.run import Finding
from gradprobe.judges.inspect import CODES, judge_run
from tests.fixtures.facts import buffer, module, modules_for, param, run_facts, tensor

BACKBONE = [param("backbone.0.weight", 40, grad="none"), param("backbone.0.bias", 8, grad="none"),
            param("backbone.2.weight", 64, grad="none")]
HEAD = [param("head.weight", 16), param("head.bias", 2)]


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Finding], code: str) -> Finding:
    [found] = [f for f in findings if f.code == code]
    return found


def test_a_clean_run_has_no_finding() -> None:
    assert judge_run(run_facts([*HEAD, param("backbone.0.weight", 40)])) == []


def test_cut_off_parameters_group_under_the_outermost_module_with_the_no_grad_cause() -> None:
    params = [*BACKBONE, *HEAD]
    # module-level facts only (no cut-tracker facts): the cause is read off each owner's outputs
    off = {"output_grad_fn": False}
    facts = run_facts(params, modules=modules_for(params, backbone={**off, "type": "Sequential"},
                                                  **{"backbone.0": off, "backbone.2": off}))
    f = only(judge_run(facts), "grad-none")
    assert (f.severity, f.subject) == ("error", "backbone")
    assert f.message.startswith("3 parameter(s) of module 'backbone' require grad but received no gradient: ")
    assert "has no grad_fn: forward runs it under torch.no_grad() (or detaches inside it)" in f.message
    assert "model.backbone.requires_grad_(False)" in f.hint and "instead of no_grad in forward" in f.hint


def test_a_module_never_called_is_named_as_the_cause() -> None:
    params = [*HEAD, param("aux.weight", 12, grad="none"), param("aux.bias", 3, grad="none")]
    facts = run_facts(params, modules=modules_for(params, aux={"calls": 0}))
    f = only(judge_run(facts), "grad-none")
    assert f.subject == "aux" and f.message.startswith("2 parameter(s) of module 'aux'")
    assert "'aux' was never called in forward" in f.message
    assert "find_unused_parameters=True" in f.hint


def test_a_graph_the_loss_does_not_reach_is_a_detach() -> None:
    params = [*BACKBONE, *HEAD]
    on = {"output_grad_fn": True}
    facts = run_facts(params, modules=modules_for(params, backbone=on, **{"backbone.0": on, "backbone.2": on}))
    f = only(judge_run(facts), "grad-none")
    assert f.subject == "backbone" and "built a graph, but the loss does not reach it" in f.message
    assert "remove the .detach()/.data" in f.hint


def test_frozen_parameters_without_gradient_are_not_cut_off() -> None:
    frozen = [param(p.name, p.numel, requires_grad=False, grad="none") for p in BACKBONE]
    assert "grad-none" not in codes(judge_run(run_facts([*frozen, *HEAD])))


def test_only_part_of_a_module_cut_off_names_the_submodule() -> None:
    params = [param("backbone.0.weight", 40), param("backbone.2.weight", 64, grad="none"), *HEAD]
    f = only(judge_run(run_facts(params)), "grad-none")
    assert f.subject == "backbone.2" and f.message.startswith("1 parameter(s) of module 'backbone.2'")


def test_every_exactly_zero_gradient_is_a_warning_of_its_own() -> None:
    params = [param("gate.weight", 9, grad="zero"), param("gate.bias", 3, grad="zero"), *HEAD]
    zero = [f for f in judge_run(run_facts(params)) if f.code == "grad-zero"]
    assert [(f.severity, f.subject) for f in zero] == [("warning", "gate.weight"), ("warning", "gate.bias")]
    assert zero[0].message == "parameter 'gate.weight' received a gradient that is exactly zero"


def test_requires_grad_attribute_counts_what_still_trains() -> None:
    params = [*[param(p.name, p.numel) for p in BACKBONE], *HEAD]
    facts = run_facts(params, modules=modules_for(params, backbone={"requires_grad_attr": False}))
    f = only(judge_run(facts), "requires-grad-attr")
    assert (f.severity, f.subject) == ("error", "backbone")
    assert "plain attribute requires_grad=False, which freezes nothing: 3 of its 3 parameter(s) still require grad" \
        in f.message
    assert f.hint == "call model.backbone.requires_grad_(False)"


def test_frozen_batchnorm_drift_is_one_finding_per_outermost_frozen_module() -> None:
    params = [param("backbone.0.weight", 40, requires_grad=False, grad="none"),
              param("backbone.1.weight", 8, requires_grad=False, grad="none"),
              param("backbone.4.weight", 8, requires_grad=False, grad="none"), *HEAD]
    buffers = [buffer("backbone.1.running_mean"), buffer("backbone.1.running_var"),
               buffer("backbone.1.num_batches_tracked", dtype="int64"), buffer("backbone.4.running_mean"),
               buffer("head_bn.running_mean", changed=False)]
    bn = {"type": "BatchNorm1d"}
    facts = run_facts(params, buffers=buffers, modules=modules_for(params, **{"backbone.1": bn, "backbone.4": bn}))
    f = only(judge_run(facts), "frozen-bn-drift")
    assert (f.severity, f.subject) == ("warning", "backbone")
    assert f.message.startswith("4 buffer(s) of 2 module(s) inside frozen module 'backbone' changed in the forward "
                                "(backbone.1, backbone.4)")
    assert "call model.backbone.eval()" in f.hint


def test_batchnorm_that_trains_may_update_its_statistics() -> None:
    params = [param("bn.weight", 8), param("bn.bias", 8), *HEAD]
    facts = run_facts(params, buffers=[buffer("bn.running_mean")],
                      modules=modules_for(params, bn={"type": "BatchNorm1d"}))
    assert "frozen-bn-drift" not in codes(judge_run(facts))


def test_other_buffers_drifting_in_a_frozen_module_are_told_apart_from_batchnorm() -> None:
    params = [param("backbone.0.weight", 40, requires_grad=False, grad="none"), *HEAD]
    facts = run_facts(params, buffers=[buffer("backbone.0.weight_u")])  # a spectral-norm vector of a Linear
    f = only(judge_run(facts), "frozen-buffer-drift")
    assert (f.severity, f.subject) == ("warning", "backbone")
    assert f.message.startswith("1 buffer(s) of 1 module(s) inside frozen module 'backbone' changed in the forward "
                                "(backbone.0.weight_u): these are not BatchNorm statistics (Linear)")
    assert "frozen-bn-drift" not in codes(judge_run(facts))


def test_dropout_in_train_mode_under_no_grad() -> None:
    params = HEAD
    mods = (*modules_for(params), module("drop", "Dropout"), module("bn", "BatchNorm1d"),
            module("idle", "Dropout", calls=0))
    facts = run_facts(params, modules=mods, grad_mode="no_grad", backward=False,
                      backward_skipped_reason="grad mode is no_grad", outputs=[tensor(requires_grad=False)])
    f = only(judge_run(facts), "train-mode-no-grad")
    assert (f.severity, f.subject) == ("warning", "drop")
    assert f.message.startswith("2 Dropout/BatchNorm module(s) ran in train mode under no_grad (e.g. 'drop', Dropout)")
    # the same run in eval mode is what the fix asks for
    assert "train-mode-no-grad" not in codes(judge_run(run_facts(params, modules=mods, mode="eval",
                                                                 grad_mode="no_grad", backward=False)))


def test_inference_outputs_are_an_error_in_grad_mode_and_info_under_inference_mode() -> None:
    outs = [tensor("output[0]", is_inference=True, requires_grad=False), tensor("output[1]", is_inference=True,
                                                                                requires_grad=False)]
    err = only(judge_run(run_facts(HEAD, outputs=outs, backward=False, backward_skipped_reason="x")),
               "inference-output")
    assert (err.severity, err.subject) == ("error", "output[0]")
    assert "output 'output[0]' is an inference tensor although the forward ran with grad" in err.message
    info = only(judge_run(run_facts(HEAD, outputs=outs, grad_mode="inference_mode", backward=False,
                                    backward_skipped_reason="x")), "inference-output")
    assert info.severity == "info" and info.message.startswith("2 output(s) are inference tensors")


def test_each_nonfinite_output_path_is_an_error() -> None:
    found = [f for f in judge_run(run_facts(HEAD, nonfinite_outputs=["output[1]", "output.logits"]))
             if f.code == "nonfinite-output"]
    assert [(f.subject, f.message) for f in found] == [
        ("output[1]", "output 'output[1]' contains NaN or Inf"),
        ("output.logits", "output 'output.logits' contains NaN or Inf")]


def test_global_grad_disabled_and_parameters_written_in_forward() -> None:
    names = [f"blocks.{i}.scale" for i in range(6)]
    findings = judge_run(run_facts(HEAD, global_grad_enabled=False, modified_parameters=names))
    assert only(findings, "global-grad-disabled").subject == "torch.is_grad_enabled()"
    f = only(findings, "param-modified-in-forward")
    assert f.subject == "blocks.0.scale"
    assert "into 6 parameter(s) in place (blocks.0.scale, blocks.1.scale, blocks.2.scale, blocks.3.scale, … and 2 " \
        "more)" in f.message


def test_weights_keys_are_counted_and_shortened() -> None:
    missing = [f"layer{i}.weight" for i in range(7)]
    findings = judge_run(run_facts(HEAD, missing_keys=missing, unexpected_keys=["module.head.weight"]))
    assert only(findings, "weights-missing-keys").message == (
        "7 model key(s) not in the weights file: layer0.weight, layer1.weight, layer2.weight, layer3.weight, "
        "… and 3 more")
    unexpected = only(findings, "weights-unexpected-keys")
    assert unexpected.message == "1 key(s) in the weights file the model lacks: module.head.weight"
    assert "'module.'" in unexpected.hint


def test_a_fully_frozen_model_says_nothing_will_train() -> None:
    frozen = [param("a.weight", 4, requires_grad=False, grad=None), param("b.weight", 4, requires_grad=False,
                                                                          grad=None),
              param("b.bias", 2, requires_grad=False, grad=None)]
    facts = run_facts(frozen, backward=False, backward_skipped_reason="no output requires grad",
                      outputs=[tensor(requires_grad=False)])
    assert [(f.code, f.severity) for f in judge_run(facts)] == [("no-trainable-params", "warning")]
    assert "all 3 are frozen" in judge_run(facts)[0].message


def test_no_output_requiring_grad_with_trainable_parameters_is_an_error() -> None:
    facts = run_facts(HEAD, backward=False, backward_skipped_reason="no output requires grad",
                      outputs=[tensor(requires_grad=False)])
    f = only(judge_run(facts), "grad-none")
    # the model around them holds nothing else, so the finding names the top-level module that does
    assert f.subject == "head"
    assert f.message.startswith("2 parameter(s) of module 'head' require grad but can receive no gradient (no "
                                "output requires grad, so no backward is possible)")


def test_a_model_without_parameters_only_says_why_there_was_no_backward() -> None:
    facts = run_facts([], backward=False, backward_skipped_reason="no output requires grad",
                      outputs=[tensor(requires_grad=False)])
    assert [(f.code, f.severity, f.message) for f in judge_run(facts)] == [
        ("no-backward", "info", "no backward: no output requires grad")]


def test_findings_are_sorted_errors_warnings_info_and_every_code_is_documented() -> None:
    params = [*HEAD, param("gate.weight", 9, grad="zero"), param("aux.weight", 4, grad="none")]
    facts = run_facts(params, modules=modules_for(params, aux={"calls": 0}), missing_keys=["x"],
                      nonfinite_outputs=["output"])
    findings = judge_run(facts)
    order = {"error": 0, "warning": 1, "info": 2}
    assert [order[f.severity] for f in findings] == sorted(order[f.severity] for f in findings)
    assert set(codes(findings)) == {"grad-none", "nonfinite-output", "grad-zero", "weights-missing-keys"}
    assert set(codes(findings)) <= CODES.keys()
