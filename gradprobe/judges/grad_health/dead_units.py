"""``dead-units``: ReLU units no sample activated, the zero gradient rows/columns around them, and why a
parameter's gradient has exact zeros (dead units or a zero-initialised partner)."""

from __future__ import annotations

from gradprobe.facts.grad_health import GradHealthFacts, ParamGrad
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.grad_health.words import label
from gradprobe.judges.gradients import zero_partners


def _param_grads(gh: GradHealthFacts) -> dict[str, ParamGrad]:
    return {p.name: p for p in gh.parameters}


def dead_unit_findings(facts: RunFacts, gh: GradHealthFacts) -> list[Finding]:
    grads = _param_grads(gh)
    by_name = {p.name: p for p in facts.parameters}
    own = {m.name: [by_name[n] for n in m.direct_params if n in by_name] for m in facts.modules}
    findings = []
    for i, c in enumerate(gh.calls):
        d = c.dead
        if d is None or not d.dead:
            continue
        around = []
        for j in c.inputs_from:
            for p in own.get(gh.calls[j].module, ()):
                g = grads.get(p.name)
                if g is not None and g.zero_rows is not None and g.rows:
                    what = "rows" if len(p.shape) >= 2 else "entries"
                    around.append(f"'{p.name}' has {g.zero_rows} of {g.rows} gradient {what} exactly zero")
        for k in gh.consumers.get(i, ()):
            if k != i:
                for p in own.get(gh.calls[k].module, ()):
                    g = grads.get(p.name)
                    if g is not None and g.zero_cols is not None and g.cols:
                        around.append(f"'{p.name}' has {g.zero_cols} of {g.cols} gradient columns exactly zero")
        sure = d.samples >= gh.thresholds.dead_min_samples
        material = d.dead / d.units >= gh.thresholds.dead_share
        units = f"unit{'s' if d.dead > 1 else ''} {', '.join(map(str, d.first_dead))}{' …' if d.dead > 8 else ''}"
        message = (f"{d.dead} of {d.units} units of {label(gh, i)} output 0 for all {d.samples} values of each unit "
                   f"in this batch ({units}, dim {d.dim}): their pre-activations were all <= 0, so no gradient "
                   f"flows through them")
        if around:
            message += "; " + "; ".join(around)
        if not sure:
            message += (f" (with {d.samples} value(s) per unit, inactive in this batch does not prove dead: a larger "
                        f"batch tells)")
        producer = f"'{gh.calls[c.inputs_from[0]].module}'" if c.inputs_from else "the layer before"
        findings.append(Finding(
            "dead-units", "warning" if sure and material else "info", c.module or "(model)", message,
            f"dead ReLUs stay dead: check the bias and initialisation of {producer} (a large negative bias), "
            f"lower the learning rate, or use LeakyReLU/GELU"))
    return findings


def zero_grad_causes(facts: RunFacts) -> dict[str, str]:
    """Why parameters' gradients have exact zeros, where a measurement says so: "dead units" (a ReLU next to
    it had dead units: zero rows or columns were counted), "zero partner" (an all-zero factor next to it, as
    LoRA's B at initialisation: the ``grad-zero`` finding of gradprobe.judges.gradients words it, by the same
    rule).  Parameters without such a cause are left out."""
    gh = facts.grad_health
    if gh is None:
        return {}
    by_name = {p.name: p for p in facts.parameters}
    causes = {}
    for g in gh.parameters:
        if not g.zeros:
            continue
        p = by_name.get(g.name)
        if g.zero_rows or g.zero_cols:
            causes[g.name] = "dead units"
        elif p is not None and g.zeros == g.numel and zero_partners(facts, p):
            causes[g.name] = "zero partner"
    return causes


def zero_grad_cause(facts: RunFacts, name: str) -> str | None:
    """:func:`zero_grad_causes` for one parameter."""
    return zero_grad_causes(facts).get(name)
