"""The HTML views of issue 14 for all three commands, in process (the browser test in tests/cli opens them).

freeze-check and compare-modes draw the memory timeline (compare-modes one per mode) and the grad_fn graph when
asked for the detail; each drawn timeline's maximum is checked against the peak the facts report and against
a plain running sum of the event log's byte deltas, done here.  Asking for the detail must not change what
the JSON documents say.  ``inspect --grads`` draws the gradient flow, checked against gradients taken with
plain PyTorch hooks in the test.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from fixtures import grad_models, zoo
from fixtures.html_checks import drawn_peaks, log_peaks

from gradprobe.api import compare_modes, freeze_check, probe
from gradprobe.render.compare.json_out import compare_json
from gradprobe.render.freeze.view import freeze_json
from gradprobe.render.html.compare import compare_html
from gradprobe.render.html.freeze import freeze_html
from gradprobe.render.html.inspect import inspect_html

_TIMES = {"time_s", "times_s", "cpu_times_s", "backward_time_s"}


def timelines(page: str) -> list[str]:
    return re.findall(r'<svg class="timeline".*?</svg>', page, flags=re.S)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in _TIMES}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_freeze_check_draws_the_timeline_and_graph_of_its_run() -> None:
    torch.manual_seed(0)
    model = zoo.mlp()
    x = model.example_input_array
    plain = freeze_check(model, x, frozen="layers.0")
    report = freeze_check(model, x, frozen="layers.0", memory_detail=True)
    assert plain.facts.run.memory is None and plain.facts.run.graph is None  # the default run stays as cheap
    assert freeze_json(report) == freeze_json(plain)  # the detail changes no verdict and no JSON field
    memory = report.facts.run.memory
    assert memory is not None and memory.events is not None
    page = freeze_html(report)
    (svg,) = timelines(page)
    expected = {"forward": memory.forward_peak_bytes, "backward": memory.backward_peak_bytes}
    assert drawn_peaks(svg) == log_peaks(memory.events) == expected
    assert f'data-peak="{max(expected.values())}"' in svg
    assert 'id="graph-box"' in page and "<svg" in page.split('id="graph-box"')[1]
    for name, _ in model.named_parameters():
        assert name in page  # the graph's leaves and the table name every parameter
    assert '<svg class="timeline"' not in freeze_html(plain) and 'id="graph-box"' not in freeze_html(plain)


def test_compare_modes_draws_a_timeline_per_mode_on_one_scale() -> None:
    torch.manual_seed(0)
    model = zoo.mlp()
    x = model.example_input_array
    modes = "train:grad,eval:no_grad"
    plain = compare_modes(model, x, modes=modes, repeat=1, backward=True)
    report = compare_modes(model, x, modes=modes, repeat=1, backward=True, memory_detail=True)
    assert all(r.run is None for r in plain.rows)
    assert _without_times(compare_json(report)) == _without_times(compare_json(plain))
    page = compare_html(report)
    charts = timelines(page)
    assert len(charts) == len(report.rows) == 2
    for row, svg in zip(report.rows, charts, strict=True):
        assert row.run is not None and row.run.memory is not None and row.run.memory.events is not None
        expected = {"forward": row.forward_peak_bytes}
        if row.backward_peak_bytes is not None:
            expected["backward"] = row.backward_peak_bytes
        assert drawn_peaks(svg) == log_peaks(row.run.memory.events) == expected, row.label
    # one vertical scale: every chart's top tick is the largest peak over the modes
    top_ticks = {re.findall(r'class="axis" text-anchor="end">([^<]+)<', svg)[-1] for svg in charts}
    assert len(top_ticks) == 1
    # the reference (eval:no_grad) builds no graph: the first mode that did is drawn, and says so
    assert "train:grad (the reference eval:no_grad built none" in page and 'id="graph-box"' in page


def _plain_grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """‖gradient reaching the model's and each named child's output‖, with plain tensor hooks (loss: the sum)."""
    found: dict[str, float] = {}

    def hook(name: str) -> Any:
        def on_forward(_m: Any, _i: Any, out: torch.Tensor) -> None:
            out.register_hook(lambda g: found.__setitem__(name, float(g.double().norm())))
        return on_forward

    handles = [m.register_forward_hook(hook(n)) for n, m in [("(model)", model), *model.named_children()]]
    model(x).sum().backward()
    for h in handles:
        h.remove()
    return found


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.1e}"


def test_inspect_grads_section_against_plain_pytorch() -> None:
    torch.manual_seed(0)
    model = grad_models.backward_sqrt_nan()
    x = model.example_input_array
    page = inspect_html(probe(model, x, grads=True))
    torch.manual_seed(0)
    fresh = grad_models.backward_sqrt_nan()
    plain = _plain_grads(fresh, x)
    assert 'id="nonfinite-origin"' in page and "SqrtBackward0" in page and "nonfinite-backward" in page
    flow = re.search(r'<svg class="gradflow".*?</svg>', page, flags=re.S)
    assert flow is not None
    rows = dict(re.findall(r'<g class="row" data-index="\d+">.*?xml:space="preserve">\s*([^<]+?)</text>'
                           r'<rect class="(?:act|bad)" data-value="([^"]+)"', flow.group(0), flags=re.S))
    assert rows == {name: _number(value) for name, value in plain.items()}
    assert rows["fc1"] == "NaN" and rows["fc2"] != "NaN"  # the NaN made by sqrt's backward reaches fc1 only
    table = page.split('id="t-grad-parameters"')[1]
    for name, p in fresh.named_parameters():
        cells = re.search(re.escape(name) + r'</td><td data-sort="[^"]+" class="num">([^<]+)<', table)
        assert cells is not None and cells.group(1) == _number(float(p.grad.double().norm())), name
    assert "Gradient health" not in inspect_html(probe(model, x))  # only with --grads


@pytest.mark.parametrize("factory", [grad_models.forward_log_nan])
def test_inspect_grads_names_the_forward_origin(factory: Any) -> None:
    torch.manual_seed(0)
    model = factory()
    x = model.example_input_array
    with torch.no_grad():  # the op and its input figures, in plain PyTorch
        shifted = model.head(model.encoder(x)) - model.log_out.shift
    page = inspect_html(probe(model, x, grads=True))
    origin = page.split('id="nonfinite-origin"')[1].split("</div></div>")[0]
    assert "aten.log.default" in origin and "log_out (ShiftedLog)" in origin
    negatives = int((shifted < 0).sum())
    assert f"{negatives} negative" in origin and f"{negatives} NaN" in origin


def test_inspect_grads_section_without_backward_and_on_meta() -> None:
    torch.manual_seed(0)
    model = grad_models.forward_log_nan()
    x = model.example_input_array
    page = inspect_html(probe(model, x, grads=True, backward=False))
    assert 'id="nonfinite-origin"' in page and "aten.log.default" in page  # the forward check still locates it
    assert "No backward ran" in page and 't-grad-parameters"' not in page
    with torch.device("meta"):
        meta = grad_models.forward_log_nan()
    report = probe(meta, torch.randn(6, 8, device="meta"), grads=True)
    gh = report.facts.grad_health
    assert gh is not None and not gh.measured
    assert f"Not measured: {'; '.join(gh.notes)}" in inspect_html(report)
