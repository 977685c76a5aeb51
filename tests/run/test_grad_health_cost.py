"""``--grads``' cheaper bookkeeping against plain PyTorch: dead units counted for every ReLU call at once, and the
garbage collector paused for the run only.

The reference records each ReLU call's output with ``register_forward_hook`` (no gradprobe code) and counts, per
unit, the units no sample activated.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.errors import RunError


class ManyRelus(nn.Module):
    """Conv and linear ReLUs, one ReLU module called three times, planted dead channels and features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.act = nn.ReLU()  # called after the conv, after fc1 and after fc2
        self.relu6 = nn.ReLU6()
        self.fc1 = nn.Linear(12 * 8 * 8, 40)
        self.fc2 = nn.Linear(40, 24)
        self.head = nn.Linear(24, 3)
        with torch.no_grad():
            self.conv.bias[[1, 5, 6]] = -1e3  # 3 dead channels
            self.fc1.bias[[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]] = -1e4  # 10 dead features: only 8 indices kept
            self.fc2.bias.fill_(5.0)  # none dead
        self.example_input_array = torch.randn(5, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = self.act(self.fc1(h.flatten(1)))
        h = self.relu6(self.act(self.fc2(h)))
        return self.head(h)


def plain_dead(model: nn.Module) -> dict[tuple[str, int], tuple[int, tuple[int, ...], int]]:
    """(module, call) -> (dead units, first 8 dead indices, units) from plain forward hooks."""
    found: dict[tuple[str, int], tuple[int, tuple[int, ...], int]] = {}
    calls: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU | nn.ReLU6):
            def hook(mod: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
                n = calls.get(name, 0)
                calls[name] = n + 1
                dim = 1 if out.dim() > 2 else -1
                others = [d for d in range(out.dim()) if d != dim % out.dim()]
                per_unit = out.detach().amax(dim=others)
                dead = [i for i, m in enumerate(per_unit.tolist()) if m == 0]
                found[(name, n)] = (len(dead), tuple(dead[:8]), per_unit.numel())
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(model.example_input_array)
    finally:
        for h in handles:
            h.remove()
    return found


def test_dead_units_of_every_relu_call_match_plain_hooks() -> None:
    torch.manual_seed(0)
    model = ManyRelus()
    gh = probe(model, grads=True).facts.grad_health
    assert gh is not None
    ref = plain_dead(model)
    got = {(c.module, c.call): c.dead for c in gh.calls if c.dead is not None}
    assert set(got) == set(ref) and len(ref) == 4
    for key, (dead, first, units) in ref.items():
        d = got[key]
        assert d is not None and (d.dead, d.first_dead, d.units) == (dead, first, units), key
    assert ref[("act", 0)][0] == 3 and ref[("act", 1)][0] >= 10 and len(ref[("act", 1)][1]) == 8  # planted
    assert ref[("act", 2)][0] == 0


class Watch(nn.Module):
    """Records whether the garbage collector was on while its forward ran."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.fail = fail
        self.seen: list[bool] = []
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(gc.isenabled())
        if self.fail:
            raise ValueError("planted")
        return self.fc(x)


@pytest.mark.parametrize("fail", [False, True])
def test_gc_paused_during_a_grads_run_only(fail: bool) -> None:
    assert gc.isenabled()
    model = Watch(fail)
    for grads in (False, True):
        if fail:
            with pytest.raises(RunError):
                probe(model, grads=grads)
        else:
            probe(model, grads=grads)
        assert gc.isenabled()  # back on after the run, also when the forward raised
    assert model.seen == [True, False]  # the default run leaves the collector alone


def test_gc_left_off_when_the_caller_switched_it_off() -> None:
    model = Watch()
    gc.disable()
    try:
        probe(model, grads=True)
        assert not gc.isenabled()
    finally:
        gc.enable()
