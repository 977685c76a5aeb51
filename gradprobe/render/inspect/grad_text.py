"""``inspect --grads`` as JSON (the ``grad_health`` object of ``gradprobe.inspect/1``) and as Markdown.

JSON keeps every call and parameter, in forward order, with the figures as measured; the key is present only
when ``--grads`` was asked for, so the document without it is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from gradprobe.facts.grad_health import CallGrad, GradHealthFacts, NonfiniteOrigin, ParamGrad, ValueStats
from gradprobe.facts.run import InspectReport, ParamFact, RunFacts
from gradprobe.judges.grad_health.dead_units import zero_grad_causes
from gradprobe.judges.grad_health.scale import scale_profile
from gradprobe.judges.grad_health.words import label
from gradprobe.render.common import md_escape
from gradprobe.render.inspect.grad_flow import ratio
from gradprobe.render.inspect.grad_rows import ParamNorms, bar, flow, number, scale_of


def _num(x: float | None) -> float | str | None:
    """JSON has no NaN/Inf: written as strings, as the rest of the document does."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def _param(facts: RunFacts, g: ParamGrad, p: ParamFact | None, cause: str | None) -> dict[str, Any]:
    return {
        "name": g.name, "dtype": g.dtype or None, "numel": g.numel,
        "grad_norm": _num(p.grad_norm) if p is not None else None, "grad_max_abs": _num(g.max_abs),
        "weight_norm": _num(g.weight_norm), "grad_to_weight": _num(ratio(p, g)) if p is not None else None,
        "zeros": g.zeros, "zero_share": g.zero_share, "nan": g.nan, "inf": g.inf, "subnormal": g.subnormal,
        "zero_rows": g.zero_rows, "rows": g.rows, "zero_cols": g.zero_cols, "cols": g.cols,
        "zero_cause": cause,
    }


def _call(c: CallGrad, norms: ParamNorms) -> dict[str, Any]:
    return {
        "module": c.module, "call": c.call, "type": c.type, "parent": c.parent, "returned": c.finished,
        "outputs": c.outputs, "output_numel": c.output_numel, "output_dtype": c.output_dtype,
        "nonfinite": c.nonfinite, "grad_out_norm": _num(c.grad_out_norm), "grad_in_norm": _num(c.grad_in_norm),
        "grad_out_rms": _num(c.grad_out_rms), "grad_in_rms": _num(c.grad_in_rms),
        "param_grad_norm": _num(norms.of(c.module, whole=False)),
        "grad_out_dtype": c.grad_out_dtype, "grad_out_numel": c.grad_out_numel,
        "grad_out_zeros": c.grad_out_zeros, "grad_out_subnormal": c.grad_out_subnormal,
        "backward_rank": c.backward_rank, "inputs_from": list(c.inputs_from),
        "dead_units": None if c.dead is None else {
            "units": c.dead.units, "dead": c.dead.dead, "dim": c.dead.dim, "samples": c.dead.samples,
            "first_dead": list(c.dead.first_dead)},
    }


def _stats(s: ValueStats) -> dict[str, Any]:
    return {"dtype": s.dtype, "shape": list(s.shape), "numel": s.numel, "min": _num(s.min), "max": _num(s.max),
            "zeros": s.zeros, "negatives": s.negatives, "nan": s.nan, "inf": s.inf}


def _origin(gh: GradHealthFacts, o: NonfiniteOrigin | None) -> dict[str, Any] | None:
    if o is None:
        return None
    c = gh.calls[o.call] if o.call is not None and 0 <= o.call < len(gh.calls) else None
    return {"call_index": o.call, "module": c.module if c else None, "call": c.call if c else None,
            "op": o.op, "inputs": [_stats(s) for s in o.inputs], "scalars": [_num(v) for v in o.scalars],
            "made_nan": o.made_nan, "made_inf": o.made_inf, "dtype": o.dtype or None,
            "float64_max_abs": _num(o.wide_max_abs), "float64_finite": o.wide_finite, "note": o.note or None,
            "neg_inf_slices": o.neg_inf_slices, "slices": o.slices, "reduced": o.reduced, "correction": o.correction}


def grad_health_json(report: InspectReport) -> dict[str, Any]:
    """``{"grad_health": {...}}`` when the run measured gradient health, else ``{}`` (the document unchanged)."""
    facts = report.facts
    gh = facts.grad_health
    if gh is None:
        return {}
    profile = scale_profile(gh) if gh.backward and gh.measured else None
    t = gh.thresholds
    by_name = {p.name: p for p in facts.parameters}
    causes = zero_grad_causes(facts)
    norms = ParamNorms(facts)
    return {"grad_health": {
        "measured": gh.measured, "backward": gh.backward,
        "thresholds": {"factor": t.factor, "subnormal_share": t.subnormal_share,
                       "dead_min_samples": t.dead_min_samples, "dead_share": t.dead_share},
        "parameters": [_param(facts, g, by_name.get(g.name), causes.get(g.name)) for g in gh.parameters],
        "calls": [_call(c, norms) for c in gh.calls],
        "forward_origin": _origin(gh, gh.forward_origin),
        "backward_nodes": [{"kind": n.kind, "call_index": n.call, "rank": n.rank, "nonfinite_out": n.nonfinite_out,
                            "saved_nonfinite": n.saved_nonfinite, "saved_negatives": n.saved_negatives,
                            "saved_zeros": n.saved_zeros}
                           for n in gh.backward_nodes],
        "scale": None if profile is None else {
            "blocks": list(profile.blocks), "start_rms": _num(profile.start_rms), "end_rms": _num(profile.end_rms),
            "ratio": _num(profile.ratio), "largest_step": profile.worst, "largest_step_gain": _num(profile.worst_gain),
            "spreading": [{"call_index": i, "gain": _num(g)} for i, g in profile.spreading]},
        "notes": list(gh.notes),
    }}


def _code(bar_text: str) -> str:
    return f"`{bar_text.rstrip()}`" if bar_text.strip() else ""


def grad_health_markdown(report: InspectReport, top: int | None = 40) -> str:
    """The gradient-flow rows and the parameter gradients as Markdown ("" without ``--grads``)."""
    facts = report.facts
    gh = facts.grad_health
    if gh is None:
        return ""
    if not gh.measured:
        return "### Gradient flow\n\n_not measured: " + "; ".join(gh.notes) + "_\n"
    shown = flow(facts, limit=top)
    act_scale = scale_of(r.act for r in shown.rows)
    param_scale = scale_of(r.params for r in shown.rows)
    out = ["### Gradient flow", "",
           f"{len(gh.calls)} module calls in forward order: the norm of the gradient reaching each call's output and "
           f"of its parameters' gradients (bars on a log10 scale).", "",
           "| module (call) | ‖g‖ at output | | ‖param grads‖ | | notes |", "|---|---|---:|---|---:|---|"]
    for r in shown.rows:
        if r.gap_before:
            out.append(f"| _… {r.gap_before} calls …_ | | | | | |")
        notes = ([f"{r.nonfinite} NaN/Inf in its output"] if r.nonfinite else []) + list(r.marks)
        name = "&nbsp;" * (2 * r.level) + f"`{r.name}`" + (f" (+{r.hidden})" if r.hidden else "")
        out.append(f"| {name} | {_code(bar(r.act, act_scale, 12))} | {number(r.act)} | "
                   f"{_code(bar(r.params, param_scale, 12))} | {number(r.params) if r.params is not None else ''} | "
                   f"{md_escape(', '.join(notes))} |")
    if shown.note:
        out += ["", f"_{shown.note}_"]
    if gh.forward_origin is not None and gh.forward_origin.call is not None:
        out += ["", f"First NaN/Inf of the forward: {label(gh, gh.forward_origin.call)}"
                    + (f", op `{gh.forward_origin.op}`" if gh.forward_origin.op else "") + "."]
    if gh.backward:
        grads = {g.name: g for g in gh.parameters}
        causes = zero_grad_causes(facts)
        params = list(facts.parameters)[:top] if top else list(facts.parameters)
        out += ["", f"### Parameter gradients ({len(facts.parameters)})", "",
                "| parameter | ‖g‖ | max\\|g\\| | ‖g‖/‖w‖ | zeros | NaN/Inf |", "|---|---:|---:|---:|---:|---:|"]
        for p in params:
            g = grads.get(p.name)
            cause = causes.get(p.name)
            zeros = "-" if g is None or g.zeros is None else f"{g.zeros}" + (f" ({cause})" if cause else "")
            bad = "-" if g is None or g.nonfinite is None else g.nonfinite
            out.append(f"| `{p.name}` | {number(p.grad_norm)} | {number(g.max_abs if g else None)} | "
                       f"{number(ratio(p, g))} | {zeros} | {bad} |")
        if len(params) < len(facts.parameters):
            out.append(f"\n_{len(facts.parameters) - len(params)} more parameters: use --format json for all._")
    return "\n".join(out) + "\n"
