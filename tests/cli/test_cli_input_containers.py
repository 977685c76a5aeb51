"""Inputs reach the model as the user gave them (issue 9 §6), through the installed CLI: a namedtuple stays that
namedtuple; on ``--device meta`` a 1-D integer input an op needs on the CPU (``pack_padded_sequence`` lengths)
stays there with its values, or the error names it and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.projects import write

MODELS = '''
from collections import OrderedDict, namedtuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Batch = namedtuple("Batch", ["x", "mask"])


class TakesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, batch, extra):
        assert type(batch) is Batch, type(batch)
        assert type(extra) is OrderedDict, type(extra)
        return self.lin(batch.x) * batch.mask + extra["bias"]


def batch_inputs():
    torch.manual_seed(7)
    return Batch(torch.randn(3, 4), torch.ones(3, 1)), OrderedDict(bias=torch.full((3, 2), 0.5))


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.rnn = nn.LSTM(4, 8, batch_first=True)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return out.data


class PackedPadded(Packed):
    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True)[0]  # needs the sorted indices' values: not on meta


def packed_inputs():
    return torch.randint(0, 20, (3, 5)), torch.tensor([5, 3, 2])
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    write(tmp_path / "seqmodels.py", MODELS)
    return tmp_path


def test_namedtuple_and_ordered_dict_inputs_keep_their_types(models: Path, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "seqmodels.py:TakesBatch", "--inputs", "seqmodels.py:batch_inputs", "-f", "json",
                  cwd=models)
    assert res.code == 0, res.err
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 2)
    torch.manual_seed(7)
    x, mask = torch.randn(3, 4), torch.ones(3, 1)
    with torch.no_grad():
        expected = float((lin(x) * mask + 0.5).sum())
    assert json.loads(res.out)["loss"] == pytest.approx(expected, rel=1e-6)
    for command in (["compare-modes", "--repeat", "1"], ["freeze-check", "--trainable", "lin"]):
        again = run_cli(command[0], "seqmodels.py:TakesBatch", "--inputs", "seqmodels.py:batch_inputs", *command[1:],
                        cwd=models)
        assert again.code == 0, again.err


def test_meta_keeps_packed_lengths_on_the_cpu(models: Path, run_cli: Callable[..., Any]) -> None:
    res = run_cli("inspect", "seqmodels.py:Packed", "--inputs", "seqmodels.py:packed_inputs", "--device", "meta",
                  "-f", "json", cwd=models)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert "--device meta: kept arg1 on the CPU with its values (an op needs it there)" in doc["notes"]
    # the same model on the CPU: the same parameters get a gradient
    cpu = json.loads(run_cli("inspect", "seqmodels.py:Packed", "--inputs", "seqmodels.py:packed_inputs", "-f", "json",
                             cwd=models).out)
    assert {p["name"] for p in doc["parameters"] if p["grad"] != "none"} == \
        {p["name"] for p in cpu["parameters"] if p["grad"] != "none"}


def test_meta_reads_values_an_op_needs_from_the_cpu_copy(models: Path, run_cli: Callable[..., Any]) -> None:
    """pad_packed_sequence needs the sorted indices' values: on meta they come from the inputs' CPU copy (issue 17),
    and the packed LSTM, which the CPU runs on another kernel path, is marked approximate."""
    res = run_cli("inspect", "seqmodels.py:PackedPadded", "--inputs", "seqmodels.py:packed_inputs", "--device",
                  "meta", "-f", "json", cwd=models)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert "--device meta: kept arg1 on the CPU with its values (an op needs it there)" in doc["notes"]
    assert [(a["module"], a["op"]) for a in doc["memory"]["approximate"]] == [("rnn", "lstm")]
    cpu = json.loads(run_cli("inspect", "seqmodels.py:PackedPadded", "--inputs", "seqmodels.py:packed_inputs", "-f",
                             "json", cwd=models).out)
    assert doc["memory"]["saved_for_backward_bytes"] == cpu["memory"]["saved_for_backward_bytes"]
    assert {p["name"] for p in doc["parameters"] if p["grad"] != "none"} == \
        {p["name"] for p in cpu["parameters"] if p["grad"] != "none"}
