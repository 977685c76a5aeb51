"""Optimizer rules: param-group membership and what the training steps did to each parameter.

No torch here.  The facts come from the steps a training loop runs (``OptimizerParam``): gradients as
backward left them, ``step()``, the optimizer's own ``zero_grad()``.  A frozen parameter fails only on a
fact: it moved, the optimizer already holds state for it, or it sits in two param groups.  A frozen
parameter that merely sits in a param group is a warning: it does not move now, and would if it ever
got a gradient.
"""

from __future__ import annotations

from gradprobe.facts.freeze import FreezeIssue, OptimizerFacts, OptimizerParam, OptimizerState
from gradprobe.facts.run import GradState, ParamFact
from gradprobe.judges.freeze.text import issue, num
from gradprobe.units import human_bytes

Verdicts = list[tuple[FreezeIssue, bool]]
OPTIMIZER_FIX = "build the optimizer from [p for p in model.parameters() if p.requires_grad]"
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _number(opt: OptimizerFacts, group: int, key: str) -> float:
    g = opt.group(group)
    value = g.setting(key) if g is not None else None
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def _state_text(state: OptimizerState) -> str:
    return f"{', '.join(state.keys) or 'entries'}: {state.nbytes} bytes"


def risk(opt: OptimizerFacts, group: int) -> str:
    """What keeps moving a parameter of this group once it has had a gradient (from the settings only)."""
    g = opt.group(group)
    risks = []
    if _number(opt, group, "momentum"):
        risks.append(f"momentum={g.setting('momentum') if g else '?'}")
    if g is not None and g.setting("betas") is not None:
        risks.append("Adam's running averages")
    if _number(opt, group, "weight_decay"):
        risks.append(f"weight_decay={g.setting('weight_decay') if g else '?'} (even on a zero .grad)")
    return f", and from then on {' and '.join(risks)} keep moving it" if risks else ""


def mechanisms(opt: OptimizerFacts, o: OptimizerParam) -> tuple[str, ...]:
    """What moved a frozen parameter that changed in the steps (``MECHANISMS``), read off the facts."""
    if not o.groups:
        return ("shared-storage",)
    if o.had_grad:
        return ("gradient",)
    group = o.groups[0]
    held = set(o.state_before.nonzero) | set(o.state_after.nonzero)
    out = []
    if o.stale_grad == GradState.NONZERO and o.moved_step == 1:
        out.append("stale-grad")
    if "momentum_buffer" in held and _number(opt, group, "momentum"):
        out.append("momentum")
    if "exp_avg" in held:
        out.append("adam-state")
    if _number(opt, group, "weight_decay"):
        out.append("weight-decay")
    if not out and held - {"momentum_buffer", *_ADAM_KEYS}:
        out.append("optimizer-state")
    return tuple(out) or ("update-rule",)


def _mechanism_text(opt: OptimizerFacts, o: OptimizerParam, mechanism: str) -> str:
    g = opt.group(o.groups[0] if o.groups else -1)
    resumed = " (held since before these steps: a resumed checkpoint)"
    if mechanism == "stale-grad":
        return "its stale nonzero .grad"
    if mechanism == "momentum":
        return (f"momentum={g.setting('momentum') if g else '?'} via its momentum_buffer"
                + (resumed if "momentum_buffer" in o.state_before.nonzero else ""))
    if mechanism == "adam-state":
        betas = g.setting("betas") if g is not None else None
        keys = [k for k in _ADAM_KEYS if k in (*o.state_before.nonzero, *o.state_after.nonzero)]
        return (f"Adam's state {'/'.join(keys)}" + (f" with betas={betas}" if betas else "")
                + (resumed if "exp_avg" in o.state_before.nonzero else ""))
    if mechanism == "weight-decay":
        kind = "decoupled weight decay" if "AdamW" in opt.type else "an L2 term added to its gradient"
        return f"weight_decay={g.setting('weight_decay') if g else '?'} as {kind}"
    if mechanism == "optimizer-state":
        other = [k for k in (*o.state_before.nonzero, *o.state_after.nonzero)
                 if k not in ("momentum_buffer", *_ADAM_KEYS)]
        return f"its optimizer state {', '.join(dict.fromkeys(other))}" + (resumed if o.state_before.nonzero else "")
    return f"{opt.type}'s update rule"


def _moved_cause(opt: OptimizerFacts, o: OptimizerParam, mechs: tuple[str, ...]) -> tuple[str, str]:
    """(cause, fix) of a frozen parameter the steps moved."""
    if mechs == ("shared-storage",):
        return ("changed in optimizer.step(): it is in no param group, so it shares storage with a parameter "
                "the optimizer updates (a view, .data or .set_() alias of a trainable tensor)",
                "give it its own copy with .clone()")
    if mechs == ("gradient",):
        return "changed in optimizer.step(): it received a gradient", OPTIMIZER_FIX
    fixes = []
    if o.moved_step == 1 and o.stale_grad:
        held = (f"it still holds the {o.stale_grad} .grad it had when handed over (backward does not reach it, so "
                f"nothing resets it), so {opt.type}.step() updates it")
        fixes.append("set p.grad = None when you freeze p")
    else:
        held = f"{opt.type}.zero_grad() leaves it a zero .grad (set_to_none=False), so step() keeps updating it"
        fixes.append("call zero_grad(set_to_none=True)")
    if o.state_before.exists:
        fixes.append("drop its optimizer state (del optimizer.state[p])")
    by = " and ".join(_mechanism_text(opt, o, m) for m in mechs)
    cause = (f"changed in optimizer.step() without a gradient from backward (step {o.moved_step or '?'} of "
             f"{opt.steps}): {held}; moved by {by}")
    return cause, f"{', '.join(fixes)}, and {OPTIMIZER_FIX}"


def frozen_issues(p: ParamFact, o: OptimizerParam, opt: OptimizerFacts, groups: tuple[str, ...]) -> Verdicts:
    """A frozen parameter: a step violation when it moved, else a param-group warning or state violation."""
    kind = "frozen parameter"
    if o.moved:
        mechs = mechanisms(opt, o)
        cause, fix = _moved_cause(opt, o, mechs)
        return [(issue("step", p.name, "bit-identical after optimizer.step()", f"changed by up to {num(o.delta)}",
                       cause, kind=kind, fix=fix, groups=groups, mechanism=mechs), True)]
    if not o.groups:
        return []
    g = o.groups[0]
    if o.state_before.exists:
        moves = ("that state moves it in every step() in which it has a .grad, even a zero one (zero_grad("
                 "set_to_none=False), or once it is unfrozen)" if o.state_before.nonzero else
                 "that state costs memory and is updated once it has a .grad")
        return [(issue("optimizer", p.name, "in no param group, without optimizer state",
                       f"in param group {g}, holding optimizer state ({_state_text(o.state_before)})",
                       f"is in param group {g} of {opt.type}, which already holds optimizer state for it (a resumed "
                       f"checkpoint, or training before it was frozen): {moves}", kind=kind,
                       fix=f"{OPTIMIZER_FIX}, or drop its state (del optimizer.state[p]) when freezing",
                       groups=groups), True)]
    if opt.steps_skipped:
        now = f"; whether it moves was not measured ({opt.steps_skipped})"
        found = f"in param group {g}"
    elif o.state_after.exists:
        now = (f", but it did not move in {opt.steps} steps; {opt.type}.step() does create optimizer state for it "
               f"({', '.join(o.state_after.keys)}), because it holds a {o.stale_grad or 'zero'} .grad from "
               f"before it was frozen")
        found = f"in param group {g}; step() created optimizer state ({_state_text(o.state_after)})"
    else:
        now = (f", but it does not move: its .grad stays None, so {opt.type} skips it and creates no state for it"
               if o.stale_grad is None else
               f", but it does not move: its {o.stale_grad} .grad changes nothing with these settings and creates "
               f"no state")
        now += f" ({opt.steps} steps checked)"
        found = f"in param group {g}, unchanged, no optimizer state"
    return [(issue("optimizer", p.name, "in no param group", found,
                   f"is in param group {g} of {opt.type}{now}; it would move if it ever got a gradient (e.g. "
                   f"unfrozen later, or zero_grad(set_to_none=False) after it had one){risk(opt, g)}",
                   kind=kind, fix=OPTIMIZER_FIX, groups=groups), False)]


def trainable_issues(p: ParamFact, o: OptimizerParam, opt: OptimizerFacts, groups: tuple[str, ...]) -> Verdicts:
    if not p.requires_grad:
        return []
    kind = "trainable parameter"
    if not o.groups:
        return [(issue("optimizer", p.name, "in a param group", "in no param group",
                       f"is in no param group of {opt.type}: it gets gradients but is never updated", kind=kind,
                       fix="add it to the optimizer (build the optimizer after unfreezing)", groups=groups,
                       sep=": "), True)]
    if o.moved is False and o.had_grad:  # without a gradient the gradient check already reported it
        lr = next((g.setting("lr") for g in opt.groups if g.index == o.groups[0]), None)
        if lr is not None and _number(opt, o.groups[0], "lr") == 0:
            why = f"its param group has lr={lr}"
        else:
            why = f"its gradient is zero or lr={lr} is too small to change it" if lr else "its update was zero"
        return [(issue("step", p.name, "changed by optimizer.step()", "unchanged",
                       f"did not change in optimizer.step(): {why}", kind=kind, groups=groups), False)]
    return []


def duplicate_issue(p: ParamFact, o: OptimizerParam, opt: OptimizerFacts, kind: str,
                    groups: tuple[str, ...]) -> FreezeIssue | None:
    """A parameter listed in two param groups (or twice in one) is stepped once per listing."""
    if len(o.groups) < 2:
        return None
    where = (f"listed {len(o.groups)} times in param group {o.groups[0]}" if len(set(o.groups)) == 1 else
             f"in param groups {', '.join(map(str, o.groups))}")
    return issue("optimizer", p.name, "in one param group", where,
                 f"is {where} of {opt.type}: every step() updates it once per listing, with each group's settings "
                 f"(torch.optim refuses a parameter in two groups when they are built, so the groups were edited "
                 f"afterwards)", kind=kind, fix="keep each parameter in exactly one param group", groups=groups)


def foreign_issue(opt: OptimizerFacts) -> FreezeIssue:
    return issue("optimizer", "(optimizer)", "only parameters of this model", f"{opt.foreign} foreign tensor(s)",
                 f"{opt.foreign} tensor(s) in the param groups of {opt.type} are not parameters of this model: the "
                 f"optimizer was built for another model instance (built before a deepcopy, or from a different "
                 f"model)", groups=("optimizer",))


def state_note(opt: OptimizerFacts, frozen: set[str]) -> str | None:
    """Optimizer state for frozen parameters, measured: state handed over, or state the steps created."""
    rows = [o for o in opt.params if o.name in frozen]
    held = [o for o in rows if o.state_before.exists]
    created = [o for o in rows if not o.state_before.exists and o.state_after.exists]
    parts = []
    if held:
        parts.append(f"holds {human_bytes(sum(o.state_before.nbytes for o in held))} of optimizer state for "
                     f"{len(held)} frozen parameter(s)")
    if created:
        parts.append(f"creates {human_bytes(sum(o.state_after.nbytes for o in created))} of optimizer state for "
                     f"{len(created)} frozen parameter(s) in step() (they hold a .grad)")
    return f"{opt.type} " + " and ".join(parts) if parts else None
