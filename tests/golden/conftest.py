"""Snapshot (golden-output) tests of every terminal view and Markdown document, with syrupy.

Each snapshot is one plain file under ``tests/golden/__snapshots__/<test file>/`` (``.txt`` for the terminal
view at 100 columns without colour, ``.md`` for Markdown), so a change reads as a normal diff in review.
When a change of output is intended, regenerate them and review the diff:

    python -m pytest tests/golden --snapshot-update

Snapshots must not depend on the machine: runs are seeded; measured durations and the torch version are
replaced by fixed values in the facts before rendering, and floating-point results (loss, gradient norms,
output differences) are rounded to three significant digits (see ``steady_*`` below).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

WIDTH = 100
TORCH = "2.x"  # stands for the installed torch version in every snapshot


class TextSnapshot(SingleFileSnapshotExtension):
    _write_mode = WriteMode.TEXT
    file_extension = "txt"


class MarkdownSnapshot(SingleFileSnapshotExtension):
    _write_mode = WriteMode.TEXT
    file_extension = "md"


@pytest.fixture
def text_snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(TextSnapshot)


@pytest.fixture
def md_snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(MarkdownSnapshot)


def rich_text(render: Callable[..., None], report: Any, **kwargs: Any) -> str:
    """What ``render(report, console)`` prints on a 100-column terminal without colour, trailing spaces cut."""
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=False, color_system=None)
    render(report, console, **kwargs)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


@pytest.fixture(scope="session")
def as_text() -> Callable[..., str]:
    return rich_text


def steady_float(x: float | None) -> float | None:
    """Three significant digits: float32 sums may differ in the last digits on another CPU."""
    return None if x is None else float(f"{x:.3g}")


def steady_run(facts: Any) -> Any:
    """RunFacts with fixed durations and torch version, and floating-point results rounded: everything else in
    a seeded CPU run is reproducible."""
    return replace(
        facts, torch_version=TORCH, loss=steady_float(facts.loss),
        forward_time_s=0.0123 if facts.forward_time_s is not None else None,
        backward_time_s=0.0045 if facts.backward_time_s is not None else None,
        parameters=tuple(replace(p, grad_norm=steady_float(p.grad_norm)) for p in facts.parameters),
    )


@pytest.fixture(scope="session")
def steady() -> Callable[[Any], Any]:
    return steady_run


STEADY_TIMES = {"grad": 0.0010, "no_grad": 0.0008, "inference_mode": 0.0007}  # seconds, per grad mode


def steady_comparison(report: Any) -> Any:
    """A CompareReport with fixed timings (grad 1 ms, no_grad 0.8 ms, inference_mode 0.7 ms, backward 2 ms) and
    rounded differences; findings, verdict and notes are judged again from those facts, as compare-modes does."""
    from gradprobe.judges.compare import compare_report

    c = report.comparison
    rows = []
    for r in c.rows:
        t = STEADY_TIMES[r.grad_mode] if r.time_s is not None else None
        rows.append(replace(
            r, time_s=t, times_s=(t, t * 1.05) if t is not None and r.times_s else (),
            cpu_times_s=(t, t * 1.05) if t is not None and r.cpu_times_s else (),
            backward_time_s=0.002 if r.backward_time_s is not None else None,
            max_abs_diff=steady_float(r.max_abs_diff), repeat_max_abs_diff=steady_float(r.repeat_max_abs_diff)))
    attribution = c.attribution
    if attribution is not None:
        attribution = replace(attribution, modules=tuple(replace(m, max_abs_diff=steady_float(m.max_abs_diff))
                                                         for m in attribution.modules))
    c = replace(c, torch_version=TORCH, rows=tuple(rows), attribution=attribution,
                grad_mode_diffs=tuple(replace(d, max_abs_diff=steady_float(d.max_abs_diff)) for d in c.grad_mode_diffs),
                eval_random_max_abs_diff=steady_float(c.eval_random_max_abs_diff))
    return compare_report(c)


@pytest.fixture(scope="session")
def steady_compare() -> Callable[[Any], Any]:
    return steady_comparison


def steady_freeze(report: Any) -> Any:
    """A FreezeReport whose run facts carry the fixed torch version (freeze-check prints no durations)."""
    facts = replace(report.facts, run=replace(report.facts.run, torch_version=TORCH))
    return replace(report, facts=facts)


@pytest.fixture(scope="session")
def steady_frozen() -> Callable[[Any], Any]:
    return steady_freeze
