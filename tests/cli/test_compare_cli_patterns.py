"""The real ``gradprobe compare-modes`` command on fast-path, in-place-input and scripted models.

Each model is a file written here; the expected numbers come from importing that file and running plain
PyTorch in the test process, never from gradprobe.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow  # the installed command on real models: seconds each (70 s seen under load)

ENCODER = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        mask = torch.zeros(3, 6, dtype=torch.bool)
        mask[0, 4:] = True
        mask[2, 3:] = True
        self.example_input_array = {"x": torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(1)),
                                    "mask": mask}

    def forward(self, x, mask):
        return self.enc(x, src_key_padding_mask=mask)
'''

IN_PLACE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.example_input_array = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))

    def forward(self, x):
        x.mul_(2)
        return self.lin(x)
'''

SCRIPTED = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = torch.jit.script(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))
    model.example_input_array = torch.randn(10, 6, generator=torch.Generator().manual_seed(3))
    return model
'''


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def plain(model: torch.nn.Module, mode: str, grad: bool, *args: Any, **kwargs: Any) -> torch.Tensor:
    twin = copy.deepcopy(model).train(mode == "train")
    torch.manual_seed(0)
    with torch.set_grad_enabled(grad):
        return twin(*copy.deepcopy(args), **copy.deepcopy(kwargs)).detach()


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def compare_json(run_cli: Callable[..., Any], target: str, *args: str) -> dict[str, Any]:
    """``gradprobe compare-modes TARGET ARGS --format json``, which must exit 0: its JSON document."""
    res = run_cli("compare-modes", target, *args, "--format", "json")
    assert res.code == 0, res.err
    return json.loads(res.out)


def rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['mode']}:{r['grad_mode']}": r for r in doc["rows"]}


def test_cli_encoder_with_padding_mask(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = write(tmp_path, "enc_model", ENCODER)
    doc = compare_json(run_cli, f"{path}:Net", "--repeat", "1", "--strict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load(path).Net()
        batch = model.example_input_array
        ref = plain(model, "eval", False, **batch)
        train = plain(model, "train", False, **batch)
        eval_grad = plain(model, "eval", True, **batch)
    keep = ~batch["mask"]
    assert doc["nested_fast_path"] == {"encoders": ["enc"], "rows": ["eval:no_grad", "eval:inference_mode"],
                                       "padded_positions": int(batch["mask"].sum()), "positions": 18,
                                       "separable": True}
    got = rows(doc)
    assert got["train:no_grad"]["max_abs_diff"] == diff(train, ref)
    assert got["train:no_grad"]["unpadded_max_abs_diff"] == diff(train[keep], ref[keep])
    assert got["eval:grad"]["unpadded_max_abs_diff"] == diff(eval_grad[keep], ref[keep])
    found = {f["code"] for f in doc["findings"]}
    assert "grad-mode-changes-output" not in found and "train-eval-unexplained" not in found
    assert doc["training_dependent"]["explained"] is True and doc["training_dependent"]["fast_path_off"] is True
    assert sum("nested-tensor fast path" in line for line in doc["verdict"]) == 1
    md = run_cli("compare-modes", f"{path}:Net", "--repeat", "1", "--format", "markdown")
    assert md.code == 0 and "\\|diff\\| unpadded" in md.out and "nested-tensor fast path" in md.out


def test_cli_forward_that_changes_its_input(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = write(tmp_path, "inplace_model", IN_PLACE)
    doc = compare_json(run_cli, f"{path}:Net", "--repeat", "3", "--strict", "--backward")
    model = load(path).Net()
    x = model.example_input_array
    for label, row in rows(doc).items():
        mode, grad_mode = label.split(":")
        out = plain(model, mode, grad_mode == "grad", x.clone())
        assert row["ok"] and row["max_abs_diff"] == 0.0 and row["repeat_max_abs_diff"] == 0.0, label
        assert row["output_requires_grad"] == (grad_mode == "grad"), label
        assert torch.equal(out, plain(model, "eval", False, x.clone()))
    assert not {"nondeterministic-output", "eval-output-random"} & {f["code"] for f in doc["findings"]}


def test_cli_scripted_batchnorm(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = write(tmp_path, "scripted_model", SCRIPTED)
    doc = compare_json(run_cli, f"{path}:build", "--repeat", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load(path).build()
    x = model.example_input_array
    ref = plain(model, "eval", False, x)
    for label, row in rows(doc).items():
        mode, grad_mode = label.split(":")
        assert row["max_abs_diff"] == diff(plain(model, mode, grad_mode == "grad", x), ref), label
        stats = {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
        assert set(row["buffers_changed"]) == (stats if mode == "train" else set()), label
