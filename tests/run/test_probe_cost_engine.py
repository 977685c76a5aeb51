"""The probe's own bookkeeping stays out of the modes that watch the user's forward (issue 16).

* the module recorder's hooks read tensor metadata with torch functions off: the cut tracker's
  ``TorchFunctionMode`` sees exactly the torch calls a plain forward makes;
* the saved-tensor tracker's ``detach`` of each saved tensor skips the op stream (when nothing but the stream
  watches): the stream sees exactly the aten ops a plain forward dispatches, less autograd's own detaches of
  saved tensors (saved-tensor hooks replace those).

Both counts are compared with plain PyTorch modes over a plain forward.  That every fact stays the same is
``test_facts_unchanged.py`` (its ``loose_saved`` and ``*_memory_detail`` cases cover the paths changed here).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from fixtures import zoo
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from gradprobe.api import probe
from gradprobe.run.trackers import base, cuts


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _plain(name: str, counter: type[_CountCalls] | type[_CountOps]) -> tuple[nn.Module, torch.Tensor, Counter[str]]:
    """The model, its input, and what ``counter`` (a plain PyTorch mode) counts over a plain forward of it."""
    torch.manual_seed(0)
    model = {"mlp": zoo.mlp, "tiny_gpt": zoo.tiny_gpt, "resnet_small": zoo.resnet_small}[name]()
    x = model.example_input_array
    with counter() as plain:
        model(x)
    return model, x, plain.seen


@pytest.mark.parametrize("name", ["mlp", "tiny_gpt", "resnet_small"])
def test_cut_mode_sees_only_the_models_torch_calls(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, plain = _plain(name, _CountCalls)
    seen: Counter[str] = Counter()
    real = cuts._Mode.__torch_function__

    def counting(self: Any, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        seen[getattr(func, "__name__", str(func))] += 1
        return real(self, func, types, args, kwargs)

    monkeypatch.setattr(cuts._Mode, "__torch_function__", counting)
    probe(model, x)
    assert seen == plain  # before: +10 metadata reads per module output (numel, shape, grad_fn, ...)


@pytest.mark.parametrize("name", ["mlp", "tiny_gpt", "resnet_small"])
def test_op_stream_sees_only_the_models_forward_ops(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, plain = _plain(name, _CountOps)
    seen: Counter[str] = Counter()
    real = base.OpStream.__torch_dispatch__
    phase = {"now": ""}
    real_install = base.OpStream.install

    def counting(self: Any, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if phase["now"] == base.FORWARD:
            seen[str(func)] += 1
        return real(self, func, types, args, kwargs)

    def install(self: Any, which: str) -> Any:
        phase["now"] = which
        return real_install(self, which)

    monkeypatch.setattr(base.OpStream, "__torch_dispatch__", counting)
    monkeypatch.setattr(base.OpStream, "install", install)
    facts = probe(model, x).facts
    assert facts.memory is not None and facts.memory.saved_for_backward_bytes > 0  # tensors were saved
    # a plain forward's detaches are autograd's own saves (hooks replace them); before, the stream saw one
    # aten.detach per saved tensor (the tracker's); these models call no detach themselves
    detach = "aten.detach.default"
    assert detach not in seen
    assert seen == Counter({op: n for op, n in plain.items() if op != detach})


class _ClassCount(nn.Module):
    num_experts = 4

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"num_local_experts": 8})()
        self.n_experts = 3
        self.register_buffer("n_routed_experts", torch.tensor(2))


class _PropertyCount(nn.Module):
    @property
    def num_experts(self) -> int:
        return 5


class _OwnGetattr(nn.Module):
    def __getattr__(self, name: str) -> Any:
        if name == "num_local_experts":
            return 7
        return super().__getattr__(name)


def test_expert_count_lookup_is_getattr() -> None:
    """The expert finder's attribute look-up (which skips nn.Module's AttributeError) finds what getattr finds."""
    from gradprobe.run.trackers.experts import _COUNT_ATTRS, _attribute

    for mod in (_ClassCount(), _PropertyCount(), _OwnGetattr(), nn.Conv2d(2, 2, 3), nn.Linear(2, 2)):
        for attr in (*_COUNT_ATTRS, "config", "weight", "bias", "training", "missing"):
            assert _attribute(mod, attr) is getattr(mod, attr, None), (type(mod).__name__, attr)
