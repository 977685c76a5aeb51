"""Markdown for pull-request comments and CI step summaries."""

from __future__ import annotations

from gradprobe.facts.run import InspectReport
from gradprobe.render.common import findings_md, md_table
from gradprobe.render.graph.export import mermaid_markdown
from gradprobe.render.inspect.experts import experts_markdown
from gradprobe.render.inspect.grad_text import grad_health_markdown
from gradprobe.render.inspect.words import (
    APPROXIMATE_TITLE,
    CHECKPOINT_TITLE,
    approximate_cells,
    candidate_cells,
    plan_text,
)
from gradprobe.render.memory.view import memory_detail_markdown
from gradprobe.units import human_bytes, shape_text


def inspect_markdown(report: InspectReport, top: int | None = 40) -> str:
    """The inspect report as Markdown: summary, findings, memory, parameters."""
    f = report.facts
    trainable = sum(p.requires_grad for p in f.parameters)
    out = [
        f"## gradprobe inspect `{f.target}`",
        "",
        f"- torch {f.torch_version} on `{f.device}`, mode **{f.mode} + {f.grad_mode}**",
        f"- parameters: {len(f.parameters)} ({trainable} require grad, {len(f.parameters) - trainable} frozen)",
        f"- backward: {'ran' if f.backward else 'not run: ' + str(f.backward_skipped_reason)}",
    ]
    if f.loss is not None:
        out.append(f"- loss: {f.loss:.6g}")
    for o in f.outputs:
        out.append(f"- `{o.path}`: {shape_text(o.shape)} {o.dtype}, requires_grad={o.requires_grad}, "
                   f"grad_fn={o.grad_fn}, is_inference={o.is_inference}")
    if f.graph is not None:
        out.append(f"- grad_fn graph: {f.graph.nodes} nodes, depth {f.graph.depth}")
        picture = mermaid_markdown(f, f.graph.display_depth)  # the graph as a picture on GitHub (issue 14)
        if picture:
            out += ["", picture, ""]
    out += ["", "### Findings", "", findings_md(report.findings)]
    if f.memory is not None:
        m = f.memory
        out += ["", "### Memory", "", md_table(["measure", "bytes"], [
            ("forward peak", human_bytes(m.forward_peak_bytes)),
            ("backward peak", human_bytes(m.backward_peak_bytes)),
            ("saved for backward", human_bytes(m.saved_for_backward_bytes)),
            ("parameters", human_bytes(m.parameter_bytes)),
            ("gradients", human_bytes(m.gradient_bytes)),
        ]), "", f"_{m.method}_"]
        if m.approximate:
            out += ["", f"**{APPROXIMATE_TITLE}**", "",
                    md_table(["module (call)", "op", "why", "that call alone"],
                             [approximate_cells(a) for a in m.approximate])]
    if report.checkpoint_advice and report.checkpoint_plan is not None:
        advice = list(report.checkpoint_advice)
        shown_advice = advice[:top] if top else advice
        out += ["", f"### {CHECKPOINT_TITLE}", "",
                md_table(["module (call)", "type", "saved inside", "expected saving"],
                         [candidate_cells(c) for c in shown_advice]),
                "", f"_{plan_text(report.checkpoint_plan)}_"]
        if len(shown_advice) < len(advice):
            out.append(f"\n_{len(advice) - len(shown_advice)} more calls: use --format json for all._")
    grads = grad_health_markdown(report, top)  # only with --grads (gradprobe.render.inspect.grad_text)
    if grads:
        out += ["", grads.rstrip("\n")]
    if f.memory is not None:
        detail = memory_detail_markdown(f.memory)  # peak anatomy and timeline, with --memory-detail (issue 14)
        if detail:
            out += ["", detail]
    experts = experts_markdown(f, top)  # fused mixture-of-experts parameters, per expert slice
    if experts:
        out += ["", experts]
    params = list(f.parameters)
    shown = params[:top] if top else params
    out += ["", f"### Parameters ({len(params)})", "", md_table(
        ["name", "shape", "dtype", "requires_grad", "grad"],
        [(", ".join(p.names), shape_text(p.shape), p.dtype, p.requires_grad,
          "-" if p.grad is None else p.grad.value) for p in shown])]
    if len(shown) < len(params):
        out.append(f"\n_{len(params) - len(shown)} more parameters: use --format json for all._")
    return "\n".join(out) + "\n"
