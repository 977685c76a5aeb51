"""The compare-modes grid: one column per combination and one line per measurement (rich and Markdown).

Six narrow columns fit an 80-column terminal.
"""

from __future__ import annotations

from collections.abc import Callable

from gradprobe.facts.compare import CompareReport, ModeRow
from gradprobe.units import duration, human_bytes


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _diff(r: ModeRow) -> str:
    if r.mismatch is not None:
        return "differs"
    text = "-" if r.max_abs_diff is None else ("0" if r.max_abs_diff == 0 else f"{r.max_abs_diff:.3g}")
    if r.int_outputs_equal is False:
        text += " (ints differ)"
    return text


def _grad_fn(name: str | None) -> str:
    return "None" if name is None else name.removesuffix("Backward0").removesuffix("Backward1") + "Bw"


MEASURES: list[tuple[str, Callable[[ModeRow], str]]] = [
    ("requires_grad", lambda r: _yes(r.output_requires_grad)),
    ("grad_fn", lambda r: _grad_fn(r.output_grad_fn)),
    ("is_inference", lambda r: _yes(r.is_inference)),
    ("graph nodes", lambda r: "-" if r.graph_nodes is None else str(r.graph_nodes)),
    ("saved for bwd", lambda r: human_bytes(r.saved_for_backward_bytes)),
    ("fwd peak", lambda r: human_bytes(r.forward_peak_bytes)),
    ("fwd time", lambda r: duration(r.time_s)),
    ("max |diff|", _diff),
    ("buffers changed", lambda r: str(len(r.buffers_changed))),
    ("backward ok", lambda r: _yes(r.backward_possible)),
]
NESTED_MEASURES: list[tuple[str, Callable[[ModeRow], str]]] = [  # the nested-tensor fast path zeroes padding
    ("|diff| unpadded", lambda r: "-" if r.unpadded_max_abs_diff is None else f"{r.unpadded_max_abs_diff:.3g}"),
]
BACKWARD_MEASURES: list[tuple[str, Callable[[ModeRow], str]]] = [
    ("bwd time", lambda r: duration(r.backward_time_s) if r.backward_error is None else "failed"),
    ("bwd peak", lambda r: human_bytes(r.backward_peak_bytes)),
]


def grid(report: CompareReport) -> tuple[list[str], list[list[str]]]:
    """Header (one column per combination) and one line per measurement, shared by rich and Markdown."""
    c = report.comparison
    header = ["", *(r.label for r in c.rows)]
    lines = []
    measures = MEASURES + (NESTED_MEASURES if c.nested_fast_path is not None else [])
    for name, cell in measures + (BACKWARD_MEASURES if c.backward else []):
        lines.append([name, *(cell(r) if r.ok else "-" for r in c.rows)])
    if any(not r.ok for r in c.rows):
        lines.append(["failed", *("" if r.ok else "FAILED" for r in c.rows)])
    return header, lines


def caption(report: CompareReport) -> str:
    """What the numbers are: torch version, device, how times and diffs were taken."""
    c = report.comparison
    if c.device == "meta":
        return f"torch {c.torch_version} on meta: estimated tensor bytes, no times or output values"
    return (f"torch {c.torch_version} on {c.device}; time: median of {c.repeat} run(s) after a warm-up; "
            f"max |diff| against {c.reference or '-'}; bytes: tensor storage seen by the trackers")
