"""``compare-modes --format markdown``: the same grid for a pull-request comment, with verdict and findings."""

from __future__ import annotations

from gradprobe.facts.compare import CompareReport
from gradprobe.render.common import findings_md, md_table
from gradprobe.render.compare.cells import caption, grid


def compare_markdown(report: CompareReport) -> str:
    """The grid, the verdict, the notes and the findings as Markdown."""
    c = report.comparison
    header, lines = grid(report)
    out = [
        f"## gradprobe compare-modes `{c.target}`",
        "",
        caption(report).replace("|", "\\|"),
        "",
        md_table([f"`{h}`" if h else "" for h in header], lines),
    ]
    if report.verdict:
        out += ["", "### Verdict", ""] + [f"- {line}" for line in report.verdict]
    if report.notes:
        out += ["", *(f"> note: {note}" for note in report.notes)]
    out += ["", "### Findings", "", findings_md(report.findings)]
    return "\n".join(out) + "\n"
