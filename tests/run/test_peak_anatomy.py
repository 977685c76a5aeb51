"""Peak anatomy (issue 14) against values computed in the test: arithmetic on a hand-built model, and the live
tensors of plain PyTorch runs counted by the test's own dispatch mode at the moment of their peak."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradprobe.api import probe
from gradprobe.facts.memory import COUNTED
from gradprobe.judges.anatomy import anatomies, kept_after_forward
from gradprobe.render.memory.series import timeline
from tests.fixtures import zoo

B, D, H, O = 32, 256, 1024, 64  # noqa: E741
F32 = 4


class Chain(nn.Module):
    """x @ w1 -> tanh -> @ w2: every allocation is known by arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(D, H) / 16)
        self.w2 = nn.Parameter(torch.randn(H, O) / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x @ self.w1  # B x H, alive (a local) until forward returns, saved by nothing: a temporary
        b = torch.tanh(a)  # B x H, saved (tanh saves its result, the second mm saves its input)
        return b @ self.w2  # B x O: the output


class Keeper(nn.Module):
    """Keeps a tensor made in the forward in a Python list: alive after the forward, not kept by autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, H)
        self.cache: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        self.cache.append(h * 2)  # B x H kept by the list
        return torch.relu(h).sum(dim=1)


def _by_phase(report: Any) -> dict[str, Any]:
    return {a.phase: a for a in anatomies(report.facts.memory.events, top=10)}


def test_forward_peak_split_by_arithmetic() -> None:
    torch.manual_seed(0)
    report = probe(Chain(), torch.randn(B, D), memory_detail=True)
    forward = _by_phase(report)["forward"]
    temporary, saved, output = B * H * F32, B * H * F32, B * O * F32
    assert forward.peak_bytes == temporary + saved + output == report.facts.memory.forward_peak_bytes
    assert forward.category("temporaries") == temporary
    assert forward.category("saved") == saved
    assert forward.category("outputs") == output
    assert forward.category("gradients") == 0
    assert forward.category("parameters") == (D * H + H * O) * F32
    assert forward.category("inputs") == B * D * F32
    assert forward.op == "aten.mm" and forward.module == ""
    biggest = {(t.shape, t.category) for t in forward.top}
    assert ((B, H), "temporaries") in biggest and ((B, H), "saved") in biggest and ((B, O), "outputs") in biggest


class LiveCounter(TorchDispatchMode):
    """The test's own count of live tensor storages: every new storage until it dies, the set alive at the max
    (weak references: a freed storage's address is reused, so keys alone cannot be compared later)."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.known = {t.untyped_storage()._cdata for t in known}
        self.alive: dict[int, tuple[Any, int]] = {}
        self.live = 0
        self.peak = -1
        self.at_peak: list[tuple[Any, int, bool]] = []  # weak reference, bytes, saved for backward
        self.saved: list[Any] = []  # weak references to the storages saved for backward

    def snapshot(self) -> None:
        saved = {id(s) for s in (r() for r in self.saved) if s is not None}
        self.at_peak = [(ref, n, id(ref()) in saved) for ref, n in self.alive.values()]

    def start(self) -> None:
        self.peak = self.live
        self.snapshot()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.alive or key in self.known:
                continue
            nbytes = storage.nbytes()

            def gone(_: Any, key: int = key, nbytes: int = nbytes) -> None:
                if self.alive.pop(key, None) is not None:
                    self.live -= nbytes

            self.alive[key] = (weakref.ref(storage, gone), nbytes)
            self.live += nbytes
            if self.live > self.peak:
                self.peak = self.live
                self.snapshot()
        return out


def _plain_backward_split(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Backward peak of a plain run and its live bytes by category, categorised by the test itself."""
    params = list(model.parameters())
    counter = LiveCounter([*params, *model.buffers(), x])
    saved_refs: list[Any] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved_refs.append(weakref.ref(t.untyped_storage()))
        return t

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), counter:
        out = model(x)
    counter.saved = saved_refs
    loss = out.sum()
    counter.start()
    with counter:
        loss.backward()
    grads = [p.grad.untyped_storage() for p in params if p.grad is not None]
    outputs = [out.untyped_storage()]
    split = dict.fromkeys(COUNTED, 0)
    for ref, nbytes, was_saved in counter.at_peak:
        storage = ref()  # a gradient or an output is alive at the end: a dead one was neither
        kind = "saved" if was_saved else "temporaries"
        if storage is not None and any(storage is g for g in grads):
            kind = "gradients"
        elif not was_saved and storage is not None and any(storage is o for o in outputs):
            kind = "outputs"
        split[kind] += nbytes
    for p in params:
        p.grad = None
    return counter.peak, split


@pytest.mark.parametrize("make", [Chain, lambda: zoo.mlp(), lambda: zoo.tiny_gpt(dropout=0.0)],
                         ids=["chain", "mlp", "tiny_gpt"])
def test_backward_peak_split_matches_a_plain_count(make: Any) -> None:
    torch.manual_seed(0)
    model = make()
    x = model.example_input_array if hasattr(model, "example_input_array") else torch.randn(B, D)
    peak, split = _plain_backward_split(model, x)
    report = probe(model, x, memory_detail=True)
    backward = _by_phase(report)["backward"]
    assert backward.peak_bytes == peak == report.facts.memory.backward_peak_bytes
    assert {c: backward.category(c) for c in COUNTED} == split


@pytest.mark.parametrize("name", ["mlp", "resnet_small", "tiny_gpt"])
def test_log_peaks_and_timeline_maximum_equal_the_reported_peaks(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(zoo, name)()
    report = probe(model, model.example_input_array, memory_detail=True)
    memory = report.facts.memory
    found = _by_phase(report)
    assert found["forward"].peak_bytes == memory.forward_peak_bytes
    assert found["backward"].peak_bytes == memory.backward_peak_bytes
    for a in found.values():
        assert sum(a.category(c) for c in COUNTED) == a.peak_bytes
    for width in (7, 60, 10_000):
        series = {s.phase: s for s in timeline(memory.events, width)}
        assert max(c.high for c in series["forward"].columns) == memory.forward_peak_bytes
        assert max(c.high for c in series["backward"].columns) == memory.backward_peak_bytes
        assert all(len(s.columns) <= width for s in series.values())


def test_meta_gives_the_same_anatomy_as_an_estimate() -> None:
    torch.manual_seed(0)
    cpu = _by_phase(probe(Chain(), torch.randn(B, D), memory_detail=True))
    with torch.device("meta"):
        model = Chain()
    meta = _by_phase(probe(model, torch.randn(B, D, device="meta"), memory_detail=True))
    for phase in ("forward", "backward"):
        assert meta[phase].estimate and not cpu[phase].estimate
        assert meta[phase].categories == cpu[phase].categories
        assert meta[phase].peak_bytes == cpu[phase].peak_bytes


def test_a_tensor_kept_in_a_list_is_found() -> None:
    torch.manual_seed(0)
    model = Keeper()
    report = probe(model, torch.randn(B, D), memory_detail=True)
    kept = kept_after_forward(report.facts.memory.events)
    assert [(k.shape, k.nbytes, k.op) for k in kept] == [((B, H), B * H * F32, "aten.mul.Tensor")]
    finding = next(f for f in report.findings if f.code == "kept-after-forward")
    assert finding.subject == "(model)" and "128.0 KiB" in finding.message
    model.cache.clear()
    plain = probe(Chain(), torch.randn(B, D), memory_detail=True)
    assert not kept_after_forward(plain.facts.memory.events)
    assert "kept-after-forward" not in {f.code for f in plain.findings}


def test_the_log_is_only_kept_when_asked_and_stays_small() -> None:
    torch.manual_seed(0)
    model = zoo.tiny_gpt()
    assert probe(model, model.example_input_array).facts.memory.events is None
    log = probe(model, model.example_input_array, memory_detail=True).facts.memory.events
    assert log.ops > 100 and log.nbytes <= 40 * log.ops
    assert log.column("op_call")[0] >= 0  # forward ops know their module call
    backward = log.span("backward")
    calls = [log.call_at(op) for op in range(backward.first_op, backward.end_op)]
    assert sum(c is not None for c in calls) > len(calls) // 2  # most backward ops map to a forward call
