"""``--format html`` for the three commands, opened in a real headless Chromium (Debian's, driven by Playwright):
no console errors, no network request, the graph and the timeline drawn with a size, tables sortable and
filterable, and a screenshot of each page under the test's temporary folder."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures import zoo
from fixtures.html_checks import log_peaks

from gradprobe.api import compare_modes, freeze_check
from tests.conftest import CliResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TARGET = "tests.fixtures.zoo:tiny_gpt"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (apt-get install chromium) for the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _open(browser: Any, path: Path, shot: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    return page, errors, [u for u in requests if u != path.as_uri()]


def _self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text and "url(http" not in text


def _size(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    return box


def test_inspect_report(run_cli: Callable[..., CliResult], browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "inspect.html"
    result = run_cli("inspect", TARGET, "--format", "html", "-o", str(out))
    assert result.code == 0, result.err
    _self_contained(out.read_text())
    page, errors, requests = _open(browser, out, tmp_path / "inspect.png")
    assert errors == [] and requests == []
    for selector in ("#graph-box svg", "svg.timeline"):
        box = _size(page, selector)
        assert box["width"] > 100 and box["height"] > 50, (selector, box)
    assert page.locator("svg.timeline .peak circle").count() == 1
    assert page.locator("svg.timeline rect.hit title").count() > 10  # a tooltip per column
    assert page.locator("#graph-box svg title").count() > 10  # Graphviz's (or gradprobe's) tooltips
    # filter and sort the parameter table
    rows = page.locator("#t-parameters tbody tr")
    total = rows.count()
    page.fill("input[data-filter=t-parameters]", "mlp.c_fc")
    visible = page.locator("#t-parameters tbody tr:visible").count()
    assert 0 < visible < total
    page.fill("input[data-filter=t-parameters]", "")
    page.click("#t-parameters th:has-text('bytes')")
    page.click("#t-parameters th:has-text('bytes')")  # descending
    sizes = [float(x) for x in page.locator("#t-parameters tbody td:last-child").evaluate_all(
        "cells => cells.map(c => c.getAttribute('data-sort'))")]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == total
    page.close()


def _drawn_peaks(page: Any, scope: str) -> dict[str, int]:
    """The tallest drawn column of each phase of the timeline under ``scope`` (its columns' ``data-bytes``)."""
    pairs = page.locator(f"{scope} svg.timeline rect.hit").evaluate_all(
        "cells => cells.map(c => [c.getAttribute('data-phase'), Number(c.getAttribute('data-bytes'))])")
    found: dict[str, int] = {}
    for phase, value in pairs:
        found[phase] = max(found.get(phase, 0), int(value))
    return found


def _drawn(page: Any, *selectors: str) -> None:
    for selector in selectors:
        box = _size(page, selector)
        assert box["width"] > 100 and box["height"] > 50, (selector, box)


def test_compare_report(run_cli: Callable[..., CliResult], browser: Any, tmp_path: Path) -> None:
    modes = "train:grad,eval:no_grad,eval:inference_mode"
    compare = tmp_path / "compare.html"
    result = run_cli("compare-modes", TARGET, "--modes", modes, "--repeat", "1", "--backward", "--format", "html",
                     "-o", str(compare))
    assert result.code == 0, result.err
    _self_contained(compare.read_text())
    page, errors, requests = _open(browser, compare, tmp_path / "compare.png")
    assert errors == [] and requests == []
    heads = page.locator("table.modes thead th").all_inner_texts()
    assert heads == ["measure", "train:grad", "eval:no_grad", "eval:inference_mode"]
    assert _size(page, "table.modes")["width"] > 300
    _drawn(page, "#graph-box svg", *(f".multiple[data-mode='{m}'] svg.timeline" for m in modes.split(",")))
    # each mode's drawn maximum is the peak of that mode, here from the same run in process, its event log
    # summed up in the test
    torch.manual_seed(0)
    model = zoo.tiny_gpt()
    report = compare_modes(model, model.example_input_array, modes=modes, repeat=1, backward=True,
                           memory_detail=True)
    for row in report.rows:
        assert row.run is not None and row.run.memory is not None and row.run.memory.events is not None
        expected = {k: v for k, v in (("forward", row.forward_peak_bytes), ("backward", row.backward_peak_bytes))
                    if v is not None}
        assert _drawn_peaks(page, f".multiple[data-mode='{row.label}']") == expected == \
            log_peaks(row.run.memory.events), row.label
    page.close()


def test_freeze_report(run_cli: Callable[..., CliResult], browser: Any, tmp_path: Path) -> None:
    freeze = tmp_path / "freeze.html"
    result = run_cli("freeze-check", TARGET, "--frozen", "transformer.wte", "--format", "html", "-o", str(freeze))
    assert result.code == 1, result.err  # the embedding is not frozen: a violation
    _self_contained(freeze.read_text())
    page, errors, requests = _open(browser, freeze, tmp_path / "freeze.png")
    assert errors == [] and requests == []
    assert "failed" in page.locator("header").inner_text()
    assert page.locator("#violations .finding").count() >= 1
    _drawn(page, "#graph-box svg", "#memory svg.timeline")
    assert page.locator("#memory svg.timeline .peak circle").count() == 1
    torch.manual_seed(0)
    model = zoo.tiny_gpt()
    report = freeze_check(model, model.example_input_array, frozen="transformer.wte", memory_detail=True)
    memory = report.facts.run.memory
    assert memory is not None and memory.events is not None
    assert _drawn_peaks(page, "#memory") == {"forward": memory.forward_peak_bytes,
                                             "backward": memory.backward_peak_bytes} == log_peaks(memory.events)
    page.close()


def test_inspect_grads_report(run_cli: Callable[..., CliResult], browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "grads.html"
    result = run_cli("inspect", "tests.fixtures.grad_models:backward_sqrt_nan", "--grads", "--format", "html",
                     "-o", str(out))
    assert result.code == 0, result.err
    _self_contained(out.read_text())
    page, errors, requests = _open(browser, out, tmp_path / "grads.png")
    assert errors == [] and requests == []
    _drawn(page, "#grads svg.gradflow", "#graph-box svg", "svg.timeline")
    assert "SqrtBackward0" in page.locator("#nonfinite-origin").inner_text()
    assert page.locator("#grads svg.gradflow g.row").count() == 4  # the model and its three children
    assert page.locator("#grads svg.gradflow rect.bad").count() >= 1  # fc1's NaN gradient, drawn red
    assert page.locator("#t-grad-parameters tbody tr").count() == 4
    page.click("#t-grad-parameters th:has-text('NaN/Inf')")
    page.click("#t-grad-parameters th:has-text('NaN/Inf')")  # descending: the NaN gradients first
    first = page.locator("#t-grad-parameters tbody tr").first.inner_text()
    assert first.startswith("fc1.weight") and first.rstrip().endswith("24"), first
    page.close()
