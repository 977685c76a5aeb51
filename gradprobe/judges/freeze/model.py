"""Model-wide freeze rules: the baseline file, buffers of frozen modules, parameters no pattern lists.

No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.facts.run import BufferFact, ParamFact, RunFacts
from gradprobe.judges.freeze.text import ancestors, in_subtree, issue, label
from gradprobe.judges.freeze_spec import Classification, FreezeSpec, pattern_matches
from gradprobe.units import py_path

_REWRITE = "review it and rewrite the baseline with --write-baseline"
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def baseline_issues(spec: FreezeSpec, run: RunFacts, flagged: set[str]) -> list[FreezeIssue]:
    """Every parameter name against the baseline's: new, changed flag, gone."""
    assert spec.baseline is not None
    out: list[FreezeIssue] = []
    where = f"baseline {spec.baseline_path}" if spec.baseline_path else "the baseline"
    seen: set[str] = set()
    for p in run.parameters:
        seen.update(p.names)
        for n in p.names:
            if n not in spec.baseline:
                out.append(issue("flag", n, "listed in the baseline",
                                 f"new parameter (requires_grad={p.requires_grad})",
                                 f"is not in {where}: the model changed", kind="parameter", fix=_REWRITE,
                                 groups=("baseline",)))
            elif spec.baseline[n] != p.requires_grad and p.name not in flagged:
                out.append(issue(
                    "flag", n, f"requires_grad={spec.baseline[n]} (baseline)", f"requires_grad={p.requires_grad}",
                    f"has requires_grad={p.requires_grad} but {where} says {spec.baseline[n]}: the freeze changed",
                    kind="parameter", fix="fix the freeze, or review and rewrite the baseline with --write-baseline",
                    groups=("baseline",)))
    for n in spec.baseline:
        if n not in seen:
            out.append(issue("flag", n, "present (baseline)", "no such parameter",
                             f"from {where} is not in the model: renamed or removed", kind="parameter", fix=_REWRITE,
                             groups=("baseline",)))
    return out


def _buffer_issue(b: BufferFact, pattern: str, module_type: str | None) -> FreezeIssue:
    frozen_root = next((a for a in ancestors(b.module) if a and pattern_matches(pattern, a)), b.module)
    leaf = b.name.rpartition(".")[2]
    if leaf in _BN_STATS and (module_type is None or "Norm" in module_type):
        cause = ("of a frozen module changed in the train-mode forward: its running statistics drift although "
                 "the module is frozen")
        fix = (f"put those modules in eval mode after model.train() ({py_path(frozen_root)}.eval()) or use a frozen "
               f"BatchNorm (torchvision.ops.FrozenBatchNorm2d); --allow-buffer-updates turns this check off")
    else:
        what = f"its {module_type} module" if module_type else "its module"
        cause = (f"of a frozen module changed in the train-mode forward: {what} updates it in train mode although "
                 f"it is frozen")
        fix = (f"put those modules in eval mode after model.train() ({py_path(frozen_root)}.eval()) if the update "
               f"must stop; --allow-buffer-updates turns this check off")
    return issue("buffer", b.name, "unchanged in the train-mode forward", "changed", cause, kind="buffer", fix=fix,
                 groups=(f"frozen {pattern}",))


def buffer_issues(spec: FreezeSpec, run: RunFacts,
                  aliases: Mapping[str, tuple[str, ...]] | None = None) -> list[FreezeIssue]:
    """Buffers of frozen modules that the train-mode forward changed."""
    types = {m.name: m.type for m in run.modules}
    out: list[FreezeIssue] = []
    for b in run.buffers:  # a shared module's buffer is frozen when any of its names is
        pattern = next((pt for n in (aliases or {}).get(b.name, (b.name,)) if (pt := spec.buffer_frozen(n))), None)
        if pattern is not None and b.changed:
            out.append(_buffer_issue(b, pattern, types.get(b.module)))
    return out


def unlisted_issues(run: RunFacts, classes: dict[str, Classification]) -> list[FreezeIssue]:
    """Parameters no pattern claims, one issue per outermost module that holds only such parameters."""
    unlisted = [p for p in run.parameters if classes[p.name].expected == "unlisted" and not classes[p.name].conflict]
    if not unlisted:
        return []
    names = {p.name for p in unlisted}
    groups: list[tuple[str, list[ParamFact]]] = []
    covered: set[str] = set()
    for mod in run.modules:  # parents before children
        inside = [p for p in run.parameters if in_subtree(p.module, mod.name)]
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
            f"{len(params)} parameter(s) of module {label(subject)}")
        out.append(issue("unlisted", subject or "(model)", "matched by a frozen or trainable pattern",
                         f"matched by no pattern ({state})", f"{what} matched by no pattern ({state})",
                         fix=f"add '{subject or '*'}' to frozen or trainable (or pass --unlisted ignore)",
                         groups=("unlisted",), sep=": "))
    return out
