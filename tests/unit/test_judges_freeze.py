"""``judges.freeze.judge`` on hand-made facts: every check, its subject, expected/found and cause, without torch.

The model is always ``stem`` → ``backbone`` (``backbone.0``) → ``head``; the spec freezes ``backbone`` and
trains ``stem`` and ``head`` unless a test says otherwise.
"""

from __future__ import annotations

from gradprobe.facts.freeze import CHECKS, FreezeIssue
from gradprobe.facts.run import ParamFact
from gradprobe.judges.freeze import judge
from gradprobe.judges.freeze.text import DDP_NOTE
from gradprobe.judges.freeze_spec import FreezeSpec
from gradprobe.units import py_path
from tests.fixtures.facts import (
    buffer,
    freeze_facts,
    modules_for,
    opt_param,
    optimizer,
    param,
    run_facts,
    state,
    tensor,
)

SPEC = FreezeSpec(frozen=("backbone",), trainable=("stem", "head"))
NAMES = ("stem.weight", "backbone.0.weight", "backbone.0.bias", "head.weight")


def model(frozen_requires_grad: bool = False, frozen_grad: str | None = "none", **grads: str | None) -> list[ParamFact]:
    """The four parameters; the backbone's flag and gradient as given, the others trainable with a gradient."""
    out = []
    for name in NAMES:
        if name.startswith("backbone"):
            out.append(param(name, 8, requires_grad=frozen_requires_grad, grad=frozen_grad))
        else:
            out.append(param(name, 8, grad=grads.get(name.replace(".", "_"), "nonzero")))
    return out


def subjects(issues: tuple[FreezeIssue, ...], check: str) -> list[str]:
    return [i.subject for i in issues if i.check == check]


def test_py_path_is_valid_python() -> None:
    assert py_path("") == "model"
    assert py_path("backbone.1.conv") == "model.backbone[1].conv"


def test_a_correct_freeze_passes_with_one_row_per_parameter() -> None:
    j = judge(SPEC, freeze_facts(run_facts(model())))
    assert j.violations == () and j.warnings == () and j.ddp_unused == ()
    assert [(r.name, r.expected, r.groups) for r in j.parameters] == [
        ("stem.weight", "trainable", ("trainable stem",)),
        ("backbone.0.weight", "frozen", ("frozen backbone",)),
        ("backbone.0.bias", "frozen", ("frozen backbone",)),
        ("head.weight", "trainable", ("trainable head",)),
    ]


def test_a_frozen_parameter_that_trains_fails_the_flag_and_gradient_checks() -> None:
    j = judge(SPEC, freeze_facts(run_facts(model(frozen_requires_grad=True, frozen_grad="nonzero"))))
    assert [(v.check, v.subject) for v in j.violations] == [
        ("flag", "backbone.0.weight"), ("flag", "backbone.0.bias"),
        ("gradient", "backbone.0.weight"), ("gradient", "backbone.0.bias")]
    flag = j.violations[0]
    assert (flag.expected, flag.found, flag.groups) == ("requires_grad=False", "requires_grad=True",
                                                        ("frozen backbone",))
    assert "requires_grad_(False) was never called on it" in flag.message
    assert j.violations[2].found == "a nonzero gradient"


def test_a_plain_requires_grad_attribute_names_the_module_and_the_call() -> None:
    params = model(frozen_requires_grad=True, frozen_grad="nonzero")
    run = run_facts(params, modules=modules_for(params, backbone={"requires_grad_attr": False}))
    flag = judge(SPEC, freeze_facts(run)).violations[0]
    assert ("module 'backbone' has a plain attribute requires_grad=False, which freezes nothing; call "
            "model.backbone.requires_grad_(False)") in flag.message


def test_a_no_grad_freeze_is_a_flag_violation_and_cuts_off_the_stem_upstream() -> None:
    params = model(frozen_requires_grad=True, frozen_grad="none", stem_weight="none")
    run = run_facts(params, tensors=[tensor(module="backbone", requires_grad=False),
                                     tensor(module="backbone.0", requires_grad=False)])
    j = judge(SPEC, freeze_facts(run))
    assert subjects(j.violations, "flag") == ["backbone.0.weight", "backbone.0.bias"]
    assert ("it is 'frozen' by torch.no_grad() or detach() inside forward (the output of 'backbone' has no "
            "grad_fn), which leaves requires_grad=True") in j.violations[0].message
    [stem] = [v for v in j.violations if v.check == "gradient"]
    assert (stem.subject, stem.expected, stem.found) == ("stem.weight", "a gradient", ".grad is None")
    assert stem.message == (
        "trainable parameter 'stem.weight' received no gradient: module 'stem' builds a graph but the loss does "
        "not reach it: the graph is cut downstream at 'backbone' (output without grad_fn: torch.no_grad() or "
        "detach() inside forward cuts the gradient to everything upstream); it is cut off from the loss, and "
        f"{DDP_NOTE}")
    assert j.ddp_unused == ("stem.weight", "backbone.0.weight", "backbone.0.bias")


def test_a_trainable_layer_never_called_and_a_zero_gradient() -> None:
    params = model(head_weight="none", stem_weight="zero")
    run = run_facts(params, modules=modules_for(params, head={"calls": 0}))
    j = judge(SPEC, freeze_facts(run))
    [head] = j.violations
    assert head.subject == "head.weight" and "module 'head' is never called in forward" in head.message
    [stem] = j.warnings  # a zero gradient is a warning: it can be a dead ReLU
    assert (stem.check, stem.subject, stem.found) == ("gradient", "stem.weight", "a gradient that is exactly zero")


def test_without_a_backward_every_trainable_parameter_is_without_gradient() -> None:
    run = run_facts(model(), backward=False, backward_skipped_reason="no output requires grad")
    j = judge(SPEC, freeze_facts(run))
    assert subjects(j.violations, "gradient") == ["stem.weight", "head.weight"]
    assert "no output of the model requires grad (no output requires grad), so backward could not run" \
        in j.violations[0].message
    assert [r.grad for r in j.parameters] == ["none"] * 4


def test_a_tied_weight_frozen_under_one_name_and_trained_under_the_other_is_a_conflict() -> None:
    tied = param("embed.weight", 88, requires_grad=False, grad="none", aliases=["head.weight"])
    spec = FreezeSpec(frozen=("embed",), trainable=("head",), unlisted="ignore")
    j = judge(spec, freeze_facts(run_facts([tied, param("body.weight", 64)])))
    [v] = j.violations
    assert (v.check, v.subject) == ("conflict", "embed.weight")
    assert v.found == "frozen by 'embed' (as 'embed.weight'), trainable by 'head' (as 'head.weight')"
    assert "it is one tied Parameter ('embed.weight' and 'head.weight' share storage)" in v.message
    assert "with requires_grad=False it is frozen under every name" in v.message
    assert (j.parameters[0].conflict, j.parameters[0].groups) == (True, ("conflict",))


def test_frozen_parameters_in_a_momentum_group_warn_until_they_move() -> None:
    resting = [opt_param("backbone.0.weight", had_grad=False, moved=False, delta=0.0),
               opt_param("backbone.0.bias", had_grad=False, moved=False, delta=0.0)]
    opt = optimizer([opt_param("stem.weight"), opt_param("head.weight"), *resting],
                    settings={"lr": "0.1", "momentum": "0.9", "weight_decay": "0"})
    j = judge(SPEC, freeze_facts(run_facts(model()), opt))
    assert j.violations == ()
    assert [(w.check, w.subject, w.found) for w in j.warnings] == [
        ("optimizer", "backbone.0.weight", "in param group 0, unchanged, no optimizer state"),
        ("optimizer", "backbone.0.bias", "in param group 0, unchanged, no optimizer state")]
    assert j.warnings[0].message.startswith(
        "frozen parameter 'backbone.0.weight' is in param group 0 of SGD, but it does not move: its .grad stays None, "
        "so SGD skips it and creates no state for it (3 steps checked)")
    assert "momentum=0.9 keep moving it" in j.warnings[0].message
    # resumed from a checkpoint: its momentum buffer moves it in step 2 although backward gives it no gradient
    moving = opt_param("backbone.0.weight", had_grad=False, moved=True, delta=0.0123, moved_step=2,
                       state_before=state("momentum_buffer"), state_after=state("momentum_buffer"))
    opt = optimizer([opt_param("stem.weight"), opt_param("head.weight"), moving, resting[1]],
                    settings={"lr": "0.1", "momentum": "0.9", "weight_decay": "0"})
    [step] = judge(SPEC, freeze_facts(run_facts(model()), opt)).violations
    assert (step.check, step.subject, step.found, step.mechanism) == (
        "step", "backbone.0.weight", "changed by up to 0.0123", ("momentum",))
    assert ("changed in optimizer.step() without a gradient from backward (step 2 of 3)" in step.message
            and "moved by momentum=0.9 via its momentum_buffer (held since before these steps: a resumed "
                "checkpoint)" in step.message)
    assert "drop its optimizer state (del optimizer.state[p])" in step.fix


def test_adamw_state_and_weight_decay_move_a_frozen_parameter_without_any_gradient() -> None:
    opt = optimizer([opt_param("stem.weight"), opt_param("head.weight"),
                     opt_param("backbone.0.weight", had_grad=False, moved=True, delta=0.001, stale_grad="zero",
                               state_after=state("exp_avg", "exp_avg_sq")),
                     opt_param("backbone.0.bias", groups=(), had_grad=False, moved=True, delta=0.5)],
                    type="AdamW", settings={"lr": "0.01", "betas": "(0.9, 0.999)", "weight_decay": "0.1"})
    j = judge(SPEC, freeze_facts(run_facts(model()), opt))
    steps = {v.subject: v for v in j.violations if v.check == "step"}
    weight = steps["backbone.0.weight"]
    assert (weight.found, weight.mechanism) == ("changed by up to 0.001", ("adam-state", "weight-decay"))
    assert weight.message.startswith(
        "frozen parameter 'backbone.0.weight' changed in optimizer.step() without a gradient from backward (step 1 "
        "of 3): it still holds the zero .grad it had when handed over")
    assert ("moved by Adam's state exp_avg/exp_avg_sq with betas=(0.9, 0.999) and weight_decay=0.1 as decoupled "
            "weight decay") in weight.message
    # not in the optimizer and still moved: written through shared storage
    bias = steps["backbone.0.bias"]
    assert (bias.found, bias.mechanism, bias.fix) == ("changed by up to 0.5", ("shared-storage",),
                                                      "give it its own copy with .clone()")


def test_a_trainable_parameter_missing_from_the_optimizer_or_not_moving() -> None:
    opt = optimizer([opt_param("stem.weight", moved=False, delta=0.0), opt_param("head.weight", groups=()),
                     opt_param("backbone.0.weight", groups=(), moved=False),
                     opt_param("backbone.0.bias", groups=(), moved=False)])
    j = judge(SPEC, freeze_facts(run_facts(model()), opt))
    [missing] = j.violations
    assert (missing.check, missing.subject, missing.found) == ("optimizer", "head.weight", "in no param group")
    [still] = j.warnings
    assert (still.check, still.subject) == ("step", "stem.weight")
    assert still.message == ("trainable parameter 'stem.weight' did not change in optimizer.step(): its gradient is "
                             "zero or lr=0.1 is too small to change it")
    frozen_lr = optimizer([opt_param("stem.weight", moved=False, delta=0.0), opt_param("head.weight")],
                          settings={"lr": "0.0"})
    [still] = judge(SPEC, freeze_facts(run_facts(model()), frozen_lr)).warnings
    assert still.message.endswith("did not change in optimizer.step(): its param group has lr=0.0")


def test_foreign_tensors_in_the_optimizer_are_a_warning() -> None:
    opt = optimizer([opt_param("stem.weight"), opt_param("head.weight")], foreign=2)
    [w] = judge(SPEC, freeze_facts(run_facts(model()), opt)).warnings
    assert (w.check, w.subject, w.found) == ("optimizer", "(optimizer)", "2 foreign tensor(s)")


def test_frozen_batchnorm_statistics_drift_under_any_name_of_the_buffer() -> None:
    run = run_facts(model(), buffers=[buffer("backbone.1.running_mean"), buffer("head.running_mean"),
                                      buffer("backbone.1.running_var", changed=False)])
    [v] = judge(SPEC, freeze_facts(run)).violations
    assert (v.check, v.subject, v.groups) == ("buffer", "backbone.1.running_mean", ("frozen backbone",))
    assert "(model.backbone.eval())" in v.message
    assert judge(FreezeSpec(frozen=("backbone",), trainable=("stem", "head"), allow_buffer_updates=True),
                 freeze_facts(run)).violations == ()
    # the module is registered as 'encoder' too: a frozen pattern on the other name still covers the buffer
    aliased = run_facts(model(), buffers=[buffer("encoder.1.running_mean")])
    facts = freeze_facts(aliased, buffer_aliases={"encoder.1.running_mean": ("encoder.1.running_mean",
                                                                             "backbone.1.running_mean")})
    assert subjects(judge(SPEC, facts).violations, "buffer") == ["encoder.1.running_mean"]


def test_unlisted_parameters_are_grouped_by_module_and_follow_the_policy() -> None:
    params = [*model(), param("aux.weight", 6), param("aux.bias", 2, requires_grad=False, grad="none"),
              param("scale", 1)]
    warned = judge(SPEC, freeze_facts(run_facts(params)))
    assert warned.violations == ()
    assert [(w.check, w.subject, w.found) for w in warned.warnings] == [
        ("unlisted", "aux", "matched by no pattern (mixed requires_grad)"),
        ("unlisted", "scale", "matched by no pattern (requires_grad=True)")]
    assert warned.warnings[0].message.startswith("2 parameter(s) of module 'aux' matched by no pattern")
    assert warned.warnings[1].message.startswith("parameter 'scale' matched by no pattern")
    strict = FreezeSpec(frozen=("backbone",), trainable=("stem", "head"), unlisted="error")
    assert subjects(judge(strict, freeze_facts(run_facts(params))).violations, "unlisted") == ["aux", "scale"]
    ignore = FreezeSpec(frozen=("backbone",), trainable=("stem", "head"), unlisted="ignore")
    assert judge(ignore, freeze_facts(run_facts(params))).warnings == ()


def test_a_baseline_reports_new_changed_and_removed_parameters() -> None:
    spec = FreezeSpec(unlisted="ignore", baseline={"stem.weight": True, "backbone.0.weight": False,
                                                   "backbone.0.bias": True, "old.weight": False},
                      baseline_path="freeze.json")
    params = [param("stem.weight", 8), param("backbone.0.weight", 8, requires_grad=True),
              param("backbone.0.bias", 8), param("head.weight", 8)]
    j = judge(spec, freeze_facts(run_facts(params)))
    flags = {v.subject: v for v in j.violations if v.check == "flag"}
    assert sorted(flags) == ["backbone.0.weight", "head.weight", "old.weight"]
    assert flags["backbone.0.weight"].found == "requires_grad=True"
    assert "but baseline freeze.json says False" in flags["backbone.0.weight"].message
    assert flags["head.weight"].found == "new parameter (requires_grad=True)"
    assert flags["old.weight"].found == "no such parameter"
    assert subjects(j.violations, "gradient") == ["backbone.0.weight"]  # frozen by the baseline, yet a gradient


def test_flags_changed_inside_forward_are_violations_both_ways() -> None:
    facts = freeze_facts(run_facts(model()), flags_after={"backbone.0.weight": True, "head.weight": False})
    j = judge(SPEC, facts)
    flags = {v.subject: v for v in j.violations}
    assert sorted(flags) == ["backbone.0.weight", "head.weight"]
    assert flags["backbone.0.weight"].found == "requires_grad=True after forward"
    assert "requires_grad=False when the model is handed over" in flags["backbone.0.weight"].message
    assert flags["head.weight"].found == "requires_grad=False after forward"


def test_issues_are_ordered_by_check() -> None:
    params = [*model(frozen_requires_grad=True, frozen_grad="nonzero"), param("aux.weight", 2)]
    strict = FreezeSpec(frozen=("backbone",), trainable=("stem", "head"), unlisted="error")
    run = run_facts(params, buffers=[buffer("backbone.1.running_mean")])
    checks = [v.check for v in judge(strict, freeze_facts(run)).violations]
    assert checks == sorted(checks, key=CHECKS.index)
    assert set(checks) == {"flag", "gradient", "buffer", "unlisted"}
