"""The ``gradprobe.inspect/1`` JSON contract (issue 2 §6): every listed field, with its type."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from gradprobe.api import probe
from gradprobe.render.inspect.json_out import dumps, inspect_json
from tests.fixtures import models as mi

FILE = str(Path(mi.__file__))

TOP_LEVEL = {
    "schema": str, "target": str, "torch": str, "device": str, "mode": str, "grad_mode": str, "backward": bool,
    "parameters": list, "buffers": list, "tensors": list, "outputs": list, "graph": (dict, type(None)),
    "memory": (dict, type(None)), "findings": list,
}
PARAMETER = {"name": str, "aliases": list, "shape": list, "dtype": str, "requires_grad": bool,
             "grad": (str, type(None)), "grad_norm": (float, int, type(None)), "module_training": bool}
BUFFER = {"name": str, "shape": list, "changed": (bool, type(None))}
TENSOR = {"module": str, "call": int, "path": str, "shape": list, "dtype": str, "requires_grad": bool,
          "grad_fn": (str, type(None)), "is_leaf": bool, "is_inference": bool}
GRAPH = {"nodes": int, "depth": int}
MEMORY = {"method": str, "forward_peak_bytes": int, "backward_peak_bytes": (int, type(None)),
          "saved_for_backward_bytes": int, "parameter_bytes": int, "gradient_bytes": (int, type(None))}
FINDING = {"code": str, "severity": str, "subject": str, "message": str}


def _check(obj: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for name, kind in fields.items():
        assert name in obj, f"{where} lacks '{name}'"
        value = obj[name]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), \
            f"{where}.{name} = {value!r} is not {kind}"


def check_document(doc: dict[str, Any]) -> None:
    _check(doc, TOP_LEVEL, "document")
    assert doc["schema"] == "gradprobe.inspect/1"
    for p in doc["parameters"]:
        _check(p, PARAMETER, "parameters[]")
        assert p["grad"] in ("none", "zero", "nonzero", "present", None)
        assert all(isinstance(d, int) for d in p["shape"]) and all(isinstance(a, str) for a in p["aliases"])
    for b in doc["buffers"]:
        _check(b, BUFFER, "buffers[]")
    for t in doc["tensors"] + doc["outputs"]:
        _check(t, TENSOR, "tensors[]")
        assert all(isinstance(d, int) for d in t["shape"])
    if doc["graph"] is not None:
        _check(doc["graph"], GRAPH, "graph")
    if doc["memory"] is not None:
        _check(doc["memory"], MEMORY, "memory")
    for f in doc["findings"]:
        _check(f, FINDING, "findings[]")
        assert f["severity"] in ("error", "warning", "info")


def _strict_loads(text: str) -> Any:
    """JSON without NaN/Infinity literals (which many parsers reject)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_cli_json_document(run_cli) -> None:
    result = run_cli("inspect", f"{FILE}:FrozenBackbone", "--format", "json")
    assert result.code == 0, result.err
    doc = _strict_loads(result.out)
    check_document(doc)
    assert doc["target"] == f"{FILE}:FrozenBackbone"
    assert doc["torch"] == torch.__version__
    assert (doc["device"], doc["mode"], doc["grad_mode"], doc["backward"]) == ("cpu", "train", "grad", True)
    model = mi.FrozenBackbone()
    assert [p["name"] for p in doc["parameters"]] == [n for n, _ in model.named_parameters()]
    assert {p["name"]: p["requires_grad"] for p in doc["parameters"]} == {
        n: p.requires_grad for n, p in model.named_parameters()}
    assert {p["name"]: p["grad"] for p in doc["parameters"]} == {
        n: "nonzero" if p.requires_grad else "none" for n, p in model.named_parameters()}
    assert [b["name"] for b in doc["buffers"]] == [n for n, _ in model.named_buffers()]
    assert all(b["changed"] is True for b in doc["buffers"])
    assert [(t["module"], t["call"]) for t in doc["tensors"]][-1] == ("", 0)
    assert doc["outputs"][0]["path"] == "output"
    assert [f["code"] for f in doc["findings"]] == ["frozen-bn-drift"]
    assert doc["memory"]["parameter_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert doc["memory"]["gradient_bytes"] == sum(p.numel() * 4 for p in model.head.parameters())


def test_json_without_backward_uses_nulls() -> None:
    doc = _strict_loads(dumps(inspect_json(probe(mi.MLP(), grad_mode="no_grad"))))
    check_document(doc)
    assert doc["backward"] is False
    assert doc["graph"] is None
    assert all(p["grad"] is None and p["grad_norm"] is None for p in doc["parameters"])
    assert doc["memory"]["gradient_bytes"] is None


def test_json_aliases_and_calls() -> None:
    doc = _strict_loads(dumps(inspect_json(probe(mi.Tied()))))
    check_document(doc)
    assert [(p["name"], p["aliases"]) for p in doc["parameters"]] == [("emb.weight", ["lm_head.weight"])]
    doc = _strict_loads(dumps(inspect_json(probe(mi.CalledTwice()))))
    assert [(t["module"], t["call"]) for t in doc["tensors"]] == [("block", 0), ("block", 1), ("head", 0), ("", 0)]


def test_json_stays_valid_with_nan_outputs() -> None:
    report = probe(mi.NonFinite())
    assert math.isnan(report.facts.loss)
    doc = _strict_loads(dumps(inspect_json(report)))
    check_document(doc)
    assert doc["loss"] == "nan"
    assert "nonfinite-output" in {f["code"] for f in doc["findings"]}


@pytest.mark.parametrize(("mode", "grad_mode"), [("eval", "inference_mode"), ("train", "no_grad")])
def test_json_document_in_other_modes(mode: str, grad_mode: str) -> None:
    doc = _strict_loads(dumps(inspect_json(probe(mi.WithDropout(), mode=mode, grad_mode=grad_mode))))
    check_document(doc)
    assert (doc["mode"], doc["grad_mode"]) == (mode, grad_mode)
    assert doc["outputs"][0]["is_inference"] is (grad_mode == "inference_mode")


def test_json_graph_and_findings_values() -> None:
    doc = _strict_loads(dumps(inspect_json(probe(mi.NeverCalled()))))
    check_document(doc)
    assert doc["graph"]["nodes"] > 0 and doc["graph"]["depth"] > 0
    finding = doc["findings"][0]
    assert (finding["code"], finding["severity"], finding["subject"]) == ("grad-none", "error", "aux")
