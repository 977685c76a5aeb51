"""The HTML report draws its graph with networkx when Graphviz's dot is not installed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch

from gradprobe.api import probe
from gradprobe.render.graph import svg as svg_module
from gradprobe.render.html.inspect import inspect_html
from tests.fixtures import zoo


def test_graph_falls_back_to_networkx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svg_module, "dot_binary", lambda: None)
    torch.manual_seed(0)
    model = zoo.tiny_gpt()
    report = probe(model, model.example_input_array, memory_detail=True)
    html = inspect_html(report)
    assert "layout by networkx (Graphviz not installed)" in html
    start = html.index('<div class="graph" id="graph-box">') + len('<div class="graph" id="graph-box">')
    svg = html[start:html.index("</svg>", start) + len("</svg>")]
    names = [p.name for p in report.facts.parameters]
    text = "".join(ET.fromstring(svg).itertext())
    assert all(name in text for name in names)
