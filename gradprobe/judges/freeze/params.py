"""Per-parameter freeze rules: tied-name conflicts, ``requires_grad`` flags and gradients.

No torch here.  Each function returns ``(issue, is_violation)`` pairs for one parameter.
"""

from __future__ import annotations

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.facts.run import GradState, ParamFact, RunFacts
from gradprobe.judges.freeze.causes import Causes, effective_grad
from gradprobe.judges.freeze.text import DDP_NOTE, issue, label, short
from gradprobe.judges.freeze_spec import Classification
from gradprobe.units import py_path, shorten

Verdicts = list[tuple[FreezeIssue, bool]]
_FORWARD_FIX = "set the flag once, before building the optimizer, not inside forward"


def conflict(p: ParamFact, c: Classification) -> FreezeIssue:
    (fp, fname), (tp, tname) = c.frozen_by[0], c.trainable_by[0]
    tied = len(p.names) > 1 and fname != tname
    state = "trained under every name" if p.requires_grad else "frozen under every name"
    if tied:
        why = (f"it is one tied Parameter ('{fname}' and '{tname}' share storage), so it cannot be both; with "
               f"requires_grad={p.requires_grad} it is {state}")
        fix = "untie the weights or list both names on one side"
    else:
        why, fix = "the patterns overlap", "make them disjoint"
    return issue("conflict", p.name, "frozen or trainable, not both",
                 f"frozen by '{fp}' (as '{fname}'), trainable by '{tp}' (as '{tname}')",
                 f"parameter '{p.name}' is matched by frozen pattern '{fp}' and trainable pattern '{tp}': {why}",
                 fix=fix, groups=("conflict",))


def _flipped(p: ParamFact, after: bool) -> str:
    return (f"forward changes it: requires_grad={p.requires_grad} when the model is handed over (what an "
            f"optimizer built before the first forward sees) and {after} after forward")


def _frozen_flag_cause(p: ParamFact, grad: GradState | None, causes: Causes) -> tuple[str, str | None]:
    """(cause, fix) of a frozen parameter that still has ``requires_grad=True``."""
    attr = causes.attr_module(p.module)
    if attr is not None:
        return (f"module {label(attr.name)} has a plain attribute requires_grad={attr.requires_grad_attr}, "
                f"which freezes nothing", f"call {py_path(attr.name)}.requires_grad_({attr.requires_grad_attr})")
    if grad is GradState.ABSENT:
        region = causes.cut_region(p.module)
        idle = causes.never_called(p.module)
        if region is not None:
            how = (f"'frozen' by torch.no_grad() or detach() inside forward (the output of {label(region)} has no "
                   f"grad_fn)")
        elif idle is not None:
            how = f"without gradient only because module '{idle}' is never called"
        else:
            how = (f"'frozen' by detaching it from the loss (module {label(causes.cut_root(p.module))} builds a "
                   f"graph the loss does not reach: .detach(), .data or a non-differentiable op)")
        return (f"it is {how}, which leaves requires_grad=True: it still lands in the optimizer and {DDP_NOTE}",
                "call requires_grad_(False) on it instead")
    return ("requires_grad_(False) was never called on it, or a later requires_grad_(True) / "
            "model.requires_grad_() undid it: it is being trained", None)


def frozen_issues(p: ParamFact, grad: GradState | None, causes: Causes, groups: tuple[str, ...], flags: bool,
                  after: bool | None) -> Verdicts:
    """Flag and gradient violations of a parameter the spec says is frozen."""
    kind = "frozen parameter"
    out: Verdicts = []
    if after is True and not p.requires_grad and flags:
        out.append((issue("flag", p.name, "requires_grad=False", "requires_grad=True after forward",
                          f"is unfrozen by forward: {_flipped(p, after)}", kind=kind, fix=_FORWARD_FIX,
                          groups=groups), True))
    if p.requires_grad and flags and after is False:
        out.append((issue("flag", p.name, "requires_grad=False", "requires_grad=True before forward",
                          f"has requires_grad=True: {_flipped(p, after)}", kind=kind, fix=_FORWARD_FIX,
                          groups=groups), True))
    elif p.requires_grad and flags:
        cause, fix = _frozen_flag_cause(p, grad, causes)
        out.append((issue("flag", p.name, "requires_grad=False", "requires_grad=True",
                          f"has requires_grad=True: {cause}", kind=kind, fix=fix, groups=groups), True))
    if grad is not None and grad.received:
        out.append((issue("gradient", p.name, "no gradient (.grad is None)", f"a {grad} gradient",
                          "received a gradient in backward: any optimizer that holds it will update it",
                          kind=kind, groups=groups), True))
    return out


def trainable_issues(p: ParamFact, grad: GradState | None, causes: Causes, groups: tuple[str, ...], flags: bool,
                     after: bool | None) -> Verdicts:
    """Flag and gradient issues of a parameter the spec says is trainable.

    No gradient after backward is a violation, as ``inspect`` reports it: the parameter never trains.
    """
    kind = "trainable parameter"
    out: Verdicts = []
    if after is False and p.requires_grad and flags:
        out.append((issue("flag", p.name, "requires_grad=True", "requires_grad=False after forward",
                          f"is frozen by forward: {_flipped(p, after)}", kind=kind, fix=_FORWARD_FIX,
                          groups=groups), True))
    if not p.requires_grad:
        if flags:
            out.append((issue(
                "flag", p.name, "requires_grad=True", "requires_grad=False",
                f"has requires_grad=False, so it is never trained: a broader requires_grad_(False) (on the model "
                f"or a parent of {label(p.module)}) froze it", kind=kind,
                fix="call requires_grad_(True) on it after freezing", groups=groups), True))
    elif grad is GradState.ABSENT:
        why = causes.no_gradient(p)
        tail = DDP_NOTE if "cut off from the loss" in why else f"it is cut off from the loss, and {DDP_NOTE}"
        out.append((issue("gradient", p.name, "a gradient", ".grad is None", f"received no gradient: {why}; {tail}",
                          kind=kind, groups=groups), True))
    elif grad is GradState.ZERO:
        partners, training = causes.zero_factors(p)
        if partners and training:  # measured: a zero-initialised factor that trains (LoRA's B): see zero_factor_note
            return out
        why = (f"{short(partners, 2)} {'is' if len(partners) == 1 else 'are'} all zeros and multiplies it on every "
               f"path from the loss, and got no nonzero gradient itself, so neither will learn from the loss "
               f"(weight decay aside)"
               if partners else "a dead ReLU, a zero mask, a loss that does not depend on it, or a factor "
               "initialised to zero (a LoRA adapter's first step)")
        out.append((issue("gradient", p.name, "a nonzero gradient", "a gradient that is exactly zero",
                          f"received a gradient that is exactly zero: {why}", kind=kind, groups=groups), False))
    return out


def zero_factor_note(run: RunFacts, causes: Causes, trainable: set[str]) -> str | None:
    """Trainable parameters whose exactly-zero gradient an all-zero factor that trains explains (every
    ``lora_A`` at a LoRA model's first step): expected, so a note rather than a warning."""
    pairs = []
    for p in run.parameters:
        if p.name in trainable and p.requires_grad and effective_grad(run, p) is GradState.ZERO:
            partners, training = causes.zero_factors(p)
            if partners and training:
                pairs.append(f"'{p.name}' (with '{partners[0]}')")
    if not pairs:
        return None
    return (f"{len(pairs)} trainable parameter(s) got a gradient that is exactly zero because an all-zero factor "
            f"multiplies each on every path from the loss, and that factor got a nonzero gradient (a zero-initialised "
            f"adapter such as LoRA's B): {shorten(pairs, 2, quote=False)}; expected on the first step, they get a "
            f"gradient once the factor has taken an optimizer step")


def unlisted_issues(p: ParamFact, grad: GradState | None, causes: Causes) -> Verdicts:
    """Unlisted parameters: only distributed readiness (requires grad, receives none) is worth a warning."""
    if not (p.requires_grad and grad is GradState.ABSENT):
        return []
    return [(issue("gradient", p.name, "a gradient (it requires grad)", ".grad is None",
                   f"requires grad but receives no gradient: {causes.no_gradient(p)}; {DDP_NOTE}",
                   kind="unlisted parameter", groups=("unlisted",)), False)]
