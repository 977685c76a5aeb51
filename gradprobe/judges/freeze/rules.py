"""The freeze verdict: every rule over the facts of one run → violations and warnings.

No torch here.  Each issue names the parameter or buffer, what the spec expected, what the run
found, and the likely cause as far as the facts can tell it.  The rules themselves live beside this
module, one job each: ``params`` (flags, gradients, tied-name conflicts), ``optimizer`` (param groups
and steps), ``model`` (baseline, buffers, unlisted parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradprobe.facts.freeze import CHECKS, FreezeFacts, FreezeIssue, FreezeParam, OptimizerFacts
from gradprobe.facts.run import GradState, ParamFact, RunFacts
from gradprobe.judges.freeze import model, optimizer, params
from gradprobe.judges.freeze.causes import Causes, effective_grad
from gradprobe.judges.freeze_spec import Classification, FreezeSpec


@dataclass(frozen=True)
class Judgement:
    """What the rules concluded: one row per parameter, violations (fail) and warnings (do not)."""

    parameters: tuple[FreezeParam, ...]
    violations: tuple[FreezeIssue, ...]
    warnings: tuple[FreezeIssue, ...]
    ddp_unused: tuple[str, ...]
    notes: tuple[str, ...] = ()  # measured facts worth a line beside the spec (optimizer state of frozen params)


def judge(spec: FreezeSpec, facts: FreezeFacts) -> Judgement:
    """Every violation and warning the facts support, ordered by check then subject."""
    run = facts.run
    causes = Causes(run)
    classes = {p.name: spec.classify(p.names) for p in run.parameters}
    opt = facts.optimizer
    rows = tuple(_row(run, p, classes[p.name], opt) for p in run.parameters)
    issues: list[tuple[bool, FreezeIssue]] = []  # (is_violation, issue)
    flagged: set[str] = set()
    for p in run.parameters:
        for issue, violation in _param_issues(p, classes[p.name], causes, facts):
            if issue.check == "flag":
                flagged.add(p.name)
            issues.append((violation, issue))
    if spec.baseline is not None:
        issues += [(True, i) for i in model.baseline_issues(spec, run, flagged)]
    if not spec.allow_buffer_updates:
        issues += [(True, i) for i in model.buffer_issues(spec, run, facts.buffer_aliases)]
    if spec.unlisted != "ignore":
        issues += [(spec.unlisted == "error", i) for i in model.unlisted_issues(run, classes)]
    if opt is not None and opt.foreign:
        issues.append((False, optimizer.foreign_issue(opt)))
    order = {c: i for i, c in enumerate(CHECKS)}
    issues.sort(key=lambda vi: order[vi[1].check])
    frozen = {p.name for p in run.parameters if classes[p.name].expected == "frozen"}
    note = optimizer.state_note(opt, frozen) if opt is not None else None
    trainable = {p.name for p in run.parameters if classes[p.name].expected == "trainable"
                 and not classes[p.name].conflict}
    notes = tuple(n for n in (note, params.zero_factor_note(run, causes, trainable)) if n)
    return Judgement(
        parameters=rows,
        violations=tuple(i for v, i in issues if v),
        warnings=tuple(i for v, i in issues if not v),
        ddp_unused=tuple(p.name for p in run.parameters
                         if p.requires_grad and effective_grad(run, p) is GradState.ABSENT),
        notes=notes,
    )


def _row(run: RunFacts, p: ParamFact, c: Classification, opt: OptimizerFacts | None) -> FreezeParam:
    o = opt.param(p.name) if opt is not None else None
    return FreezeParam(
        name=p.name, aliases=p.aliases, expected=c.expected, requires_grad=p.requires_grad,
        grad=effective_grad(run, p), groups=c.groups if not c.conflict else ("conflict",), conflict=c.conflict,
        optimizer_group=o.groups[0] if o is not None and o.groups else None,
    )


def _param_issues(p: ParamFact, c: Classification, causes: Causes,
                  facts: FreezeFacts) -> list[tuple[FreezeIssue, bool]]:
    """Every issue of one parameter: conflict, or flags and gradients, then the optimizer's view of it."""
    if c.conflict:
        return [(params.conflict(p, c), True)]
    grad = effective_grad(facts.run, p)
    after = facts.flags_after.get(p.name)
    flags = not c.from_baseline  # a baseline-derived expectation: the baseline check reports the flag
    opt = facts.optimizer
    o = opt.param(p.name) if opt is not None else None
    out: list[tuple[FreezeIssue, bool]] = []
    if c.expected == "frozen":
        out += params.frozen_issues(p, grad, causes, c.groups, flags, after)
        if o is not None and opt is not None:
            out += optimizer.frozen_issues(p, o, opt, c.groups)
    elif c.expected == "trainable":
        out += params.trainable_issues(p, grad, causes, c.groups, flags, after)
        if o is not None and opt is not None:
            out += optimizer.trainable_issues(p, o, opt, c.groups)
    else:
        out += params.unlisted_issues(p, grad, causes)
    if o is not None and opt is not None:
        kind = f"{c.expected} parameter" if c.expected != "unlisted" else "parameter"
        twice = optimizer.duplicate_issue(p, o, opt, kind, c.groups)
        if twice is not None:
            out.append((twice, True))
    return out
