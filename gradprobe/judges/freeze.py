"""Freeze rules: pure judges over the facts of one run → violations and warnings.

No torch here.  Each issue names the parameter or buffer, what the spec expected, what the run
found, and the likely cause as far as the facts can tell it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gradprobe.facts.freeze import CHECKS, FreezeFacts, FreezeIssue, FreezeParam, OptimizerFacts, OptimizerParam
from gradprobe.facts.run import ModuleFact, ParamFact, RunFacts
from gradprobe.judges.freeze_spec import Classification, FreezeSpec, pattern_matches

DDP_NOTE = "under DistributedDataParallel it would need find_unused_parameters=True"
_FLOAT_PREFIXES = ("float", "bfloat", "complex", "half", "double")


@dataclass(frozen=True)
class Judgement:
    """What the rules concluded: one row per parameter, violations (fail) and warnings (do not)."""

    parameters: tuple[FreezeParam, ...]
    violations: tuple[FreezeIssue, ...]
    warnings: tuple[FreezeIssue, ...]
    ddp_unused: tuple[str, ...]


def _in_subtree(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


def _ancestors(module: str) -> list[str]:
    """``"a.b.c"`` → ``["", "a", "a.b", "a.b.c"]``: outermost first."""
    parts = module.split(".") if module else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def py_path(module: str) -> str:
    """``backbone.1`` → ``model.backbone[1]``: how the user reaches a submodule in Python."""
    out = "model"
    for part in module.split(".") if module else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _label(module: str) -> str:
    return f"'{module}'" if module else "the model"


def _short(names: Iterable[str], limit: int = 3) -> str:
    names = list(names)
    text = ", ".join(f"'{n}'" for n in names[:limit])
    return text + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def effective_grad(run: RunFacts, p: ParamFact) -> str | None:
    """The gradient state after backward; a backward that could not run leaves every ``.grad`` None."""
    if run.backward:
        return p.grad
    return "none"


class _Causes:
    """Likely causes, read off the module facts of the train-mode run."""

    def __init__(self, run: RunFacts) -> None:
        self.run = run
        self.modules = {m.name: m for m in run.modules}
        self.outputs: dict[str, list[bool]] = {}  # module -> has grad_fn, per floating-point output
        for t in (*run.tensors, *run.outputs):
            if t.dtype.startswith(_FLOAT_PREFIXES):
                self.outputs.setdefault(t.module, []).append(t.grad_fn is not None)
        self.requiring = [p for p in run.parameters if p.requires_grad]

    def called(self, module: str) -> bool:
        mod = self.modules.get(module)
        return module == "" or (mod is not None and mod.calls > 0)

    def graphless(self, module: str) -> bool:
        """Called, with floating-point outputs none of which has a grad_fn."""
        outs = self.outputs.get(module)
        return bool(outs) and not any(outs) and self.called(module)

    def attr_module(self, module: str) -> ModuleFact | None:
        """The outermost module on the path with a plain ``requires_grad`` attribute."""
        for name in _ancestors(module):
            mod = self.modules.get(name)
            if mod is not None and mod.requires_grad_attr is not None:
                return mod
        return None

    def cut_region(self, module: str) -> str | None:
        """The outermost module on the path whose output has no grad_fn although parameters inside need grad."""
        for name in _ancestors(module):
            if self.graphless(name) and any(_in_subtree(p.module, name) for p in self.requiring):
                return name
        return None

    def cut_regions(self) -> list[str]:
        """Outermost called modules whose output has no grad_fn although parameters inside require grad."""
        found: list[str] = []
        for mod in self.run.modules:
            if any(_in_subtree(mod.name, f) for f in found) or mod.name == "":
                continue
            if self.graphless(mod.name) and any(_in_subtree(p.module, mod.name) for p in self.requiring):
                found.append(mod.name)
        return found

    def cut_root(self, module: str) -> str:
        """The outermost module on the path all of whose grad-requiring parameters received no gradient."""
        for name in _ancestors(module)[1:]:
            inside = [p for p in self.requiring if _in_subtree(p.module, name)]
            if inside and all(effective_grad(self.run, p) == "none" for p in inside):
                return name
        return module

    def never_called(self, module: str) -> str | None:
        """The outermost module on the path that never ran, if any."""
        for name in _ancestors(module):
            if not self.called(name):
                return name
        return None

    def no_gradient(self, p: ParamFact) -> str:
        """Why a parameter that requires grad received none: where it is cut off from the loss."""
        if not self.run.backward:
            return (f"no output of the model requires grad ({self.run.backward_skipped_reason}), so backward "
                    f"could not run")
        idle = self.never_called(p.module)
        if idle is not None:
            return f"module '{idle}' is never called in forward"
        region = self.cut_region(p.module)
        if region is not None:
            return (f"the output of {_label(region)} has no grad_fn: forward runs it under torch.no_grad() "
                    f"(or detaches inside it)")
        root = self.cut_root(p.module)
        regions = [r for r in self.cut_regions() if not _in_subtree(p.module, r)]
        if regions:
            return (f"module {_label(root)} builds a graph but the loss does not reach it: the graph is cut "
                    f"downstream at {_short(regions)} (output without grad_fn: torch.no_grad() or detach() "
                    f"inside forward cuts the gradient to everything upstream)")
        return (f"module {_label(root)} builds a graph but the loss does not reach it: its output is detached "
                f"(.detach(), .data) or passes through a non-differentiable op before the loss")


def judge(spec: FreezeSpec, facts: FreezeFacts) -> Judgement:
    """Every violation and warning the facts support, ordered by check then subject."""
    run = facts.run
    causes = _Causes(run)
    classes = {p.name: spec.classify(p.names) for p in run.parameters}
    opt = facts.optimizer
    rows = tuple(_row(run, p, classes[p.name], opt) for p in run.parameters)
    issues: list[tuple[bool, FreezeIssue]] = []  # (is_violation, issue)
    flagged: set[str] = set()
    ddp_unused: list[str] = []
    for p in run.parameters:
        c = classes[p.name]
        grad = effective_grad(run, p)
        if p.requires_grad and grad == "none":
            ddp_unused.append(p.name)
        if c.conflict:
            issues.append((True, _conflict(p, c)))
            continue
        for issue, violation in _param_issues(p, c, grad, causes, opt, facts.flags_after.get(p.name)):
            if issue.check == "flag":
                flagged.add(p.name)
            issues.append((violation, issue))
    if spec.baseline is not None:
        issues += [(True, i) for i in _baseline_issues(spec, run, flagged)]
    if not spec.allow_buffer_updates:
        issues += [(True, i) for i in _buffer_issues(spec, run, facts.buffer_aliases)]
    if spec.unlisted != "ignore":
        issues += [(spec.unlisted == "error", i) for i in _unlisted_issues(run, classes)]
    if opt is not None and opt.foreign:
        issues.append((False, FreezeIssue(
            "optimizer", "(optimizer)", "only parameters of this model",
            f"{opt.foreign} foreign tensor(s)",
            f"{opt.foreign} tensor(s) in the param groups of {opt.type} are not parameters of this model: the "
            f"optimizer was built for another model instance (built before a deepcopy, or from a different model)",
            ("optimizer",))))
    order = {c: i for i, c in enumerate(CHECKS)}
    issues.sort(key=lambda vi: order[vi[1].check])
    return Judgement(
        parameters=rows,
        violations=tuple(i for v, i in issues if v),
        warnings=tuple(i for v, i in issues if not v),
        ddp_unused=tuple(ddp_unused),
    )


def _row(run: RunFacts, p: ParamFact, c: Classification, opt: OptimizerFacts | None) -> FreezeParam:
    o = opt.param(p.name) if opt is not None else None
    return FreezeParam(
        name=p.name, aliases=p.aliases, expected=c.expected, requires_grad=p.requires_grad,
        grad=effective_grad(run, p), groups=c.groups if not c.conflict else ("conflict",), conflict=c.conflict,
        optimizer_group=o.groups[0] if o is not None and o.groups else None,
    )


def _conflict(p: ParamFact, c: Classification) -> FreezeIssue:
    (fp, fname), (tp, tname) = c.frozen_by[0], c.trainable_by[0]
    tied = len(p.names) > 1 and fname != tname
    state = "trained under every name" if p.requires_grad else "frozen under every name"
    why = (f"it is one tied Parameter ('{fname}' and '{tname}' share storage), so it cannot be both; with "
           f"requires_grad={p.requires_grad} it is {state}; untie the weights or list both names on one side"
           if tied else "the patterns overlap; make them disjoint")
    return FreezeIssue(
        "conflict", p.name, "frozen or trainable, not both",
        f"frozen by '{fp}' (as '{fname}'), trainable by '{tp}' (as '{tname}')",
        f"parameter '{p.name}' is matched by frozen pattern '{fp}' and trainable pattern '{tp}': {why}",
        ("conflict",))


def _flipped(p: ParamFact, after: bool) -> str:
    return (f"forward changes it: requires_grad={p.requires_grad} when the model is handed over (what an "
            f"optimizer built before the first forward sees) and {after} after forward; set the flag once, "
            f"before building the optimizer, not inside forward")


def _param_issues(p: ParamFact, c: Classification, grad: str | None, causes: _Causes,
                  opt: OptimizerFacts | None, after: bool | None = None) -> list[tuple[FreezeIssue, bool]]:
    out: list[tuple[FreezeIssue, bool]] = []
    groups = c.groups
    o = opt.param(p.name) if opt is not None else None
    flags = not c.from_baseline  # a baseline-derived expectation: the baseline check reports the flag
    if c.expected == "frozen":
        if after is True and not p.requires_grad and flags:
            out.append((FreezeIssue(
                "flag", p.name, "requires_grad=False", "requires_grad=True after forward",
                f"frozen parameter '{p.name}' is unfrozen by forward: {_flipped(p, after)}", groups), True))
        if p.requires_grad and flags and after is False:
            out.append((FreezeIssue(
                "flag", p.name, "requires_grad=False", "requires_grad=True before forward",
                f"frozen parameter '{p.name}' has requires_grad=True: {_flipped(p, after)}", groups), True))
        elif p.requires_grad and flags:
            out.append((FreezeIssue(
                "flag", p.name, "requires_grad=False", "requires_grad=True",
                f"frozen parameter '{p.name}' has requires_grad=True: {_frozen_flag_cause(p, grad, causes)}",
                groups), True))
        if grad in ("zero", "nonzero", "present"):
            out.append((FreezeIssue(
                "gradient", p.name, "no gradient (.grad is None)", f"a {grad} gradient",
                f"frozen parameter '{p.name}' received a gradient in backward: any optimizer that holds it will "
                f"update it", groups), True))
        if o is not None:
            out += [(i, True) for i in _frozen_optimizer_issues(p, o, opt, groups)]  # type: ignore[arg-type]
    elif c.expected == "trainable":
        if after is False and p.requires_grad and flags:
            out.append((FreezeIssue(
                "flag", p.name, "requires_grad=True", "requires_grad=False after forward",
                f"trainable parameter '{p.name}' is frozen by forward: {_flipped(p, after)}", groups), True))
        if not p.requires_grad:
            if flags:
                out.append((FreezeIssue(
                    "flag", p.name, "requires_grad=True", "requires_grad=False",
                    f"trainable parameter '{p.name}' has requires_grad=False, so it is never trained: a broader "
                    f"requires_grad_(False) (on the model or a parent of {_label(p.module)}) froze it; call "
                    f"requires_grad_(True) on it after freezing", groups), True))
        elif grad == "none":
            out.append((FreezeIssue(
                "gradient", p.name, "a gradient", ".grad is None",
                f"trainable parameter '{p.name}' received no gradient: {causes.no_gradient(p)}; it is cut off "
                f"from the loss, and {DDP_NOTE}", groups), True))
        elif grad == "zero":
            out.append((FreezeIssue(
                "gradient", p.name, "a nonzero gradient", "a gradient that is exactly zero",
                f"trainable parameter '{p.name}' received a gradient that is exactly zero: a dead ReLU, a zero "
                f"mask, or a loss that does not depend on it", groups), False))
        if o is not None:
            out += _trainable_optimizer_issues(p, o, opt, groups)  # type: ignore[arg-type]
    elif p.requires_grad and grad == "none":  # unlisted: only distributed readiness
        out.append((FreezeIssue(
            "gradient", p.name, "a gradient (it requires grad)", ".grad is None",
            f"unlisted parameter '{p.name}' requires grad but receives no gradient: {causes.no_gradient(p)}; "
            f"{DDP_NOTE}", ("unlisted",)), False))
    return out


def _frozen_flag_cause(p: ParamFact, grad: str | None, causes: _Causes) -> str:
    attr = causes.attr_module(p.module)
    if attr is not None:
        return (f"module {_label(attr.name)} has a plain attribute requires_grad={attr.requires_grad_attr}, which "
                f"freezes nothing; call {py_path(attr.name)}.requires_grad_({attr.requires_grad_attr})")
    if grad == "none":
        region = causes.cut_region(p.module)
        if region is not None:
            how = (f"'frozen' by torch.no_grad() or detach() inside forward (the output of {_label(region)} has no "
                   f"grad_fn)")
        elif causes.never_called(p.module) is not None:
            how = f"without gradient only because module '{causes.never_called(p.module)}' is never called"
        else:
            how = (f"'frozen' by detaching it from the loss (module {_label(causes.cut_root(p.module))} builds a "
                   f"graph the loss does not reach: .detach(), .data or a non-differentiable op)")
        return (f"it is {how}, which leaves requires_grad=True: it still lands in the optimizer and {DDP_NOTE}; "
                f"call requires_grad_(False) on it instead")
    return ("requires_grad_(False) was never called on it, or a later requires_grad_(True) / model.requires_grad_() "
            "undid it: it is being trained")


def _settings_text(opt: OptimizerFacts, group: int) -> dict[str, float]:
    """Numeric settings of a param group that keep moving a parameter without gradient."""
    out: dict[str, float] = {}
    g = next((g for g in opt.groups if g.index == group), None)
    if g is None:
        return out
    for key in ("momentum", "weight_decay"):
        value = g.setting(key)
        try:
            if value is not None and float(value) != 0:
                out[key] = float(value)
        except ValueError:
            continue
    return out


def _risk(opt: OptimizerFacts, group: int) -> str:
    s = _settings_text(opt, group)
    g = next(g for g in opt.groups if g.index == group)
    risks = []
    if "momentum" in s:
        risks.append(f"momentum={g.setting('momentum')} keeps moving it once it has had a gradient")
    if g.setting("betas") is not None:
        risks.append("Adam's running averages keep moving it once it has had a gradient")
    if "weight_decay" in s:
        risks.append(f"weight_decay={g.setting('weight_decay')} shrinks it whenever it has a .grad, even a zero one")
    return ("; " + " and ".join(risks)) if risks else ""


def responsible_setting(opt: OptimizerFacts, o: OptimizerParam) -> str:
    """Name the optimizer setting that moves a parameter whose gradient is zero."""
    group = o.groups[0] if o.groups else -1
    g = next((g for g in opt.groups if g.index == group), None)
    settings = _settings_text(opt, group)
    reasons = []
    if "momentum_buffer" in o.state and "momentum" in settings:
        reasons.append(f"momentum={g.setting('momentum') if g else settings['momentum']} via its momentum_buffer")
    adam = [k for k in ("exp_avg", "exp_avg_sq") if k in o.state]
    if adam:
        betas = g.setting("betas") if g is not None else None
        reasons.append(f"Adam's state {'/'.join(adam)}" + (f" with betas={betas}" if betas else ""))
    if "weight_decay" in settings:
        kind = "decoupled weight decay" if "AdamW" in opt.type else "an L2 term added to the zero gradient"
        reasons.append(f"weight_decay={g.setting('weight_decay') if g else settings['weight_decay']} as {kind}")
    other = [k for k in o.state if k not in ("momentum_buffer", "exp_avg", "exp_avg_sq")]
    if other and not reasons:
        reasons.append(f"its optimizer state {', '.join(other)}")
    return " and ".join(reasons) if reasons else f"{opt.type}'s update rule"


def _frozen_optimizer_issues(p: ParamFact, o: OptimizerParam, opt: OptimizerFacts,
                             groups: tuple[str, ...]) -> list[FreezeIssue]:
    out: list[FreezeIssue] = []
    if o.groups:
        g = o.groups[0]
        out.append(FreezeIssue(
            "optimizer", p.name, "in no param group", f"in param group {g}",
            f"frozen parameter '{p.name}' is in param group {g} of {opt.type}: it costs optimizer state"
            f"{_risk(opt, g)}; build the optimizer from [p for p in model.parameters() if p.requires_grad]",
            groups))
    if o.moved:
        if not o.groups:  # not in the optimizer, yet it moved: its memory is written through another tensor
            why = ("it is in no param group, so it shares storage with a parameter the optimizer updates "
                   "(a view, .data or .set_() alias of a trainable tensor); give it its own copy with .clone()")
        elif o.had_grad:
            why = "it received a gradient"
        else:
            why = f"{opt.type} updates it without any gradient ({responsible_setting(opt, o)})"
        out.append(FreezeIssue(
            "step", p.name, "bit-identical after optimizer.step()", f"changed by up to {_num(o.delta)}",
            f"frozen parameter '{p.name}' changed in optimizer.step(): {why}", groups))
    elif o.trap_moved:
        setting = responsible_setting(opt, o)
        out.append(FreezeIssue(
            "step", p.name, "unchanged after zero_grad(set_to_none=False) + step()",
            f"moved by up to {_num(o.trap_delta)} with a zero gradient, by {setting}",
            f"frozen parameter '{p.name}' still moves after optimizer.zero_grad(set_to_none=False) and step(): "
            f"{setting} keeps updating it although its gradient is zero (a parameter frozen mid-training); keep "
            f"frozen parameters out of the optimizer, or use zero_grad(set_to_none=True) and weight_decay=0 for "
            f"them", groups))
    return out


def _trainable_optimizer_issues(p: ParamFact, o: OptimizerParam, opt: OptimizerFacts,
                                groups: tuple[str, ...]) -> list[tuple[FreezeIssue, bool]]:
    if not p.requires_grad:
        return []
    if not o.groups:
        return [(FreezeIssue(
            "optimizer", p.name, "in a param group", "in no param group",
            f"trainable parameter '{p.name}' is in no param group of {opt.type}: it gets gradients but is never "
            f"updated; add it to the optimizer (build the optimizer after unfreezing)", groups), True)]
    if o.moved is False and o.had_grad:  # without a gradient the gradient check already reported it
        lr = next((g.setting("lr") for g in opt.groups if g.index == o.groups[0]), None)
        why = f"its gradient is zero or lr={lr} is too small to change it" if lr else "its update was zero"
        return [(FreezeIssue(
            "step", p.name, "changed by optimizer.step()", "unchanged",
            f"trainable parameter '{p.name}' did not change in optimizer.step(): {why}", groups), False)]
    return []


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


def _baseline_issues(spec: FreezeSpec, run: RunFacts, flagged: set[str]) -> list[FreezeIssue]:
    assert spec.baseline is not None
    out: list[FreezeIssue] = []
    where = f"baseline {spec.baseline_path}" if spec.baseline_path else "the baseline"
    seen: set[str] = set()
    for p in run.parameters:
        seen.update(p.names)
        for n in p.names:
            if n not in spec.baseline:
                out.append(FreezeIssue(
                    "flag", n, "listed in the baseline", f"new parameter (requires_grad={p.requires_grad})",
                    f"parameter '{n}' is not in {where}: the model changed; review it and rewrite the baseline "
                    f"with --write-baseline", ("baseline",)))
            elif spec.baseline[n] != p.requires_grad and p.name not in flagged:
                out.append(FreezeIssue(
                    "flag", n, f"requires_grad={spec.baseline[n]} (baseline)", f"requires_grad={p.requires_grad}",
                    f"parameter '{n}' has requires_grad={p.requires_grad} but {where} says {spec.baseline[n]}: the "
                    f"freeze changed; fix the freeze, or review and rewrite the baseline with --write-baseline",
                    ("baseline",)))
    for n in spec.baseline:
        if n not in seen:
            out.append(FreezeIssue(
                "flag", n, "present (baseline)", "no such parameter",
                f"parameter '{n}' from {where} is not in the model: renamed or removed; review it and rewrite the "
                f"baseline with --write-baseline", ("baseline",)))
    return out


def _buffer_issues(spec: FreezeSpec, run: RunFacts,
                   aliases: Mapping[str, tuple[str, ...]] | None = None) -> list[FreezeIssue]:
    out: list[FreezeIssue] = []
    for b in run.buffers:  # a shared module's buffer is frozen when any of its names is
        pattern = next((pt for n in (aliases or {}).get(b.name, (b.name,)) if (pt := spec.buffer_frozen(n))), None)
        if pattern is None or not b.changed:
            continue
        frozen_root = next((a for a in _ancestors(b.module) if a and pattern_matches(pattern, a)), b.module)
        fix = f"{py_path(frozen_root)}.eval()"
        out.append(FreezeIssue(
            "buffer", b.name, "unchanged in the train-mode forward", "changed",
            f"buffer '{b.name}' of frozen module {_label(b.module)} changed in the train-mode forward: its running "
            f"statistics drift although the module is frozen; put those modules in eval mode after model.train() "
            f"({fix}) or use a frozen BatchNorm (torchvision.ops.FrozenBatchNorm2d); --allow-buffer-updates "
            f"turns this check off", (f"frozen {pattern}",)))
    return out


def _unlisted_issues(run: RunFacts, classes: dict[str, Classification]) -> list[FreezeIssue]:
    unlisted = [p for p in run.parameters if classes[p.name].expected == "unlisted" and not classes[p.name].conflict]
    if not unlisted:
        return []
    names = {p.name for p in unlisted}
    groups: list[tuple[str, list[ParamFact]]] = []
    covered: set[str] = set()
    for mod in run.modules:  # parents before children
        inside = [p for p in run.parameters if _in_subtree(p.module, mod.name)]
        if not inside or any(p.name in covered for p in inside):
            continue
        if all(p.name in names for p in inside):
            groups.append((mod.name, inside))
            covered.update(p.name for p in inside)
    groups += [(p.name, [p]) for p in unlisted if p.name not in covered]
    out = []
    for subject, params in groups:
        flags = {p.requires_grad for p in params}
        state = f"requires_grad={flags.pop()}" if len(flags) == 1 else "mixed requires_grad"
        what = f"parameter '{subject}'" if len(params) == 1 and params[0].name == subject else (
            f"{len(params)} parameter(s) of module {_label(subject)}")
        out.append(FreezeIssue(
            "unlisted", subject or "(model)", "matched by a frozen or trainable pattern",
            f"matched by no pattern ({state})",
            f"{what} matched by no pattern ({state}): add '{subject or '*'}' to frozen or trainable "
            f"(or pass --unlisted ignore)", ("unlisted",)))
    return out
