"""``compare-modes`` on a rich console: the grid, the verdict panel under it, notes and findings."""

from __future__ import annotations

from typing import Any

from gradprobe.facts.compare import CompareReport
from gradprobe.render.common import findings_table
from gradprobe.render.compare.cells import caption, grid


def render_compare(report: CompareReport, console: Any) -> None:
    """Table, verdict and findings on a rich console."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    c = report.comparison
    header, lines = grid(report)
    # as wide as the console, like the verdict panel and the findings under it; no vertical rules, and a value
    # with a unit never wraps ("205.6 KiB" stays on one line at 80 columns): long one-word values (grad_fn names)
    # fold instead
    table = Table(title=f"gradprobe compare-modes {c.target}", title_justify="left", caption=caption(report),
                  caption_justify="left", expand=True, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    table.add_column("", style="bold", no_wrap=True)
    for r, name in zip(c.rows, header[1:], strict=True):
        table.add_column(name.replace(":", "\n").replace("inference_mode", "infer."), justify="right",
                         overflow="fold", header_style="bold" if r.ok else "bold red")
    for line in lines:
        table.add_row(line[0], *(Text(cell, no_wrap=True) if " " in cell else cell for cell in line[1:]))
    console.print(table)
    if report.verdict:
        text = Text()
        for i, line in enumerate(report.verdict):
            text.append(("\n" if i else "") + "• " + line)
        console.print(Panel(text, title="verdict", title_align="left"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))
    console.print(findings_table(report.findings, empty="No findings."))
