"""Meta estimates on the models people fine-tune (issue 17 §1, issue 9 §6): a padded tokenised batch on meta.

Each ``transformers`` family is built from a tiny config twice, on the CPU and on meta, and given the same
padded batch (``attention_mask`` with zeros at the end of one row, ``labels``).  The meta run must give the
same bytes as the CPU run -- saved for backward, forward and backward peak -- or mark every difference
approximate with its module and reason.  The CPU figure is checked against plain PyTorch
(``saved_tensors_hooks`` over the same forward) on two models, so the comparison does not rest on gradprobe's
tracker alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradprobe.api import probe
from gradprobe.errors import RunError
from gradprobe.facts.run import MemoryFact
from tests.fixtures import hf_tiny
from tests.fixtures.saved_bytes import plain_saved_bytes


def _memory(model: nn.Module, batch: dict[str, torch.Tensor]) -> MemoryFact:
    memory = probe(model, batch).facts.memory
    assert memory is not None
    return memory


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return hf_tiny.build(name)


def _figures(m: MemoryFact) -> tuple[int | None, int | None, int | None]:
    return m.saved_for_backward_bytes, m.forward_peak_bytes, m.backward_peak_bytes


def _assert_same_or_marked(cpu: MemoryFact, meta: MemoryFact) -> None:
    if _figures(meta) != _figures(cpu):
        assert meta.approximate, (_figures(cpu), _figures(meta))
        assert all(a.module is not None and a.reason for a in meta.approximate)
    else:
        assert not meta.approximate, meta.approximate  # nothing is marked that was not different


@pytest.mark.parametrize("name", hf_tiny.FAMILIES)
def test_meta_estimate_of_a_padded_batch_equals_the_cpu_measurement(name: str) -> None:
    batch = hf_tiny.padded_batch()
    cpu = _memory(hf_tiny.build(name), batch)
    meta = _memory(_meta(name), batch)
    assert meta.method.endswith("(estimate: no memory allocated)")
    assert _figures(meta) == _figures(cpu)  # every family here follows the CPU's kernels: exact
    assert meta.approximate == ()
    assert meta.parameter_bytes == cpu.parameter_bytes


def _plain_saved_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of every storage autograd saves in one training forward, parameters and buffers excluded."""
    model.train()
    torch.manual_seed(0)  # dropout masks are saved: same seed as gradprobe's run
    return plain_saved_bytes(model, lambda: model(**batch))


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_cpu_measurement_matches_plain_pytorch_and_meta_matches_it(name: str) -> None:
    batch = hf_tiny.padded_batch()
    expected = _plain_saved_bytes(hf_tiny.build(name), batch)
    assert _memory(hf_tiny.build(name), batch).saved_for_backward_bytes == expected
    assert _memory(_meta(name), batch).saved_for_backward_bytes == expected


def test_grouped_query_attention_without_mask_follows_the_cpu_flash_kernel() -> None:
    """No mask: transformers calls sdpa with enable_gqa=True; the CPU's flash kernel takes the 2 key/value
    heads as they are, which meta now does too (it used to expand them: +11% saved bytes)."""
    batch = {k: v for k, v in hf_tiny.padded_batch().items() if k != "attention_mask"}
    cpu = _memory(hf_tiny.build("llama"), batch)
    meta = _memory(_meta("llama"), batch)
    assert _figures(meta) == _figures(cpu)


def test_mask_values_are_read_from_the_cpu_copy_not_guessed() -> None:
    """A batch without padding takes transformers' no-mask branch on the CPU; with padding it builds a mask.
    Meta must take the same branch in both cases, so the two estimates differ exactly as the CPU runs do."""
    padded = hf_tiny.padded_batch()
    full = {**padded, "attention_mask": torch.ones_like(padded["attention_mask"])}
    cpu = [_memory(hf_tiny.build("llama"), b).saved_for_backward_bytes for b in (padded, full)]
    meta = [_memory(_meta("llama"), b).saved_for_backward_bytes for b in (padded, full)]
    assert meta == cpu and cpu[0] != cpu[1]


def test_meta_inputs_without_values_name_the_input() -> None:
    batch = {k: v.to("meta") for k, v in hf_tiny.padded_batch().items()}
    with pytest.raises(RunError, match=r"needs the values of .*input 'attention_mask'.*pass input "
                                       r"'attention_mask' as a CPU tensor"):
        probe(_meta("llama"), batch)


def test_mixtral_in_float32_on_meta_equals_the_cpu_measurement() -> None:
    """transformers' experts call grouped_mm, whose meta kernel takes bfloat16 only (plain PyTorch refuses
    float32 on meta); gradprobe shapes the call as the CPU kernel does, forward and backward, so the estimate is
    the CPU run's to the byte -- and the CPU's saved bytes are plain PyTorch's."""
    batch = hf_tiny.padded_batch()
    cpu = _memory(hf_tiny.build("mixtral"), batch)
    meta = _memory(_meta("mixtral"), batch)
    assert _figures(meta) == _figures(cpu) and meta.approximate == ()
    assert cpu.saved_for_backward_bytes == _plain_saved_bytes(hf_tiny.build("mixtral"), batch)
    x = torch.empty(8, 32, device="meta")
    w = torch.empty(4, 32, 64, device="meta")
    with pytest.raises(RuntimeError, match="BF16"):  # what is being worked around
        torch.nn.functional.grouped_mm(x, w, offs=torch.tensor([2, 4, 6, 8], dtype=torch.int32, device="meta"))


def test_mixtral_in_bfloat16_on_meta_equals_the_cpu_bfloat16_run() -> None:
    batch = hf_tiny.padded_batch()
    cpu = _memory(hf_tiny.build("mixtral").to(torch.bfloat16), batch)
    meta = probe(_meta("mixtral"), batch, param_dtype="bfloat16").facts.memory
    assert meta is not None and _figures(meta) == _figures(cpu) and meta.approximate == ()


def test_lora_on_llama_meta_equals_cpu() -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    batch = hf_tiny.padded_batch()
    cpu = _memory(peft.get_peft_model(hf_tiny.build("llama"), config), batch)
    with torch.device("meta"):
        meta_model = peft.get_peft_model(hf_tiny.build("llama"), config)
    meta = _memory(meta_model, batch)
    assert _figures(meta) == _figures(cpu)


# ---- recurrent nets: the CPU's fused oneDNN LSTM


class _Tagger(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(32 if kw.get("bidirectional") else 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("kw", [{"batch_first": True}, {"num_layers": 2, "bidirectional": True},
                                {"bias": False, "num_layers": 2, "dropout": 0.3}])
def test_lstm_meta_follows_the_cpu_mkldnn_kernel(kw: dict[str, object]) -> None:
    x = torch.randn(3, 5, 8)
    torch.manual_seed(0)
    cpu = _memory(_Tagger(**kw), x)  # type: ignore[arg-type]
    with torch.device("meta"):
        meta = _memory(_Tagger(**kw), x)  # type: ignore[arg-type]
    assert _figures(meta) == _figures(cpu)
    assert meta.approximate == ()


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _cpu_runs_onednn_lstm(dtype: torch.dtype) -> bool:
    """Plain PyTorch: whether this machine's CPU runs a ``dtype`` LSTM (with grad) through oneDNN's fused layer
    (bfloat16 needs AVX-512 BF16 or AMX; an AVX2 CPU runs aten's own layer)."""
    with _OpNames() as seen:
        nn.LSTM(8, 16).to(dtype)(torch.randn(3, 5, 8, dtype=dtype))
    return any("mkldnn_rnn_layer" in name for name in seen.names)


def test_bfloat16_lstm_is_marked_approximate_with_the_measured_gap() -> None:
    x = torch.randn(3, 5, 8, dtype=torch.bfloat16)
    cpu = _memory(_Tagger().to(torch.bfloat16), x)
    with torch.device("meta"):
        meta = _memory(_Tagger().to(torch.bfloat16), x)
    _assert_same_or_marked(cpu, meta)
    (mark,) = meta.approximate
    assert (mark.module, mark.op) == ("rnn", "lstm")
    assert mark.cpu_saved_bytes is not None and mark.meta_saved_bytes is not None
    if _cpu_runs_onednn_lstm(torch.bfloat16):  # the fused layer saves its workspace: another sum than the cell's
        assert "this machine's CPU a bfloat16 LSTM runs oneDNN's fused mkldnn_rnn_layer" in mark.reason
        assert mark.cpu_saved_bytes != mark.meta_saved_bytes
    else:  # aten's layer saves what meta's cell saves; it projects all time steps at once (the peaks differ)
        assert "has no oneDNN bfloat16 LSTM" in mark.reason and "all time steps at once" in mark.reason
        assert mark.cpu_saved_bytes == mark.meta_saved_bytes


class _GruTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def test_gru_on_meta_is_marked_approximate_where_the_cpu_branches() -> None:
    """aten's GRU layer projects all time steps at once on the CPU and step by step elsewhere: the op streams
    differ (the peaks do here), so the call is marked, with the gap that call alone shows."""
    x = torch.randn(3, 5, 8)
    torch.manual_seed(0)
    cpu = _memory(_GruTagger(), x)
    with torch.device("meta"):
        meta = _memory(_GruTagger(), x)
    assert _figures(meta) != _figures(cpu)  # the reason for the mark, measured
    _assert_same_or_marked(cpu, meta)
    (mark,) = meta.approximate
    assert (mark.module, mark.op) == ("rnn", "gru") and "all time steps at once" in mark.reason


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


@pytest.mark.parametrize("grad_mode", ["no_grad", "grad"])
def test_multihead_attention_fast_path_is_marked_only_where_the_cpu_takes_it(grad_mode: str) -> None:
    x = torch.randn(2, 6, 16)
    cpu = probe(_Attention(), x, mode="eval", grad_mode=grad_mode, backward=False).facts.memory
    with torch.device("meta"):
        model = _Attention()
    meta = probe(model, x, mode="eval", grad_mode=grad_mode, backward=False).facts.memory
    assert cpu is not None and meta is not None
    if grad_mode == "grad":  # no fast path with grad: the same kernels, the same bytes, nothing marked
        assert _figures(meta) == _figures(cpu) and meta.approximate == ()
        return
    assert meta.forward_peak_bytes != cpu.forward_peak_bytes
    _assert_same_or_marked(cpu, meta)
    assert [(a.module, a.op) for a in meta.approximate] == [("attn", "multi_head_attention_forward")]


def test_approximate_marks_reach_json_markdown_and_the_terminal() -> None:
    import io

    from rich.console import Console

    from gradprobe.render.inspect.json_out import inspect_json
    from gradprobe.render.inspect.markdown import inspect_markdown
    from gradprobe.render.inspect.table import render_inspect

    with torch.device("meta"):
        model = _Tagger().to(torch.bfloat16)
    report = probe(model, torch.randn(3, 5, 8, dtype=torch.bfloat16))
    (mark,) = inspect_json(report)["memory"]["approximate"]
    assert (mark["module"], mark["call"], mark["op"]) == ("rnn", 0, "lstm")
    if _cpu_runs_onednn_lstm(torch.bfloat16):
        assert mark["cpu_saved_bytes"] > mark["meta_saved_bytes"] > 0
    else:
        assert mark["cpu_saved_bytes"] == mark["meta_saved_bytes"] > 0
    assert "Approximate" in inspect_markdown(report) and mark["reason"] in inspect_markdown(report)
    console = Console(record=True, width=100, file=io.StringIO(), force_terminal=False, color_system=None)
    render_inspect(report, console)
    text = console.export_text()
    assert "Approximate: the meta run used another kernel" in text and "lstm" in text


class _ClipFn(torch.autograd.Function):
    """A custom backward that reads a gradient value (clipping): fine on the CPU, no values on meta."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g / g.abs().max() if g.abs().max() > 1.0 else g


class _Clip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ClipFn.apply(x)


class _Clipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.clip = _Clip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip(self.lin(x))


def test_a_value_read_in_backward_names_the_node_module_and_op() -> None:
    x = torch.randn(2, 4)
    probe(_Clipped(), x)  # runs on the CPU
    with torch.device("meta"):
        model = _Clipped()
    with pytest.raises(RunError, match=r"^backward on the meta device failed in _ClipFnBackward \(the gradient of "
                                       r"module 'clip' \(_Clip\)\): \.item\(\).*gradients.*--device cpu") as info:
        probe(model, x)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
