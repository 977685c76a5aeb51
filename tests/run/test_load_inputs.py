"""The load layer's input rules, one copy each (issue 15 §5): user inputs → ``ExampleInputs`` the same way for the
API and the CLI (string keys checked in both), container types kept when inputs move device (issue 9 §6)."""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.errors import InputError
from gradprobe.load.inputs import ExampleInputs, as_inputs, cpu_fallback, make_inputs, to_device, to_example_inputs

Pair = namedtuple("Pair", ["a", "b"])


@dataclass
class Box:
    x: torch.Tensor
    label: str


def test_to_device_keeps_every_container_type() -> None:
    value = (Pair(torch.ones(1), [torch.zeros(2)]), OrderedDict(k=torch.ones(1)),
             defaultdict(list, d=torch.ones(1)), Box(torch.ones(3), "x"))
    moved = to_device(value, torch.device("meta"))
    assert type(moved) is tuple and type(moved[0]) is Pair and type(moved[0].b) is list
    assert type(moved[1]) is OrderedDict and type(moved[2]) is defaultdict and moved[2].default_factory is list
    assert type(moved[3]) is Box and moved[3].label == "x"
    assert all(t.is_meta for t in (moved[0].a, moved[0].b[0], moved[1]["k"], moved[2]["d"], moved[3].x))
    assert not value[0].a.is_meta  # the user's containers are not changed in place


def test_one_conversion_for_api_and_cli_refuses_non_string_keys() -> None:
    model = nn.Linear(2, 2)
    for convert in (lambda v: as_inputs(v, model), lambda v: to_example_inputs(v, "--inputs 'm:f'")):
        with pytest.raises(InputError, match="non-string keys"):
            convert({1: torch.ones(2)})
        with pytest.raises(InputError, match="gave int"):
            convert(3)
    with pytest.raises(InputError, match="non-string keys"):
        gradprobe.probe(model, {0: torch.ones(1, 2)})


def test_namedtuple_inputs_reach_forward_as_given() -> None:
    seen: list[type] = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, pair: Pair) -> torch.Tensor:
            seen.append(type(pair))
            return self.lin(pair.a) + pair.b

    report = gradprobe.probe(Net(), (Pair(torch.ones(3, 2), torch.zeros(3, 1)),))
    assert seen == [Pair] and report.facts.backward


def test_meta_inputs_keep_their_cpu_values_for_the_fallback() -> None:
    model = nn.Embedding(10, 3)
    model.example_input_array = (torch.tensor([[1, 2]]), torch.tensor([2]))
    made = make_inputs(model, device=torch.device("meta"))
    assert all(t.is_meta for t in made.args)
    kept, names = cpu_fallback(made)  # type: ignore[misc]
    assert names == ["arg1"] and kept.args[0].is_meta and kept.args[1].tolist() == [2]
    assert cpu_fallback(ExampleInputs((torch.ones(2),), {}, "x")) is None  # not on meta: nothing to fall back to
