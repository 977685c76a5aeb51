"""The freeze rules on hand-made facts, without torch: every verdict follows from the facts alone.

The optimizer facts are what a training loop's steps would show (``OptimizerParam``); the tests
state those facts directly and check the verdict: moved → violation naming the mechanism, sits in a
param group → warning, optimizer state handed over → violation, two param groups → violation.
"""

from __future__ import annotations

import subprocess
import sys

from gradprobe.facts.freeze import (
    MECHANISMS,
    FreezeFacts,
    OptimizerFacts,
    OptimizerGroup,
    OptimizerParam,
    OptimizerState,
)
from gradprobe.facts.run import ModuleFact, ParamFact, RunFacts
from gradprobe.judges.freeze import judge
from gradprobe.judges.freeze_spec import FreezeSpec
from gradprobe.render.freeze.groups import group_issues

SPEC = FreezeSpec.make(frozen="backbone", trainable="head")
NAMES = ("backbone.weight", "backbone.bias", "head.weight", "head.bias")


def param(name: str, requires_grad: bool, grad: str) -> ParamFact:
    return ParamFact(name, (), (2,), "float32", requires_grad, grad, None, name.rpartition(".")[0], True, 2, 8)


def run_facts(params: tuple[ParamFact, ...]) -> RunFacts:
    modules = tuple(ModuleFact(m, "Linear" if m else "Net", True, 1, (), None, False, True)
                    for m in ("", "backbone", "head"))
    return RunFacts("Net", "2.13.0", "cpu", "train", "grad", True, None, 1.0, params, (), modules, (), (), None,
                    None, True)


def healthy() -> tuple[ParamFact, ...]:
    return (param("backbone.weight", False, "none"), param("backbone.bias", False, "none"),
            param("head.weight", True, "nonzero"), param("head.bias", True, "nonzero"))


def opt_param(name: str, **kw: object) -> OptimizerParam:
    trainable = name.startswith("head")
    base: dict[str, object] = {"groups": (0,), "had_grad": trainable, "moved": trainable,
                               "delta": 0.1 if trainable else 0.0, "moved_step": 1 if trainable else None}
    base.update(kw)
    return OptimizerParam(name, **base)  # type: ignore[arg-type]


def optimizer(rows: dict[str, dict[str, object]], kind: str = "AdamW",
              settings: tuple[tuple[str, str], ...] = (("lr", "0.01"), ("weight_decay", "0.05"),
                                                       ("betas", "(0.9, 0.999)"))) -> OptimizerFacts:
    params = tuple(opt_param(n, **rows.get(n, {})) for n in NAMES)
    return OptimizerFacts(kind, "make_optimizer", (OptimizerGroup(0, 4, settings),), params, steps=3,
                          zero_grad_keeps="none")


def verdict(opt: OptimizerFacts, params: tuple[ParamFact, ...] | None = None):  # type: ignore[no-untyped-def]
    return judge(SPEC, FreezeFacts(run_facts(params or healthy()), opt))


def test_frozen_in_a_group_that_does_not_move_is_a_warning() -> None:
    j = verdict(optimizer({}))
    assert j.violations == ()
    warned = [w for w in j.warnings if w.check == "optimizer"]
    assert {w.subject for w in warned} == {"backbone.weight", "backbone.bias"}
    for w in warned:
        assert "would move if it ever got a gradient" in w.message and "weight_decay=0.05" in w.message
        assert "unfrozen later, or zero_grad(set_to_none=False) after it had one" in w.message
        assert "bytes" not in w.message and "bytes" not in w.found  # no memory claimed: no state exists
    assert j.notes == ()


def test_state_handed_over_is_a_violation_and_its_memory_a_note() -> None:
    state = OptimizerState(("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"), 20)
    j = verdict(optimizer({"backbone.weight": {"state_before": state, "state_after": state}}))
    (v,) = j.violations
    assert (v.check, v.subject) == ("optimizer", "backbone.weight")
    assert "already holds optimizer state" in v.message and "that state moves it" in v.message
    assert "exp_avg, exp_avg_sq: 20 bytes" in v.found
    assert j.notes == ("AdamW holds 20 B of optimizer state for 1 frozen parameter(s)",)


def test_moved_frozen_parameter_names_each_mechanism() -> None:
    cases = {
        "stale-grad": ({"stale_grad": "nonzero", "moved": True, "moved_step": 1, "delta": 0.5}, "SGD", ()),
        "weight-decay": ({"stale_grad": "zero", "moved": True, "moved_step": 1, "delta": 1e-4}, "AdamW",
                         (("weight_decay", "0.05"),)),
        "momentum": ({"stale_grad": "zero", "moved": True, "moved_step": 1, "delta": 0.1,
                      "state_before": OptimizerState(("momentum_buffer",), ("momentum_buffer",), 8)}, "SGD",
                     (("momentum", "0.9"),)),
        "shared-storage": ({"groups": (), "moved": True, "moved_step": 1, "delta": 0.1}, "SGD", ()),
    }
    for mechanism, (row, kind, settings) in cases.items():
        j = verdict(optimizer({"backbone.weight": row}, kind, (("lr", "0.1"), *settings)))
        (step,) = [v for v in j.violations if v.check == "step"]
        assert step.subject == "backbone.weight" and mechanism in step.mechanism, (mechanism, step)
        assert set(step.mechanism) <= set(MECHANISMS)
        assert step.fix is not None and step.message.endswith(step.fix)
    resumed = verdict(optimizer({"backbone.weight": cases["momentum"][0]}, "SGD", (("momentum", "0.9"),)))
    (step,) = [v for v in resumed.violations if v.check == "step"]
    assert "a resumed checkpoint" in step.message and "del optimizer.state[p]" in step.fix  # type: ignore[operator]


def test_parameter_in_two_groups_is_a_violation_for_any_expectation() -> None:
    j = verdict(optimizer({"head.weight": {"groups": (0, 1)}, "backbone.bias": {"groups": (0, 0)}}))
    twice = {v.subject: v.found for v in j.violations if v.check == "optimizer"}
    assert twice == {"head.weight": "in param groups 0, 1", "backbone.bias": "listed 2 times in param group 0"}


def test_trainable_without_gradient_is_a_violation() -> None:
    params = (*healthy()[:3], param("head.bias", True, "none"))
    j = judge(SPEC, FreezeFacts(run_facts(params)))
    (v,) = j.violations
    assert (v.check, v.subject, v.found) == ("gradient", "head.bias", ".grad is None")
    assert "does not use this one" in v.message  # head.weight got one: head ran
    assert j.ddp_unused == ("head.bias",)


def test_grouped_text_has_no_placeholder_and_parts_add_up() -> None:
    state = OptimizerState(("momentum_buffer",), ("momentum_buffer",), 8)
    rows = {n: {"state_before": state} for n in NAMES[:2]}
    j = verdict(optimizer(rows, "SGD", (("lr", "0.1"), ("momentum", "0.9"))))
    (group,) = group_issues(j.violations)
    assert group.where == "backbone" and group.modules == (("backbone", ("weight", "bias")),)
    assert group.message.startswith("each frozen parameter is in param group 0 of SGD")
    assert "<" not in group.message and group.fix == j.violations[0].fix
    for v in j.violations:
        assert v.message == f"{v.kind} '{v.subject}' {v.cause}; {v.fix}"


def test_judges_and_freeze_renderers_never_import_torch() -> None:
    code = ("import sys; import gradprobe.judges.freeze, gradprobe.render.freeze.view, "
            "gradprobe.render.freeze.junit, gradprobe.render.freeze.github; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_steps_not_run_claim_nothing_about_movement() -> None:
    rows = {n: {"moved": None, "delta": None, "moved_step": None} for n in NAMES}
    opt = optimizer(rows)
    skipped = OptimizerFacts(opt.type, opt.spec, opt.groups, opt.params, steps_skipped="parameters are on the meta "
                             "device: values are unknown, so the optimizer steps were not run")
    j = verdict(skipped)
    assert j.violations == ()
    for w in (w for w in j.warnings if w.check == "optimizer"):
        assert "not measured" in w.message and "does not move" not in w.message and "steps checked" not in w.message
    assert not [w for w in j.warnings if w.check == "step"]  # trainable: moved is unknown, not False
