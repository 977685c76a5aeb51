"""The cells every view of a fit report shares: which categories to show, and each row's figures."""

from __future__ import annotations

from gradprobe.facts.fit import CATEGORIES, LABEL, MEANING, PHASES, FitReport, PhaseMemory, RankFit
from gradprobe.units import human_bytes

SAVED_TOP = 8  # modules in the saved-activations table


def shown_categories(report: FitReport) -> list[str]:
    """Categories that hold bytes in some phase of some row (a DDP report has no all-gather row)."""
    return [c for c in CATEGORIES if any(p.get(c) for r in report.rows for p in r.phases)]


def summary_cells(row: RankFit, budget: int | None) -> list[str]:
    fw, bw = row.phase("forward"), row.phase("backward")
    cells = [str(row.world_size), row.method, str(row.local_batch or "-"), human_bytes(fw.total if fw else None),
             human_bytes(bw.total if bw else None), human_bytes(row.peak), LABEL[row.step.dominant()]]
    if budget is not None:
        cells.append("yes" if row.peak <= budget else "NO")
    return cells


SUMMARY_HEADER = ["world size", "method", "local batch", "forward peak", "backward peak", "step peak",
                  "largest at the peak"]


def category_columns(report: FitReport) -> tuple[list[str], list[PhaseMemory | None]]:
    """One world size: its phases (and the step); several: each world size's step peak."""
    if len(report.rows) == 1:
        row = report.rows[0]
        phases = [row.phase(p) for p in PHASES if row.phase(p) is not None]
        return [f"at {p.phase} peak" for p in phases if p is not None], list(phases)
    return [f"N={r.world_size}" for r in report.rows], [r.step for r in report.rows]


def category_rows(report: FitReport) -> list[list[str]]:
    _, columns = category_columns(report)
    rows = []
    for cat in shown_categories(report):
        rows.append([LABEL[cat], *[human_bytes(p.get(cat)) if p is not None else "-" for p in columns],
                     MEANING[cat]])
    rows.append(["total", *[human_bytes(p.total) if p is not None else "-" for p in columns], ""])
    return rows


def saved_rows(row: RankFit, top: int = SAVED_TOP) -> list[list[str]]:
    return [[m.module or "(model)", m.module_type, human_bytes(m.nbytes)] for m in row.saved_by_module[:top]]
