"""Checkpointing advice is judged once into the report; the rich table, JSON and Markdown show the same calls."""

from __future__ import annotations

import io

from fixtures.run_facts import facts, memory, module, param
from rich.console import Console

from gradprobe.facts.run import ModuleMemory
from gradprobe.judges.checkpoint import ADVICE_TOP
from gradprobe.judges.inspect import judge_inspect
from gradprobe.render.inspect.json_out import inspect_json
from gradprobe.render.inspect.markdown import inspect_markdown
from gradprobe.render.inspect.table import render_inspect

BLOCKS = 12  # more repeated blocks than the advice keeps


def _report():
    rows = tuple(ModuleMemory(f"layers.{i}", 0, 1000 + i, 100, inside_saved_bytes=4000 + i,
                              checkpoint_saving_bytes=3000 + i) for i in range(BLOCKS))
    mods = [module("layers", "ModuleList", calls=0)] + [module(f"layers.{i}", "Block") for i in range(BLOCKS)]
    run = facts([param(f"layers.{i}.weight") for i in range(BLOCKS)], mods,
                memory=memory(rows, saved=sum(r.saved_for_backward_bytes for r in rows)))
    return judge_inspect(run)


def _rich(report, top: int) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    render_inspect(report, console, top=top, sections={"memory"})
    return console.export_text()


def test_advice_is_in_the_report_best_first() -> None:
    report = _report()
    assert len(report.checkpoint_advice) == ADVICE_TOP
    # the largest single-call saving first: layers.11 saves 3011 bytes, layers.2 saves 3002
    assert [c.module for c in report.checkpoint_advice] == [f"layers.{i}" for i in range(11, 11 - ADVICE_TOP, -1)]
    assert report.checkpoint_plan is not None and report.checkpoint_plan.calls == BLOCKS
    assert report.checkpoint_plan.expected_saving_bytes == sum(3000 + i for i in range(BLOCKS))


def test_every_view_shows_the_same_advice() -> None:
    report = _report()
    expected = [c.module for c in report.checkpoint_advice]
    doc = inspect_json(report)
    assert [c["module"] for c in doc["memory"]["checkpoint_advice"]] == expected
    assert doc["memory"]["checkpoint_plan"]["calls"] == BLOCKS
    md = inspect_markdown(report, top=40)
    advice_md = md[md.index("### Activation checkpointing"):].split("\n### ")[0]
    assert [line.split("|")[1].strip() for line in advice_md.splitlines() if line.startswith("| layers.")] == expected
    text = _rich(report, 40)
    advice_rich = text[text.index("Activation checkpointing"):]
    assert [line.split()[0] for line in advice_rich.splitlines() if line.startswith("layers.")] == expected
    assert "wrapping every Block call (12)" in text and "wrapping every Block call (12)" in md


def test_top_cuts_the_views_the_same_way_and_says_so() -> None:
    report = _report()
    md = inspect_markdown(report, top=3)
    assert "7 more calls" in md
    assert "7 more calls" in _rich(report, 3)
