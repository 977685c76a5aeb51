"""Every fact of a probe run stays as it was before the engine-cost work (issue 16).

The stored facts (``tests/run/facts_unchanged.json``) were written by the code *before* the change:
peaks, saved bytes, per-module memory, gradient states and norms, graph node counts and encodings,
tensor facts, outputs and their non-finite paths.  Timings are the only fields left out.  Regenerate
(only on purpose, from code known to be right) with
``GRADPROBE_WRITE_FACTS=1 pytest tests/run/test_facts_unchanged.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures import zoo
from torch import nn

from gradprobe.api import probe

STORE = Path(__file__).with_name("facts_unchanged.json")
_TIMES = {"forward_time_s", "backward_time_s"}


class _Blowup(nn.Module):
    """Outputs with NaN, +Inf and finite float32 values whose sum overflows."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.lin(x)
        return {"ok": y, "nan": y * float("nan"), "inf": y.detach() * 0 + float("inf") + y * 0,
                "big": y * 0 + 3e38, "half": (y * 0 + 60000).half()}


class _Pos(nn.Module):
    """Returns its own parameter: no torch call of forward takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4))

    def forward(self) -> torch.Tensor:
        return self.weight


class _Ignore(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones(2)


class _Loose(nn.Module):
    """An unregistered tensor saved for backward (a storage the run did not make and knows nothing of), a module
    returning its parameter, and a module handed a parameter it ignores."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.pos = _Pos()
        self.ignore = _Ignore()
        self.gate = nn.Parameter(torch.randn(4))
        self.scale = torch.randn(2, 4)  # a plain attribute: neither parameter nor buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pos()
        self.ignore(self.gate)
        return self.lin(x) * self.scale


def _tiny_gpt2_50k() -> nn.Module:
    return zoo.tiny_gpt(batch=2, seq=64, vocab_size=50257, n_layer=2, n_embd=128)


# name -> (model factory, probe keyword arguments)
CASES: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "mlp": (zoo.mlp, {}),
    "mlp_eval_no_grad": (zoo.mlp, {"mode": "eval", "grad_mode": "no_grad"}),
    "mlp_no_tensors_depth0": (zoo.mlp, {"tensors": False, "depth": 0}),
    "mlp_mean_no_memory": (zoo.mlp, {"loss": "mean", "memory": False}),
    "tiny_gpt": (zoo.tiny_gpt, {}),
    "tiny_gpt_user_loss": (zoo.tiny_gpt, {"loss": lambda out, inp: out.float().logsumexp(-1).mean()}),
    "resnet_small": (zoo.resnet_small, {}),
    "resnet_small_eval": (zoo.resnet_small, {"mode": "eval"}),
    "gpt2_2layer_50k": (_tiny_gpt2_50k, {}),
    "blowup": (_Blowup, {}),
    # added with the saved-tensor and module-hook changes of issue 16 (stored from the code before them)
    "loose_saved": (_Loose, {}),
    "loose_saved_no_memory": (_Loose, {"memory": False}),
    "mlp_memory_detail": (zoo.mlp, {"memory_detail": True}),
    "tiny_gpt_memory_detail": (zoo.tiny_gpt, {"memory_detail": True}),
}


def _plain(value: Any) -> Any:
    """A JSON-able, order-stable form of a fact (bytes hashed, sets sorted, enums by value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in _TIMES}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, bytes):
        return {"len": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, (frozenset, set)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _facts(name: str) -> Any:
    factory, kwargs = CASES[name]
    torch.manual_seed(0)
    model = factory()
    x = getattr(model, "example_input_array", None)
    if x is None:
        x = torch.randn(2, 4)
    report = probe(model, x, **kwargs)
    return _plain(report.facts)


def _same(got: Any, want: Any, where: str) -> None:
    """Exact equality, except floats (gradient norms, the loss): equal to 1e-5 relative.  The stored floats come
    from another machine's CPU: float32 kernels that vectorise differently (AVX2, AVX-512) sum in another order,
    measured up to 1.6e-6 relative on resnet_small's loss and gradient norms; a changed computation (the norm of
    another tensor, a dropped term) moves a figure far more.

    A dataclass field added after the facts were stored is a new fact, not a changed one: keys the store lacks
    are passed over (every stored key must still be there, with the same value)."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-12), where
    elif isinstance(want, dict) and isinstance(got, dict):
        assert set(want) <= set(got), f"{where}: keys gone {sorted(set(want) - set(got))}"
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), f"{where}: {len(got)} items, stored {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def read_store(store: Path, compute: Callable[[str], Any], names: Iterable[str]) -> dict[str, Any]:
    """The stored cases; with ``GRADPROBE_WRITE_FACTS=1`` first written anew by this code, on 1 thread."""
    if os.environ.get("GRADPROBE_WRITE_FACTS") == "1":
        torch.set_num_threads(1)
        data = {"torch": torch.__version__, "cases": {name: compute(name) for name in names}}
        store.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    return json.loads(store.read_text())


def assert_unchanged(stored: dict[str, Any], name: str, compute: Callable[[str], Any]) -> None:
    """Case ``name`` computed now, on 1 thread, equals the stored one (skipped under another torch)."""
    if stored["torch"] != torch.__version__:
        pytest.skip(f"stored with torch {stored['torch']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = json.loads(json.dumps(compute(name)))
    finally:
        torch.set_num_threads(threads)
    _same(got, stored["cases"][name], name)


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    return read_store(STORE, _facts, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_facts_unchanged(name: str, stored: dict[str, Any]) -> None:
    assert_unchanged(stored, name, _facts)
