"""``compare-modes`` output: a rich table with the verdict under it, JSON ``gradprobe.run.compare/1``, Markdown."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gradprobe.facts.compare import COMPARE_SCHEMA, CompareReport, ModeRow
from gradprobe.judges.compare import duration
from gradprobe.render.inspect.json_out import finding_json
from gradprobe.render.inspect.markdown import findings_md, md_table
from gradprobe.units import human_bytes

# ------------------------------------------------------------------------------------------------ JSON


def _num(x: float | None) -> float | str | None:
    """JSON has no Inf/NaN (a NaN on one side only gives an infinite difference): write them as strings."""
    return x if x is None or math.isfinite(x) else str(x)


def row_json(r: ModeRow) -> dict[str, Any]:
    """One combination; the first fourteen fields are the contract of issue 3, the rest are additions."""
    return {
        "mode": r.mode,
        "grad_mode": r.grad_mode,
        "ok": r.ok,
        "error": r.error,
        "output_requires_grad": r.output_requires_grad,
        "output_grad_fn": r.output_grad_fn,
        "is_inference": r.is_inference,
        "graph_nodes": r.graph_nodes,
        "saved_for_backward_bytes": r.saved_for_backward_bytes,
        "forward_peak_bytes": r.forward_peak_bytes,
        "time_s": r.time_s,
        "max_abs_diff": _num(r.max_abs_diff),
        "buffers_changed": list(r.buffers_changed),
        "backward_possible": r.backward_possible,
        "backward_time_s": r.backward_time_s,
        "backward_peak_bytes": r.backward_peak_bytes,
        "backward_error": r.backward_error,
        "times_s": list(r.times_s),
        "int_outputs_equal": r.int_outputs_equal,
        "diff_note": r.diff_note,
        "repeat_max_abs_diff": _num(r.repeat_max_abs_diff),
        "repeat_int_equal": r.repeat_int_equal,
    }


def compare_json(report: CompareReport) -> dict[str, Any]:
    """The ``gradprobe.run.compare/1`` document."""
    c = report.comparison
    a = c.attribution
    return {
        "schema": COMPARE_SCHEMA,
        "target": c.target,
        "torch": c.torch_version,
        "device": c.device,
        "seed": c.seed,
        "repeat": c.repeat,
        "backward": c.backward,
        "reference": c.reference,
        "rows": [row_json(r) for r in c.rows],
        "training_dependent": None if a is None else {
            "modules": [{"name": e.name, "type": e.type, "max_abs_diff": _num(e.max_abs_diff),
                         "int_outputs_equal": e.int_outputs_equal} for e in a.modules],
            "tested": list(a.tested),
            "explained": a.explained,
            "note": a.note,
        },
        "eval_random_max_abs_diff": _num(c.eval_random_max_abs_diff),
        "eval_random_int_equal": c.eval_random_int_equal,
        "eval_random_note": c.eval_random_note,
        "grad_mode_diffs": [{"row": d.row, "base": d.base, "max_abs_diff": _num(d.max_abs_diff),
                             "int_outputs_equal": d.int_outputs_equal, "note": d.note} for d in c.grad_mode_diffs],
        "findings": [finding_json(f) for f in report.findings],
        "verdict": list(report.verdict),
        "notes": list(c.notes),
        "weights": {"missing_keys": list(c.missing_keys), "unexpected_keys": list(c.unexpected_keys)},
    }


# ------------------------------------------------------------------------------------------- table cells
# One column per combination and one line per measurement: six narrow columns fit an 80-column terminal.


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _diff(r: ModeRow) -> str:
    if r.diff_note is not None:
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
BACKWARD_MEASURES: list[tuple[str, Callable[[ModeRow], str]]] = [
    ("bwd time", lambda r: duration(r.backward_time_s) if r.backward_error is None else "failed"),
    ("bwd peak", lambda r: human_bytes(r.backward_peak_bytes)),
]


def grid(report: CompareReport) -> tuple[list[str], list[list[str]]]:
    """Header (one column per combination) and one line per measurement, shared by rich and Markdown."""
    c = report.comparison
    header = ["", *(r.label for r in c.rows)]
    lines = []
    for name, cell in MEASURES + (BACKWARD_MEASURES if c.backward else []):
        lines.append([name, *(cell(r) if r.ok else "-" for r in c.rows)])
    if any(not r.ok for r in c.rows):
        lines.append(["failed", *("" if r.ok else "FAILED" for r in c.rows)])
    return header, lines


def _caption(report: CompareReport) -> str:
    c = report.comparison
    if c.device == "meta":
        return f"torch {c.torch_version} on meta: estimated tensor bytes, no times or output values"
    return (f"torch {c.torch_version} on {c.device}; time: median of {c.repeat} run(s) after a warm-up; "
            f"max |diff| against {c.reference or '-'}; bytes: tensor storage seen by the trackers")


# ---------------------------------------------------------------------------------------------- rich


def render_compare(report: CompareReport, console: Any) -> None:
    """Table, verdict and findings on a rich console."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from gradprobe.render.inspect.table import findings_table

    c = report.comparison
    header, lines = grid(report)
    # as wide as the console, like the verdict panel and the findings under it
    table = Table(title=f"gradprobe compare-modes {c.target}", title_justify="left", caption=_caption(report),
                  caption_justify="left", expand=True)
    table.add_column("", style="bold", no_wrap=True)
    for r, name in zip(c.rows, header[1:], strict=True):
        table.add_column(name.replace(":", "\n").replace("inference_mode", "infer."), justify="right",
                         overflow="fold", header_style="bold" if r.ok else "bold red")
    for line in lines:
        table.add_row(*line)
    console.print(table)
    if report.verdict:
        text = Text()
        for i, line in enumerate(report.verdict):
            text.append(("\n" if i else "") + "• " + line)
        console.print(Panel(text, title="verdict", title_align="left"))
    for note in c.notes:
        console.print(Text(f"note: {note}", style="dim"))
    console.print(findings_table(report.findings) if report.findings else Text("No findings.", style="green"))


# ------------------------------------------------------------------------------------------ Markdown


def compare_markdown(report: CompareReport) -> str:
    """The same table for a pull-request comment, with the verdict and the findings."""
    c = report.comparison
    header, lines = grid(report)
    out = [
        f"## gradprobe compare-modes `{c.target}`",
        "",
        _caption(report).replace("|", "\\|"),
        "",
        md_table([f"`{h}`" if h else "" for h in header], lines),
    ]
    if report.verdict:
        out += ["", "### Verdict", ""] + [f"- {line}" for line in report.verdict]
    out += ["", "### Findings", "", findings_md(report.findings)]
    return "\n".join(out) + "\n"
