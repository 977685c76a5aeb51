"""freeze-check output: a rich table plus a one-line verdict, JSON ``gradprobe.freeze/1``, and Markdown.

No torch here.  The JSON field names are a public contract: add fields freely, never rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradprobe.freeze.facts import FreezeIssue, FreezeReport
from gradprobe.render.markdown import md_escape, md_table

FREEZE_SCHEMA = "gradprobe.freeze/1"


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


def _issue_table(title: str, issues: Sequence[FreezeIssue], style: str) -> Table:
    t = Table(title=f"{title} ({len(issues)})", title_justify="left", title_style=style, expand=True)
    t.add_column("check", no_wrap=True)
    t.add_column("subject", overflow="fold", ratio=2, min_width=12)
    t.add_column("expected / found", overflow="fold", ratio=2, min_width=12)
    t.add_column("message", overflow="fold", ratio=5)
    for i in issues:  # Text, not str: messages hold brackets that rich would read as markup
        ef = Text(i.expected)
        ef.append("\n" + i.found, style=style)
        t.add_row(Text(i.check, style=style), Text(i.subject), ef, Text(i.message))
    return t


def render_freeze(report: FreezeReport, console: Console) -> None:
    """Spec summary, violations and warnings tables, and the verdict as the last line."""
    console.print(Text(f"gradprobe freeze-check {report.target}", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for label, value in spec_lines(report):
        grid.add_row(label, Text(value))
    console.print(grid)
    if report.violations:
        console.print(_issue_table("Violations", report.violations, "bold red"))
    if report.warnings:
        console.print(_issue_table("Warnings", report.warnings, "yellow"))
    # one line, never wrapped: CI logs and `tail -1` read the verdict
    console.print(Text(report.summary(), style="bold green" if report.passed else "bold red"), soft_wrap=True)


def issue_json(i: FreezeIssue) -> dict[str, Any]:
    return {"check": i.check, "subject": i.subject, "expected": i.expected, "found": i.found, "message": i.message}


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
             "grad": p.grad, "conflict": p.conflict, "optimizer_group": p.optimizer_group}
            for p in report.parameters
        ],
        "ddp_unused_parameters": list(report.ddp_unused),
        "notes": list(report.notes),
    }


def _issues_md(issues: Sequence[FreezeIssue]) -> str:
    return md_table(["check", "subject", "expected", "found", "message"],
                    [(f"`{i.check}`", f"`{i.subject}`", i.expected, i.found, i.message) for i in issues])


def freeze_markdown(report: FreezeReport, max_params: int = 200) -> str:
    """Markdown for pull-request comments and ``$GITHUB_STEP_SUMMARY``."""
    mark = "PASS" if report.passed else "FAIL"
    out = [f"## gradprobe freeze-check `{md_escape(report.target)}`: {mark}", "", f"**{md_escape(report.summary())}**",
           ""]
    out += [f"- {label}: {md_escape(value)}" for label, value in spec_lines(report)]
    if report.violations:
        out += ["", f"### Violations ({len(report.violations)})", "", _issues_md(report.violations)]
    if report.warnings:
        out += ["", f"### Warnings ({len(report.warnings)})", "", _issues_md(report.warnings)]
    params = list(report.parameters)
    shown = params[:max_params]
    out += ["", f"<details><summary>Parameters ({len(params)})</summary>", "",
            md_table(["name", "expected", "requires_grad", "grad"],
                     [(f"`{p.name}`" + "".join(f" = `{a}`" for a in p.aliases), p.expected, p.requires_grad,
                       p.grad or "-") for p in shown])]
    if len(params) > len(shown):
        out.append(f"\n(+{len(params) - len(shown)} more in the JSON report)")
    out += ["", "</details>", ""]
    return "\n".join(out)
