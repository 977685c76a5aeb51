"""freeze-check output: a grouped issue list plus a one-line verdict, JSON ``gradprobe.freeze/1``, and Markdown.

No torch here.  The JSON field names are a public contract: add fields freely, never rename.  The verdict
line and the issue texts are the judges' (``FreezeReport.summary()``, ``FreezeIssue``); this module lays
them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.judges.freeze import FreezeReport
from gradprobe.render.common import md_escape, md_table
from gradprobe.render.freeze.groups import IssueGroup, group_issues, module_label

FREEZE_SCHEMA = "gradprobe.freeze/1"
DEFAULT_TOP = 40  # entries per list in the terminal; the JSON report keeps every issue
MODULE_LINES = 8  # modules listed under a roll-up entry


def _patterns(patterns: Sequence[str]) -> str:
    return ", ".join(patterns) if patterns else "-"


def spec_lines(report: FreezeReport) -> list[tuple[str, str]]:
    """What was checked, as (label, value) pairs shared by the table and Markdown views."""
    run = report.facts.run
    rows = [("frozen", _patterns(report.frozen)), ("trainable", _patterns(report.trainable)),
            ("unlisted", report.unlisted)]
    if report.baseline:
        rows.append(("baseline", report.baseline))
    rows.append(("optimizer", report.optimizer or "- (give --optimizer to check param groups and steps)"))
    if report.allow_buffer_updates:
        rows.append(("buffers", "updates allowed (--allow-buffer-updates)"))
    if report.config:
        rows.append(("config", report.config))
    rows.append(("run", f"train mode + grad on {run.device}, torch {run.torch_version}"))
    rows += [("note", n) for n in report.notes]
    return rows


def _subject(g: IssueGroup) -> Text:
    """``aux_head.weight``, ``aux_head: weight, bias`` or ``backbone (2 modules, 6 buffers)``."""
    if g.single:
        return Text(g.where, style="cyan")
    if not g.rolled_up:
        module, leaves = g.modules[0]
        return Text.assemble((module_label(module), "cyan"), ": " + ", ".join(leaves))
    return Text.assemble((module_label(g.where), "cyan"), f" ({len(g.modules)} modules, {len(g.issues)} {g.noun})")


def _entry(g: IssueGroup, style: str) -> Group:
    """The lines under the subject: each module of a roll-up, expected/found, the message, the fix."""
    lines: list[RenderableType] = [_subject(g)]
    if g.rolled_up:
        for module, leaves in g.modules[:MODULE_LINES]:
            lines.append(Text.assemble("  ", (module_label(module), "cyan"), ": " + ", ".join(leaves)))
        if len(g.modules) > MODULE_LINES:
            lines.append(Text(f"  {len(g.modules) - MODULE_LINES} more modules (--format json for all)", style="dim"))
    # Text, not markup: messages hold brackets that rich would read as markup
    lines.append(Text.assemble(("expected ", "dim"), g.expected, ("; found ", "dim"), (g.found, style)))
    lines.append(Text(g.message))
    if g.fix:
        lines.append(Text(f"fix: {g.fix}", style="dim"))
    return Group(*lines)


def _entries(n: int, adjective: str = "") -> str:
    """``1 entry`` / ``3 more entries``: the count decides the noun."""
    return f"{n} {adjective}{'entry' if n == 1 else 'entries'}"


def issues_list(title: str, issues: Sequence[FreezeIssue], style: str, top: int | None = DEFAULT_TOP) -> Group:
    """Issues as a list like ``inspect``'s findings: ``check  subject``, then the cause and the fix, indented.

    Issues with the same check, module and cause share one entry; ``top`` entries at most.
    """
    groups = group_issues(issues)
    shown = groups if top is None or top <= 0 else groups[:top]
    head = f"{title} ({len(issues)}" + (f" in {_entries(len(groups))})" if len(groups) < len(issues) else ")")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for g in shown:
        grid.add_row(Text(g.check, style=style), _entry(g, style))
    parts: list[RenderableType] = [Text(head, style=style), grid]
    if len(shown) < len(groups):
        hidden = sum(len(g.issues) for g in groups[len(shown):])
        parts.append(Text(f"{_entries(len(groups) - len(shown), 'more ')} ({hidden} {title.lower()}; --format json "
                          f"for all)", style="dim"))
    return Group(*parts)


def render_freeze(report: FreezeReport, console: Console, top: int | None = DEFAULT_TOP) -> None:
    """Spec summary, violations and warnings (``top`` entries each), and the verdict as the last line."""
    console.print(Text(f"gradprobe freeze-check {report.target}", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for label, value in spec_lines(report):
        grid.add_row(label, Text(value))
    console.print(grid)
    if report.violations:
        console.print(issues_list("Violations", report.violations, "bold red", top))
    if report.warnings:
        console.print(issues_list("Warnings", report.warnings, "yellow", top))
    # one line, never wrapped: CI logs and `tail -1` read the verdict
    console.print(Text(report.summary(), style="bold green" if report.passed else "bold red"), soft_wrap=True)


def issue_json(i: FreezeIssue) -> dict[str, Any]:
    """One issue: ``message`` is the whole sentence (cause and fix); ``fix`` and ``mechanism`` were added later."""
    return {"check": i.check, "subject": i.subject, "expected": i.expected, "found": i.found, "message": i.message,
            "fix": i.fix, "mechanism": list(i.mechanism)}


def freeze_json(report: FreezeReport) -> dict[str, Any]:
    """The ``gradprobe.freeze/1`` document."""
    run = report.facts.run
    opt = report.facts.optimizer
    return {
        "schema": FREEZE_SCHEMA,
        "passed": report.passed,
        "target": report.target,
        "torch": run.torch_version,
        "device": run.device,
        "config": report.config,
        "frozen": list(report.frozen),
        "trainable": list(report.trainable),
        "unlisted": report.unlisted,
        "allow_buffer_updates": report.allow_buffer_updates,
        "baseline": report.baseline,
        "optimizer": None if opt is None else {
            "spec": opt.spec, "type": opt.type, "steps_skipped": opt.steps_skipped,
            "groups": [{"index": g.index, "size": g.size, "settings": dict(g.settings)} for g in opt.groups],
        },
        "violations": [issue_json(i) for i in report.violations],
        "warnings": [issue_json(i) for i in report.warnings],
        "parameters": [
            {"name": p.name, "aliases": list(p.aliases), "expected": p.expected, "requires_grad": p.requires_grad,
             "grad": p.grad and p.grad.value, "conflict": p.conflict, "optimizer_group": p.optimizer_group}
            for p in report.parameters
        ],
        "ddp_unused_parameters": list(report.ddp_unused),
        "notes": list(report.notes),
    }


def _subject_md(g: IssueGroup, max_modules: int = MODULE_LINES) -> str:
    if g.single:
        return f"`{g.where}`"
    if not g.rolled_up:
        module, leaves = g.modules[0]
        return f"`{module_label(module)}`: " + ", ".join(f"`{leaf}`" for leaf in leaves)
    lines = [f"`{module_label(g.where)}` ({len(g.modules)} modules, {len(g.issues)} {g.noun})"]
    lines += [f"`{module_label(m)}`: " + ", ".join(f"`{leaf}`" for leaf in leaves)
              for m, leaves in g.modules[:max_modules]]
    if len(g.modules) > max_modules:
        lines.append(f"{len(g.modules) - max_modules} more modules")
    return "<br>".join(lines)


def _issues_md(title: str, issues: Sequence[FreezeIssue], top: int, max_issues: int) -> list[str]:
    """The grouped entries (``top`` at most), then every issue in a collapsed table when grouping merged some."""
    groups = group_issues(issues)
    shown = groups[:top]
    head = f"### {title} ({len(issues)}" + (f" in {_entries(len(groups))})" if len(groups) < len(issues) else ")")
    out = ["", head, "", md_table(["check", "subject", "expected", "found", "message", "fix"], [
        (f"`{g.check}`", _subject_md(g), g.expected, g.found, g.message, g.fix or "") for g in shown])]
    if len(shown) < len(groups):
        out.append(f"\n_{_entries(len(groups) - len(shown), 'more ')} in the JSON report (--format json)._")
    if len(groups) < len(issues):
        every = list(issues)[:max_issues]
        out += ["", f"<details><summary>Every {title.lower().removesuffix('s')} ({len(issues)})</summary>", "",
                md_table(["check", "subject", "expected", "found", "message"],
                         [(f"`{i.check}`", f"`{i.subject}`", i.expected, i.found, i.message) for i in every])]
        if len(issues) > len(every):
            out.append(f"\n(+{len(issues) - len(every)} more in the JSON report)")
        out += ["", "</details>"]
    return out


def freeze_markdown(report: FreezeReport, max_params: int = 200, top: int = DEFAULT_TOP, max_issues: int = 200) -> str:
    """Markdown for pull-request comments and ``$GITHUB_STEP_SUMMARY``: grouped entries, every issue collapsed."""
    mark = "PASS" if report.passed else "FAIL"
    out = [f"## gradprobe freeze-check `{md_escape(report.target)}`: {mark}", "", f"**{md_escape(report.summary())}**",
           ""]
    out += [f"- {label}: {md_escape(value)}" for label, value in spec_lines(report)]
    if report.violations:
        out += _issues_md("Violations", report.violations, top, max_issues)
    if report.warnings:
        out += _issues_md("Warnings", report.warnings, top, max_issues)
    params = list(report.parameters)
    shown = params[:max_params]
    out += ["", f"<details><summary>Parameters ({len(params)})</summary>", "",
            md_table(["name", "expected", "requires_grad", "grad"],
                     [(f"`{p.name}`" + "".join(f" = `{a}`" for a in p.aliases), p.expected, p.requires_grad,
                       "-" if p.grad is None else p.grad.value) for p in shown])]
    if len(params) > len(shown):
        out.append(f"\n(+{len(params) - len(shown)} more in the JSON report)")
    out += ["", "</details>", ""]
    return "\n".join(out)
