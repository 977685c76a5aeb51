"""``gradprobe inspect --format html``: summary, findings, gradient health (``--grads``: where the first NaN/Inf
came from, the gradient flow, parameter gradients), memory (peak anatomy, timeline, checkpointing), the grad_fn
graph as a picture, and the parameter, tensor and buffer tables."""

from __future__ import annotations

from collections.abc import Sequence

from gradprobe.facts.run import InspectReport, RunFacts
from gradprobe.render.graph.collapse import FROZEN, TRAINABLE, param_state
from gradprobe.render.html.grad_health import grad_health_section
from gradprobe.render.html.page import Section, cards, cell, findings_html, key_values, page, table
from gradprobe.render.html.run_views import graph_section, memory_section
from gradprobe.render.memory.anatomy import where
from gradprobe.units import human_bytes, human_count, seconds, shape_text


def _summary(report: InspectReport) -> str:
    f = report.facts
    trainable = [p for p in f.parameters if p.requires_grad]
    m = f.memory
    counts = {s: sum(x.severity == s for x in report.findings) for s in ("error", "warning", "info")}
    items = [
        ("parameters", human_count(sum(p.numel for p in f.parameters)),
         f"{len(f.parameters)} tensors · {len(trainable)} trainable, {len(f.parameters) - len(trainable)} frozen"),
        ("findings", str(len(report.findings)), f"{counts['error']} errors · {counts['warning']} warnings · "
                                                  f"{counts['info']} info"),
    ]
    if m is not None:
        items += [("forward peak", human_bytes(m.forward_peak_bytes), "tensor bytes created in the run"),
                  ("backward peak", human_bytes(m.backward_peak_bytes), "gradients included"),
                  ("saved for backward", human_bytes(m.saved_for_backward_bytes), "kept by autograd after forward")]
    if f.graph is not None:
        items.append(("grad_fn graph", human_count(f.graph.nodes), f"nodes · depth {f.graph.depth}"))
    pairs = [("torch / device", f"{f.torch_version} / {f.device}"), ("mode", f"{f.mode} + {f.grad_mode}"),
             ("loss", "-" if f.loss is None else f"{f.loss:.6g}"),
             ("backward", "ran" if f.backward else f"not run: {f.backward_skipped_reason}")]
    if f.forward_time_s is not None:
        pairs.append(("time", f"forward {seconds(f.forward_time_s)}, backward {seconds(f.backward_time_s)}"))
    for o in f.outputs[:4]:
        pairs.append((o.path, f"{shape_text(o.shape)} {o.dtype} · requires_grad={o.requires_grad} · "
                              f"grad_fn={o.grad_fn} · is_inference={o.is_inference}"))
    pairs += [("note", n) for n in f.notes] + [("skipped", s) for s in f.skipped]
    if m is not None:
        pairs.append(("memory method", m.method))
    return cards(items) + key_values(pairs)


def _parameters(f: RunFacts) -> str:
    reached = f.graph.reached_params if f.graph is not None else frozenset()
    rows = []
    for p in f.parameters:
        state = param_state(p, reached) if f.graph is not None else (TRAINABLE if p.requires_grad else FROZEN)
        rows.append([cell(", ".join(p.names), None, "mono"), cell(shape_text(p.shape), p.numel, "mono"),
                     cell(p.dtype), cell(f'<span class="pill {state}">{state}</span>', None, "", html=True),
                     cell("-" if p.grad is None else p.grad.value),
                     cell("-" if p.grad_norm is None else f"{p.grad_norm:.4g}",
                          p.grad_norm if p.grad_norm is not None else -1, "num"),
                     cell(p.module or "(model)"), cell(human_bytes(p.nbytes), p.nbytes, "num")])
    return table("parameters", ["name", "shape", "dtype", "state", "grad", ("‖grad‖", "num"), "module",
                                ("bytes", "num")], rows, placeholder="filter parameters…")


def _tensors(f: RunFacts) -> str:
    rows = [[cell(where(t.module, t.call)), cell(t.path, None, "mono"), cell(shape_text(t.shape), t.nbytes, "mono"),
             cell(t.dtype), cell("yes" if t.requires_grad else "no"), cell(t.grad_fn or "None", None, "mono"),
             cell("yes" if t.is_inference else "no"), cell(human_bytes(t.nbytes), t.nbytes, "num")]
            for t in f.tensors]
    return table("tensors", ["module (call)", "output", "shape", "dtype", "requires_grad", "grad_fn", "inference",
                             ("bytes", "num")], rows, placeholder="filter module outputs…")


def _buffers(f: RunFacts) -> str:
    rows = [[cell(b.name, None, "mono"), cell(shape_text(b.shape), None, "mono"), cell(b.dtype),
             cell("?" if b.changed is None else ("yes" if b.changed else "no"))] for b in f.buffers]
    return table("buffers", ["name", "shape", "dtype", "changed by the forward"], rows, placeholder="filter buffers…")


def inspect_html(report: InspectReport, depth: int | None = None, extra: Sequence[Section] = ()) -> str:
    """The whole report as one self-contained page; ``extra`` sections (the per-rank ones under torchrun) follow
    the memory section."""
    f = report.facts
    depth = f.graph.display_depth if depth is None and f.graph is not None else (depth or 8)
    sections = [Section("summary", "Summary", _summary(report)),
                Section("findings", f"Findings ({len(report.findings)})",
                        findings_html(report.findings, "autograd sees what a training run expects.")),
                *([Section("grads", "Gradient health", grad_health_section(report))] if f.grad_health else []),
                Section("memory", "Memory", memory_section(f)),
                *extra,
                Section("graph", "grad_fn graph", graph_section(f, depth)),
                Section("parameters", f"Parameters ({len(f.parameters)})", _parameters(f))]
    if f.tensors:
        sections.append(Section("tensors", f"Module outputs ({len(f.tensors)})", _tensors(f)))
    if f.buffers:
        sections.append(Section("buffers", f"Buffers ({len(f.buffers)})", _buffers(f)))
    return page(f"gradprobe inspect `{f.target}`", f"{f.mode} + {f.grad_mode} on {f.device} · torch {f.torch_version}",
                sections, "gradprobe · tensor bytes are storages seen by a TorchDispatchMode, not allocator "
                          "workspaces")
