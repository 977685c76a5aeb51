"""compare-modes on Hugging Face models built from tiny configs, with padded batches and labels: every module replay
runs (positional and keyword inputs, masks and caches as each module received them), each attributed module's own
difference equals a plain-PyTorch replay of that module, and grad-mode rounding stays within the dtype x magnitude
tolerance with the kernel difference named."""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CliResult
from torch import nn
from torch.utils._pytree import tree_flatten

from gradprobe.api import compare_modes

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.transformers, pytest.mark.slow]  # importing transformers alone takes seconds

VOCAB = 50


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0))


def llama() -> nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, attention_dropout=0.1))


def bart() -> nn.Module:
    torch.manual_seed(0)
    return transformers.BartForConditionalGeneration(transformers.BartConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=VOCAB, max_position_embeddings=32))


def t5() -> nn.Module:
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2, vocab_size=VOCAB,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def floats(out: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(out)
    found = [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if hasattr(out, "to_tuple"):  # a ModelOutput: its tensors in order
        found = [t for t in tree_flatten(out.to_tuple())[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return found


def max_diff(a: Any, b: Any) -> float:
    xs, ys = floats(a), floats(b)
    assert len(xs) == len(ys)
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(xs, ys, strict=True) if x.numel()),
               default=0.0)


def plain_replay(model: nn.Module, batch: dict[str, torch.Tensor], name: str) -> float:
    """The module alone, its own flag eval then train, on what it received in an eval no_grad forward (kwargs
    included), from seed 0 each time: max |diff| of its output."""
    twin = copy.deepcopy(model).eval()
    mod = twin.get_submodule(name)
    got: list[Any] = []
    handle = mod.register_forward_pre_hook(
        lambda _m, args, kwargs: got.append(copy.deepcopy((args, kwargs))) if not got else None, with_kwargs=True)
    with torch.no_grad():
        twin(**batch)
    handle.remove()
    outs = []
    for flag in (False, True):
        args, kwargs = copy.deepcopy(got[0])
        mod.training = flag
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(mod(*args, **kwargs))
    return max_diff(outs[0], outs[1])


def plain_forward(model: nn.Module, batch: dict[str, torch.Tensor], train: set[str] | None = None) -> Any:
    """Eval with exactly ``train`` switched to train mode (None: the whole model in train), seed 0, no_grad."""
    twin = copy.deepcopy(model)
    twin.train(train is None)
    for name, mod in twin.named_modules():
        if train is not None and name in train:
            mod.training = True
    torch.manual_seed(0)
    with torch.no_grad():
        return twin(**batch)


@pytest.mark.parametrize("build", [gpt2, llama, bart], ids=["gpt2", "llama", "bart"])
def test_padded_attribution_against_plain_replays(build: Callable[[], nn.Module]) -> None:
    model, batch = build(), padded_batch()
    report = compare_modes(model, batch, modes="train:no_grad,eval:no_grad", repeat=1)
    a = report.comparison.attribution
    assert a is not None and a.failures == () and a.explained is True
    codes = {f.code for f in report.findings}
    assert "train-eval-unexplained" not in codes and "attribution-incomplete" not in codes
    assert "look for self.training checks" not in " ".join(f.hint for f in report.findings)
    found = {e.name: e for e in a.modules}
    assert found
    for name, effect in found.items():  # each module's own difference, replayed in plain PyTorch
        assert effect.max_abs_diff == plain_replay(model, batch, name), name
    # eval with exactly these modules in train mode gives the train output, in plain PyTorch too
    assert max_diff(plain_forward(model, batch, set(found)), plain_forward(model, batch)) == 0.0
    row = report.comparison.row("train", "no_grad")
    assert row is not None and row.max_abs_diff == max_diff(plain_forward(model, batch), plain_forward(model, batch,
                                                                                                       set()))


def test_gpt2_attention_replay_gets_the_padding_mask() -> None:
    """The replayed attention must see the 4-D padding mask it got as a keyword: without it the padded row's
    output differs; with it the replay equals the module's output inside the real forward."""
    model, batch = gpt2(), padded_batch()
    twin = copy.deepcopy(model).eval()
    attn = twin.transformer.h[0].attn
    seen: dict[str, Any] = {}

    def record(_m: nn.Module, args: Any, kwargs: Any) -> None:  # returns None: the call itself is unchanged
        seen.setdefault("in", copy.deepcopy((args, kwargs)))

    h1 = attn.register_forward_pre_hook(record, with_kwargs=True)
    h2 = attn.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out[0].clone()))
    with torch.no_grad():
        twin(**batch)
    h1.remove()
    h2.remove()
    args, kwargs = seen["in"]
    assert kwargs.get("attention_mask") is not None  # GPT-2 hands the mask over as a keyword argument
    with torch.no_grad():
        assert torch.equal(attn(*args, **kwargs)[0], seen["out"])
    report = compare_modes(model, batch, modes="train:no_grad,eval:no_grad", repeat=1)
    a = report.comparison.attribution
    assert a is not None and "transformer.h.0.attn" in a.tested and not a.failures


def test_t5_grad_mode_within_dtype_tolerance() -> None:
    model, batch = t5(), padded_batch()
    report = compare_modes(model, batch, modes="eval:grad,eval:no_grad", repeat=1)
    twin = copy.deepcopy(model).eval()
    with torch.enable_grad():
        grad_out = [t.detach() for t in floats(twin(**batch))]
    with torch.no_grad():
        no_grad_out = floats(twin(**batch))
    ratios = []  # (diff / tolerance, tolerance) per output: rtol for float32 x the output's largest |value|
    for x, y in zip(grad_out, no_grad_out, strict=True):
        diff = float((x - y).abs().max())
        tol = 1e-5 * max(float(x.abs().max()), float(y.abs().max()))
        ratios.append((diff / tol, tol))
    (d,) = report.comparison.grad_mode_diffs
    assert d.max_abs_diff == max(float((x - y).abs().max()) for x, y in zip(grad_out, no_grad_out, strict=True))
    worst = max(ratios)
    assert d.within_tolerance is (worst[0] <= 1.0) and d.tolerance == pytest.approx(worst[1], rel=1e-6)
    if d.max_abs_diff:
        assert d.within_tolerance and (d.ops_only_row or d.ops_only_base)  # rounding, and the kernels named
    assert "grad-mode-changes-output" not in {f.code for f in report.findings}


def test_cli_gpt2_padded_json(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "gpt2_model.py").write_text(textwrap.dedent(f"""
        import torch
        import transformers

        def tiny():
            torch.manual_seed(0)
            return transformers.GPT2LMHeadModel(transformers.GPT2Config(
                n_layer=2, n_head=2, n_embd=16, vocab_size={VOCAB}, n_positions=32, bos_token_id=0, eos_token_id=0))

        def batch():
            ids = torch.randint(2, {VOCAB}, (2, 8), generator=torch.Generator().manual_seed(3))
            mask = torch.ones_like(ids)
            mask[1, 5:] = 0
            return {{"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}}
    """))
    f = str(tmp_path / "gpt2_model.py")
    result = run_cli("compare-modes", f + ":tiny", "--inputs", f + ":batch", "--modes", "train:no_grad,eval:no_grad",
                     "--repeat", "1", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    codes = {x["code"] for x in doc["findings"]}
    assert "train-eval-unexplained" not in codes and "attribution-incomplete" not in codes
    model, batch = gpt2(), padded_batch()
    expected = max_diff(plain_forward(model, batch), plain_forward(model, batch, set()))
    (row,) = [r for r in doc["rows"] if r["mode"] == "train"]
    assert row["max_abs_diff"] == pytest.approx(expected, rel=1e-6)
    assert "train-eval-difference" in codes
