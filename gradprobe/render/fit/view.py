"""``inspect --world-size``: the rich view, Markdown, and the JSON document (``memory.per_rank``).

JSON (``gradprobe.inspect/1``, kind ``fit``): ``world_size`` (the list asked for), ``method``
(simulated|estimated), ``memory.per_rank[]``: one entry per world size with ``rank`` (0), ``world_size``,
``peak_bytes``, ``forward``/``backward``/``optimizer``/``step`` each ``{"total_bytes", "<category>_bytes"...}``,
``saved_by_module[]``; ``memory.budget`` with the verdict and every lever's measured peak.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradprobe.facts.fit import CATEGORIES, PHASES, FitReport, PhaseMemory, RankFit
from gradprobe.judges.budget import lever_line, verdict_text
from gradprobe.render.common import md_table
from gradprobe.render.fit.rows import (
    SUMMARY_HEADER,
    category_columns,
    category_rows,
    saved_rows,
    summary_cells,
)
from gradprobe.units import human_bytes


def _title(report: FitReport) -> str:
    row = report.rows[0]
    extra = ""
    if row.mixed_precision is not None:
        param, reduce = row.mixed_precision
        extra += f", mixed precision param {param or 'as is'} / reduce {reduce or param or 'as is'}"
    if row.reshard_after_forward is False:
        extra += ", reshard_after_forward off"
    plural = "" if len(row.units) == 1 else "s"
    return (f"Per-rank memory of one training step: {report.target}, {row.wrapper}"
            f"{f' ({len(row.units)} FSDP unit{plural})' if row.units else ''}{extra}, optimizer {report.optimizer}")


def _widest(rows: list[list[str]], column: int) -> int:
    """The longest cell of a column: its width, so a narrow terminal wraps the headers and the description
    column instead of cutting "estimated", "activations" or a byte figure with "…"."""
    return max((len(cells[column]) for cells in rows if column < len(cells)), default=0)


def _longest_word(rows: list[list[str]], column: int) -> int:
    """The longest word of a column: the narrowest it can wrap to without cutting a word."""
    return max((len(word) for cells in rows if column < len(cells) for word in cells[column].split()), default=0)


FIGURE_COLUMNS = ("world size", "local batch", "forward peak", "backward peak", "step peak")
MIN_MEANING = 24  # narrowest "what it is" column worth showing beside the figures


def render_fit(report: FitReport, console: Console) -> None:
    budget = report.verdict.budget if report.verdict else None
    title = _title(report)
    headers = SUMMARY_HEADER + (["fits budget"] if budget is not None else [])
    body = [summary_cells(row, budget) for row in report.rows]
    # too narrow for one-line headers (3 spaces between columns): wrap the headers and close the gaps to 2,
    # never cut a cell ("estimated", "activations", a byte figure) with "…" as rich would
    narrow = sum(max(len(h), _widest(body, i)) + 3 for i, h in enumerate(headers)) + 1 > console.width
    summary = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1, 0, 0) if narrow else (0, 1),
                    min_width=min(len(title), console.width))  # the title is as wide as the table
    for i, h in enumerate(headers):
        figures = h in FIGURE_COLUMNS  # not "largest at the peak": a category name, in words
        # figures stay whole on one line; a word column ("unsharded parameters") may wrap between its words
        width = max(_widest(body, i) if figures else _longest_word(body, i),
                    *(len(word) for word in h.split())) if narrow else None
        summary.add_column(h, justify="right" if figures else "left", width=width)
    for cells in body:
        summary.add_row(*cells)
    console.print(summary)
    header, _ = category_columns(report)
    cats = Table(title="Rank 0's bytes by category", box=box.SIMPLE_HEAD, title_justify="left")
    body = category_rows(report)
    cats.add_column("category", min_width=_widest(body, 0))
    for i, h in enumerate(header, start=1):
        cats.add_column(h, justify="right", min_width=_widest(body, i))
    # the description column gets what the figures leave; too little (several world sizes at 80 columns) and
    # rich cut its words ("this ra", "paramet"): the meanings are then listed under the table instead
    left = console.width - sum(max(_widest(body, i), len(h)) + 3 for i, h in enumerate(["category", *header]))
    described = left >= MIN_MEANING
    if described:
        cats.add_column("what it is", overflow="fold", max_width=60)
    for cells in body:
        cats.add_row(*(cells if described else cells[:-1]))
    console.print(cats)
    if not described:
        for cells in body:
            if cells[-1]:
                console.print(Text(f"  {cells[0]}: {cells[-1]}"))
    saved = saved_rows(report.rows[0])
    if saved:
        table = Table(title=f"Saved for backward by module (N={report.rows[0].world_size}, largest first)",
                      box=box.SIMPLE_HEAD, title_justify="left")
        for h in ("module", "type", "bytes"):
            table.add_column(h, justify="right" if h == "bytes" else "left")
        for cells in saved:
            table.add_row(*cells)
        console.print(table)
    if report.verdict is not None:
        v = report.verdict
        console.print(Text(("✔ " if v.fits else "✘ ") + verdict_text(v), style="green" if v.fits else "bold red"))
        for lever in v.levers:
            console.print(Text(f"  lever: {lever_line(lever)}"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))


def fit_markdown(report: FitReport) -> str:
    budget = report.verdict.budget if report.verdict else None
    parts = [f"## {_title(report)}", "",
             md_table(SUMMARY_HEADER + (["fits budget"] if budget is not None else []),
                      [summary_cells(r, budget) for r in report.rows]), ""]
    header, _ = category_columns(report)
    parts += ["### Rank 0's bytes by category", "", md_table(["category", *header, "what it is"],
                                                              category_rows(report)), ""]
    saved = saved_rows(report.rows[0])
    if saved:
        parts += [f"### Saved for backward by module (N={report.rows[0].world_size})", "",
                  md_table(["module", "type", "bytes"], saved), ""]
    if report.verdict is not None:
        parts += [f"**{verdict_text(report.verdict)}**", ""]
        parts += [f"- {lever_line(lv)}" for lv in report.verdict.levers] + [""]
    parts += [f"> {note}" for note in report.notes]
    return "\n".join(parts).rstrip() + "\n"


def _phase_json(p: PhaseMemory | None) -> dict[str, int] | None:
    if p is None:
        return None
    return {"total_bytes": p.total, **{f"{c}_bytes": p.get(c) for c in CATEGORIES}}


def rank_json(row: RankFit) -> dict[str, Any]:
    doc: dict[str, Any] = {"rank": row.rank, "world_size": row.world_size, "method": row.method,
                           "wrapper": row.wrapper, "units": list(row.units), "local_batch": row.local_batch,
                           "peak_bytes": row.peak, "peak_phase": row.step.phase,
                           "dominant": row.step.dominant(), "seconds": round(row.seconds, 3),
                           "checkpointed": list(row.checkpointed),
                           "reshard_after_forward": row.reshard_after_forward,
                           "mixed_precision": None if row.mixed_precision is None else
                           {"param_dtype": row.mixed_precision[0], "reduce_dtype": row.mixed_precision[1]}}
    for phase in PHASES:
        doc[phase] = _phase_json(row.phase(phase))
    doc["step"] = _phase_json(row.step)
    doc["saved_by_module"] = [{"module": m.module, "type": m.module_type, "bytes": m.nbytes}
                              for m in row.saved_by_module]
    return doc


def fit_json(report: FitReport) -> dict[str, Any]:
    budget = None
    v = report.verdict
    if v is not None:
        budget = {"budget_bytes": v.budget, "fits": v.fits, "world_size": v.world_size, "peak_bytes": v.peak,
                  "dominant": v.dominant, "dominant_bytes": v.dominant_bytes, "verdict": verdict_text(v),
                  "chosen": v.chosen.kind if v.chosen else None,
                  "levers": [{"kind": lv.kind, "text": lv.text, "peak_bytes": lv.peak, "fits": lv.fits,
                              "detail": lv.detail} for lv in v.levers]}
    return {"schema": "gradprobe.inspect/1", "kind": "fit", "target": report.target,
            "world_size": [r.world_size for r in report.rows], "method": report.method,
            "optimizer": report.optimizer,
            "memory": {"per_rank": [rank_json(r) for r in report.rows], "budget": budget},
            "notes": list(report.notes)}


__all__ = ["fit_json", "fit_markdown", "human_bytes", "render_fit"]
