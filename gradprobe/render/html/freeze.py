"""``gradprobe freeze-check --format html``: pass or fail, the violations and warnings, every parameter with
what the spec expects and what the run showed (sortable, filterable), and the run's memory timeline and grad_fn
graph (frozen, trainable and unused parameters marked) when the run recorded them (the CLI asks for them with
``--format html``)."""

from __future__ import annotations

from html import escape

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.judges.freeze import FreezeReport
from gradprobe.render.html.page import Section, cards, cell, key_values, page, table
from gradprobe.render.html.run_views import graph_section, memory_section
from gradprobe.units import human_bytes


def _issues(issues: tuple[FreezeIssue, ...], severity: str) -> str:
    if not issues:
        return '<p><span class="pill ok">none</span></p>'
    return "".join(
        f'<div class="finding {severity}"><div class="head"><span class="pill {severity}">{escape(i.check)}</span>'
        f"<code>{escape(i.subject)}</code></div><div>{escape(i.message)}</div>"
        f'<div class="fix">expected {escape(i.expected)}, found {escape(i.found)}</div></div>' for i in issues)


def freeze_html(report: FreezeReport) -> str:
    run = report.facts.run
    status = "passed" if report.passed else "failed"
    items = [
        ("freeze check", status, f"{len(report.violations)} violations · {len(report.warnings)} warnings"),
        ("parameters", str(len(report.parameters)),
         f"{sum(p.requires_grad for p in report.parameters)} require grad"),
    ]
    if run.memory is not None:
        items += [("forward peak", human_bytes(run.memory.forward_peak_bytes), "tensor bytes created in the run"),
                  ("backward peak", human_bytes(run.memory.backward_peak_bytes), "gradients included")]
    summary = cards(items) + key_values([("torch / device", f"{run.torch_version} / {run.device}"),
                     ("frozen", ", ".join(report.frozen) or "-"), ("trainable", ", ".join(report.trainable) or "-"),
                     ("unlisted", report.unlisted), ("config", report.config or "-")]
                    + [("note", n) for n in report.notes])
    rows = []
    for p in report.parameters:
        actual = "trainable" if p.requires_grad else "frozen"
        wrong = p.expected in ("frozen", "trainable") and p.expected != actual
        state = f'<span class="pill {"error" if wrong else actual}">{actual}</span>'
        rows.append([cell(", ".join((p.name, *p.aliases)), None, "mono"), cell(p.expected),
                     cell(state, 1 if wrong else 0, "", html=True), cell("-" if p.grad is None else p.grad.value),
                     cell(", ".join(p.groups) or "-"),
                     cell("-" if p.optimizer_group is None else p.optimizer_group,
                          -1 if p.optimizer_group is None else p.optimizer_group, "num")])
    sections = [Section("summary", "Summary", summary),
                Section("violations", f"Violations ({len(report.violations)})", _issues(report.violations, "error")),
                Section("warnings", f"Warnings ({len(report.warnings)})", _issues(report.warnings, "warning")),
                Section("parameters", f"Parameters ({len(report.parameters)})",
                        table("freeze-parameters", ["name", "expected", "requires_grad", "grad", "spec groups",
                                                    ("optimizer group", "num")], rows,
                              placeholder="filter parameters…"))]
    if run.memory is not None:
        sections.append(Section("memory", "Memory", memory_section(run)))
    if run.memory is not None or run.graph is not None:  # recorded: the graph section says when there is none
        depth = run.graph.display_depth if run.graph is not None else 8
        sections.append(Section("graph", "grad_fn graph", graph_section(run, depth)))
    return page(f"gradprobe freeze-check `{report.target}`", f"the freeze {status} · torch {run.torch_version}",
                sections, "gradprobe freeze-check")
