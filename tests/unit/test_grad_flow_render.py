"""The gradient-flow view, parameter-gradient table, JSON and Markdown of ``--grads`` on hand-made facts."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

from fixtures.grad_facts import call, health, param, run_facts
from rich.console import Console

from gradprobe.facts.grad_health import DeadUnits, NonfiniteOrigin, ParamGrad
from gradprobe.facts.run import InspectReport
from gradprobe.judges.grad_health import grad_health_findings
from gradprobe.render.inspect.grad_flow import grad_sections
from gradprobe.render.inspect.grad_rows import bar, flow, number
from gradprobe.render.inspect.grad_text import grad_health_json, grad_health_markdown
from gradprobe.render.inspect.json_out import dumps, inspect_json
from gradprobe.render.inspect.markdown import inspect_markdown
from gradprobe.render.inspect.table import render_inspect


def model_facts() -> InspectReport:
    """model -> enc (-> enc.fc, enc.act) -> head: a NaN made in enc.act, dead units there too."""
    calls = [
        call("enc", out=2.0),
        call("enc.fc", parent=1, out=1e-3),
        call("enc.act", parent=1, type="ReLU", out=3e-2, nonfinite=4, inputs_from=(2,),
             dead=DeadUnits(16, 2, -1, 32, (0, 5))),
        call("head", out=5.0),
    ]
    params = (param("enc.fc.weight", "enc.fc", (16, 8), 0.5), param("enc.fc.bias", "enc.fc", (16,), 0.25),
              param("head.weight", "head", (4, 16), 3.0))
    grads = (ParamGrad("enc.fc.weight", 128, 2.0, 0.9, 16, 0, 0, zero_rows=2, rows=16),
             ParamGrad("enc.fc.bias", 16, 1.0, 0.1, 2, 0, 0, zero_rows=2, rows=16),
             ParamGrad("head.weight", 64, 4.0, 1.5, 0, 1, 2))
    gh = health(calls, parameters=grads, forward_origin=NonfiniteOrigin(call=3, op="aten.log.default",
                                                                        made_nan=4))
    facts = run_facts(gh, params)
    return InspectReport(facts, tuple(grad_health_findings(facts)))


def render(report: InspectReport, width: int = 80, **kw: object) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    for part in grad_sections(report, **kw):  # type: ignore[arg-type]
        console.print(part)
    return out.getvalue()


def test_bar_is_characters_on_a_log_scale() -> None:
    scale = (1e-4, 1.0)
    assert bar(1.0, scale, 8) == "█" * 8
    assert bar(1e-2, scale, 8) == "████    "  # half-way on log10
    assert bar(1e-4, scale, 8).strip() == "▏"  # the smallest value still shows
    assert bar(None, scale, 8) == " " * 8 and bar(float("nan"), scale, 8) == " " * 8
    assert (number(None), number(float("nan")), number(float("inf")), number(0.0), number(0.0123)) == \
        ("-", "NaN", "inf", "0", "1.2e-02")


def test_flow_rows_forward_order_marks_and_collapse() -> None:
    report = model_facts()
    rows = flow(report.facts)
    assert [r.name for r in rows.rows] == ["(model)", "enc", "enc.fc", "enc.act", "head"]
    assert [r.short for r in rows.rows] == ["(model)", "  enc", "    fc", "    act", "  head"]
    act = rows.rows[3]
    assert "NaN/Inf made here" in act.marks and "dead 2/16" in act.marks and act.nonfinite == 4
    assert rows.rows[2].params == math.sqrt(0.5 ** 2 + 0.25 ** 2)  # its own parameters
    collapsed = flow(report.facts, depth=1)
    assert [r.name for r in collapsed.rows] == ["(model)", "enc", "head"]
    enc = collapsed.rows[1]
    assert enc.hidden == 2 and enc.params == math.sqrt(0.5 ** 2 + 0.25 ** 2)  # the block's parameters
    assert any(m.startswith("NaN/Inf made here (enc.act)") for m in enc.marks)
    limited = flow(report.facts, limit=3)
    assert limited.depth == 1 and limited.note is not None and "--top 3" in limited.note
    kept = flow(report.facts, limit=2)  # one level deep is still more than --top: the marked row stays
    assert [(r.name, r.gap_before) for r in kept.rows] == [("(model)", 0), ("enc", 0), ("head", 0)]
    chain = run_facts(health([call(f"l{i}") for i in range(9)]))  # 10 rows, one level deep, none marked
    ends = flow(chain, limit=4)
    assert [(r.name, r.gap_before) for r in ends.rows] == [("(model)", 0), ("l0", 0), ("l7", 6), ("l8", 0)]
    assert ends.note is not None and "6 of 10 calls left out" in ends.note


def test_terminal_view_fits_80_columns_without_colour() -> None:
    text = render(model_facts())
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "Gradient flow (5 module calls" in text and "Parameter gradients (3)" in text
    assert "█" in text and "    act ◀1 " in text
    assert "◀1 enc.act: NaN/Inf made here (4 in its output), dead 2/16" in text
    assert "12.5% (dead units)" in text  # 16 of 128 zeros in enc.fc.weight
    assert "NaN/Inf" in lines[next(i for i, x in enumerate(lines) if x.startswith("parameter"))]


def test_terminal_view_in_the_full_report() -> None:
    out = io.StringIO()
    render_inspect(model_facts(), Console(file=out, width=80, color_system=None), sections={"grads"})
    assert "Gradient flow" in out.getvalue()
    out = io.StringIO()
    plain = InspectReport(replace(model_facts().facts, grad_health=None))
    render_inspect(plain, Console(file=out, width=80, color_system=None), sections={"grads"})
    assert out.getvalue() == ""


def test_json_only_with_grads_and_strict() -> None:
    report = model_facts()
    doc = json.loads(dumps(inspect_json(report)))
    gh = doc["grad_health"]
    assert [c["module"] for c in gh["calls"]] == ["", "enc", "enc.fc", "enc.act", "head"]
    act = gh["calls"][3]
    assert act["nonfinite"] == 4 and act["dead_units"] == {"units": 16, "dead": 2, "dim": -1, "samples": 32,
                                                           "first_dead": [0, 5]}
    head = next(p for p in gh["parameters"] if p["name"] == "head.weight")
    assert head["nan"] == 1 and head["inf"] == 2 and head["grad_to_weight"] == 3.0 / 4.0
    assert gh["forward_origin"]["module"] == "enc.act" and gh["forward_origin"]["op"] == "aten.log.default"
    assert gh["thresholds"] == {"factor": 1000.0, "subnormal_share": 0.01, "dead_min_samples": 16,
                                 "dead_share": 0.05}
    assert grad_health_json(InspectReport(replace(report.facts, grad_health=None))) == {}
    assert "grad_health" not in inspect_json(InspectReport(replace(report.facts, grad_health=None)))


def test_markdown_section() -> None:
    report = model_facts()
    md = grad_health_markdown(report)
    assert md.startswith("### Gradient flow") and "| `enc.act` |" not in md  # indented with &nbsp;
    assert "&nbsp;&nbsp;&nbsp;&nbsp;`enc.act`" in md and "NaN/Inf made here" in md
    assert "### Parameter gradients (3)" in md and "| `enc.fc.weight` |" in md and "16 (dead units)" in md
    assert "First NaN/Inf of the forward: 'enc.act' (ReLU), op `aten.log.default`." in md
    assert "### Gradient flow" in inspect_markdown(report)
    assert "Gradient flow" not in inspect_markdown(InspectReport(replace(report.facts, grad_health=None)))


def test_parameter_table_keeps_every_column_at_80_columns_with_long_names() -> None:
    """Names of 40 characters held the name column at 32: the zeros and NaN/Inf columns were cut off the edge."""
    long = "encoder.layers.0.feed_forward.fc"
    calls = [call("encoder", out=2.0), call(long, parent=1, out=1e-3),
             call("encoder.layers.0.feed_forward.act", parent=1, type="ReLU", out=3e-2, inputs_from=(2,),
                  dead=DeadUnits(16, 2, -1, 32, (0, 5))),
             call("head", out=5.0)]
    params = (param(f"{long}.weight", long, (16, 8), 0.5), param(f"{long}.bias", long, (16,), 0.25),
              param("head.weight", "head", (4, 16), 3.0))
    grads = (ParamGrad(f"{long}.weight", 128, 2.0, 0.9, 16, 0, 0, zero_rows=2, rows=16),
             ParamGrad(f"{long}.bias", 16, 1.0, 0.1, 2, 0, 0, zero_rows=2, rows=16),
             ParamGrad("head.weight", 64, 4.0, 1.5, 0, 1, 2))
    facts = run_facts(health(calls, parameters=grads), params)
    text = render(InspectReport(facts, tuple(grad_health_findings(facts))))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header = next(x for x in lines if x.startswith("parameter"))
    assert header.split()[-2:] == ["zeros", "NaN/Inf"], header
    assert text.count("12.5% (dead units)") == 2  # 16 of 128 and 2 of 16 zeros, each whole
    head = next(x for x in lines if x.startswith("head.weight"))
    assert head.split()[-1] == "3"  # 1 NaN + 2 Inf
