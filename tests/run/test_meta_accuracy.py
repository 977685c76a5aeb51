"""The meta-device estimate against the same run measured on CPU (issue 5 §1 Accuracy).

On every reference model that fits in memory, the meta run's forward peak, saved-for-backward bytes
and backward peak must agree with the CPU run within 2%.  The CPU figure of saved bytes is also checked
against plain PyTorch (``saved_tensors_hooks`` collecting every saved storage), so the comparison does
not rest on gradprobe's tracker alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradprobe.api import probe
from gradprobe.facts.run import MemoryFact
from gradprobe.run.trackers.meta import MetaAttentionChoice, meta_fidelity
from tests.fixtures import zoo
from tests.fixtures.saved_bytes import plain_saved_bytes

# (factory, kwargs): every benchmark model that fits, at sizes that keep the test fast
SLOW = {"gpt2_small", "resnet50", "resnet_small"}  # seconds each on 2 cores: left to the full run
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, int]]] = {
    "mlp": (zoo.mlp, {}),
    "resnet_small": (zoo.resnet_small, {}),
    "resnet50": (zoo.resnet50, {"image": 64}),
    "tiny_gpt": (zoo.tiny_gpt, {}),
    "gpt2_small": (zoo.gpt2_small, {"seq": 32}),
    "tiny_llama": (zoo.tiny_llama, {}),
}


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    factory, kwargs = MODELS[name]
    torch.manual_seed(0)
    cpu = factory(**kwargs)
    with torch.device("meta"):
        meta = factory(**kwargs)
    return cpu, meta


def _memory(model: nn.Module, mode: str) -> MemoryFact:
    memory = probe(model, None, mode=mode).facts.memory
    assert memory is not None
    return memory


def _close(estimate: int | None, measured: int | None) -> bool:
    assert estimate is not None and measured is not None and measured > 0
    return abs(estimate - measured) <= 0.02 * measured


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
def test_meta_estimate_matches_cpu_within_2_percent(name: str, mode: str) -> None:
    cpu_model, meta_model = _pair(name)
    cpu, meta = _memory(cpu_model, mode), _memory(meta_model, mode)
    assert meta.method.endswith("(estimate: no memory allocated)")
    assert _close(meta.forward_peak_bytes, cpu.forward_peak_bytes), (meta.forward_peak_bytes, cpu.forward_peak_bytes)
    assert _close(meta.saved_for_backward_bytes, cpu.saved_for_backward_bytes), (
        meta.saved_for_backward_bytes, cpu.saved_for_backward_bytes)
    assert _close(meta.backward_peak_bytes, cpu.backward_peak_bytes), (
        meta.backward_peak_bytes, cpu.backward_peak_bytes)
    assert meta.parameter_bytes == cpu.parameter_bytes == sum(p.numel() * 4 for p in cpu_model.parameters())
    assert meta.gradient_bytes == cpu.gradient_bytes


def _plain_saved_bytes(model: nn.Module, mode: str) -> int:
    """Bytes of every storage autograd saves in one forward, parameters and buffers excluded: plain PyTorch."""
    model.train(mode == "train")
    return plain_saved_bytes(model, lambda: model(model.example_input_array))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["mlp", pytest.param("resnet_small", marks=pytest.mark.slow), "tiny_gpt",
                                  "tiny_llama"])
def test_meta_saved_bytes_match_plain_pytorch_on_cpu(name: str, mode: str) -> None:
    cpu_model, meta_model = _pair(name)
    expected = _plain_saved_bytes(cpu_model, mode)
    assert _memory(meta_model, mode).saved_for_backward_bytes == expected


class _OpLog(TorchDispatchMode):
    """Every op and the shape and storage size of each output, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[tuple[tuple[int, ...], int] | None]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), [(tuple(o.shape), o.untyped_storage().nbytes()) if isinstance(o, torch.Tensor)
                                     else None for o in outs]))
        return out


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["mlp", pytest.param("resnet_small", marks=pytest.mark.slow), "tiny_gpt",
                                  "tiny_llama"])
def test_meta_op_stream_is_the_cpu_op_stream(name: str, mode: str) -> None:
    """Why the estimate is exact: forward and backward run the same ops with the same output sizes."""
    streams = []
    for device, model in zip(("cpu", "meta"), _pair(name), strict=True):
        model.train(mode == "train")
        fidelity = meta_fidelity() if device == "meta" else contextlib.nullcontext()
        with fidelity, _OpLog() as log:
            model(model.example_input_array).float().sum().backward()
        streams.append(log.ops)
    assert streams[0] == streams[1]


# ---- attention: meta alone always takes the math path; gradprobe asks the CPU dispatcher


@pytest.mark.parametrize(("dropout", "causal", "masked"), [
    (0.0, True, False), (0.0, False, False), (0.1, True, False), (0.0, False, True)])
def test_meta_attention_saves_what_the_cpu_kernel_saves(dropout: float, causal: bool, masked: bool) -> None:
    """Saved tensors of SDPA on meta (under gradprobe's kernel choice) have the shapes the CPU run saves."""

    def saved_shapes(device: str, choose: bool) -> list[tuple[tuple[int, ...], torch.dtype]]:
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 4, 16, 8, device=device, requires_grad=True) for _ in range(3))
        mask = torch.ones(16, 16, dtype=torch.bool, device=device).tril() if masked else None
        shapes: list[tuple[tuple[int, ...], torch.dtype]] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append((tuple(t.shape), t.dtype)) or t,
                                                      lambda t: t):
            if choose:
                with MetaAttentionChoice():
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
            else:
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        return sorted(shapes, key=str)

    assert saved_shapes("meta", choose=True) == saved_shapes("cpu", choose=False)


def test_meta_attention_choice_changes_nothing_off_meta() -> None:
    q = torch.randn(1, 2, 8, 4)
    expected = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    with MetaAttentionChoice():
        got = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert torch.equal(got, expected)


def test_llama_attention_matrix_is_not_counted_on_meta() -> None:
    """Without the CPU kernel choice, meta would count the [batch, heads, seq, seq] matrix per layer."""
    with torch.device("meta"):
        model = zoo.tiny_llama(batch=1, seq=64, num_hidden_layers=1)
    memory = _memory(model, "train")
    attn = next(m for m in memory.by_module if m.module == "model.layers.0.self_attn")
    heads, seq = 4, 64
    assert attn.inside_saved_bytes < heads * seq * seq * 4  # smaller than one float32 attention matrix


@pytest.mark.transformers
def test_hf_llama_meta_matches_cpu() -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    cpu_model = zoo.hf_tiny_llama()
    with torch.device("meta"):
        meta_model = zoo.hf_tiny_llama()
    for mode in ("train", "eval"):
        cpu, meta = _memory(cpu_model, mode), _memory(meta_model, mode)
        assert _close(meta.forward_peak_bytes, cpu.forward_peak_bytes)
        assert _close(meta.saved_for_backward_bytes, cpu.saved_for_backward_bytes)
        assert _close(meta.backward_peak_bytes, cpu.backward_peak_bytes)
