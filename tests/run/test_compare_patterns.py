"""compare-modes on the patterns that fooled it (issue 9 §4-6, issue 17 §2), each checked against plain PyTorch.

Every test builds the model here, runs ``compare_modes`` through the API, and computes the expected rows,
attribution and warnings with plain PyTorch on a deep copy in the same test; the model, its inputs and the
process state must be exactly as before afterwards.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradprobe.api import compare_modes
from gradprobe.facts.compare import CompareReport, ModeRow

GRAD = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.fixture(autouse=True)
def _quiet_nested_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        yield


# ------------------------------------------------------------------------------------------ plain PyTorch


def plain(model: nn.Module, mode: str, grad_mode: str, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """The output of a deep copy under one combination, from ``torch.manual_seed(seed)``."""
    twin = copy.deepcopy(model).train(mode == "train")
    torch.manual_seed(seed)
    with GRAD[grad_mode]():
        out = twin(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    return out


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


class OpNames(TorchDispatchMode):
    """The test's own record of which ATen ops ran (not gradprobe's)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def state(model: nn.Module) -> dict[str, Any]:
    """Everything compare-modes may touch: values, identities, flags (scripted ones too), grads, global state."""
    return {
        "tensors": [(n, t, t.detach().clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]],
        "grads": [(p, p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "scripted": [m._c.getattr("training") for m in model.modules() if isinstance(m, torch.jit.ScriptModule)],
        "shadowed": [m for m in model.modules() if "training" in vars(m)],
        "grad_enabled": torch.is_grad_enabled(),
        "rng": torch.get_rng_state(),
        "fastpath": torch.backends.mha.get_fastpath_enabled(),
    }


def assert_same_state(model: nn.Module, before: dict[str, Any]) -> None:
    after = state(model)
    for (name, t, value), (_, t2, _) in zip(before["tensors"], after["tensors"], strict=True):
        assert t is t2 and torch.equal(t.detach(), value), name
    for (_p, grad, value), (_, grad2, _) in zip(before["grads"], after["grads"], strict=True):
        assert grad is grad2 and (value is None or torch.equal(grad, value))
    for key in ("requires_grad", "training", "scripted", "shadowed", "grad_enabled", "fastpath"):
        assert after[key] == before[key], key
    assert torch.equal(after["rng"], before["rng"])


def run(model: nn.Module, inputs: Any, **kwargs: Any) -> CompareReport:
    before = state(model)
    report = compare_modes(model, inputs, **kwargs)
    assert_same_state(model, before)
    return report


def rows(report: CompareReport) -> dict[str, ModeRow]:
    return {r.label: r for r in report.rows}


def codes(report: CompareReport) -> set[str]:
    return {f.code for f in report.findings}


def all_text(report: CompareReport) -> str:
    return " ".join([*report.verdict, *(f.message for f in report.findings), *(f.hint or "" for f in report.findings)])


# ------------------------------------------------------------------- nn.MultiheadAttention's fast path


class SelfAttention(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(32, 4, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def attn_input() -> torch.Tensor:
    return torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))


def test_plain_mha_gets_no_false_interaction_warning() -> None:
    model, x = SelfAttention(), attn_input()
    report = run(model, x, repeat=1)
    # plain PyTorch: eval + no_grad with query is key is value takes the fused fast path, train does not
    train, ref = plain(model, "train", "no_grad", x), plain(model, "eval", "no_grad", x)
    expected = diff(train, ref)
    got = rows(report)
    assert got["train:no_grad"].max_abs_diff == expected
    assert "train-eval-unexplained" not in codes(report) and "attribution-incomplete" not in codes(report)
    attn = copy.deepcopy(model.attn)
    with torch.no_grad(), OpNames() as eval_ops:
        attn.eval()
        alone_eval = attn(x, x, x, need_weights=False)[0]
    with torch.no_grad(), OpNames() as train_ops:
        attn.train()
        alone_train = attn(x, x, x, need_weights=False)[0]
    a = report.comparison.attribution
    if expected == 0.0:  # the kernels agree bit for bit on this machine: nothing to attribute
        assert a is None
        return
    assert a is not None and a.explained is True and [e.name for e in a.modules] == ["attn"]
    effect = a.modules[0]
    assert effect.max_abs_diff == diff(alone_train, alone_eval) and effect.within_tolerance is True
    assert set(effect.ops_only_eval) == eval_ops.names - train_ops.names - {"detach", "t", "view", "transpose"}
    assert "_native_multi_head_attention" in effect.ops_only_eval
    # a copy that breaks q is k is v misses the fast path: the old replay saw no difference at all
    with torch.no_grad():
        attn.eval()
        separate = attn(x.clone(), x.clone(), x.clone(), need_weights=False)[0]
    assert diff(separate, alone_train) == 0.0
    assert "train-eval-difference" not in codes(report)  # rounding, not behaviour
    assert any("within float rounding" in line and "aten._native_multi_head_attention" in line
               for line in report.verdict)


def test_mha_with_attention_dropout_is_attributed_to_it() -> None:
    model, x = SelfAttention(dropout=0.3), attn_input()
    report = run(model, x, repeat=1)
    assert rows(report)["train:no_grad"].max_abs_diff == diff(plain(model, "train", "no_grad", x),
                                                             plain(model, "eval", "no_grad", x))
    a = report.comparison.attribution
    assert a is not None and a.explained is True and [e.name for e in a.modules] == ["attn"]
    assert a.modules[0].within_tolerance is False
    # plain replay: attn alone, train flag against eval flag, same input and seed
    attn = copy.deepcopy(model.attn)
    with torch.no_grad():
        torch.manual_seed(0)
        out_eval = attn.eval()(x, x, x, need_weights=False)[0]
        torch.manual_seed(0)
        out_train = attn.train()(x, x, x, need_weights=False)[0]
    assert a.modules[0].max_abs_diff == diff(out_train, out_eval)
    assert codes(report) >= {"train-eval-difference"} and "train-eval-unexplained" not in codes(report)


# ---------------------------------------------------------- nn.TransformerEncoder with a padding mask


class Encoder(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=dropout, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.enc(x, src_key_padding_mask=mask)


def padded_batch() -> dict[str, torch.Tensor]:
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2, 2:] = True
    return {"x": torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(2)), "mask": mask}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_transformer_encoder_nested_fast_path(dropout: float) -> None:
    model, batch = Encoder(dropout), padded_batch()
    keep = ~batch["mask"]
    report = run(model, batch, repeat=1)
    ref, eval_grad = plain(model, "eval", "no_grad", **batch), plain(model, "eval", "grad", **batch)
    train = plain(model, "train", "no_grad", **batch)
    assert torch.all(ref[batch["mask"]] == 0) and not torch.all(eval_grad[batch["mask"]] == 0)  # the fast path
    fast = report.comparison.nested_fast_path
    assert fast is not None and fast.encoders == ("enc",) and fast.rows == ("eval:no_grad", "eval:inference_mode")
    assert fast.padded_positions == int(batch["mask"].sum()) and fast.positions == batch["mask"].numel()
    got = rows(report)
    assert got["train:no_grad"].max_abs_diff == diff(train, ref)
    assert got["train:no_grad"].unpadded_max_abs_diff == diff(train[keep], ref[keep])
    assert got["eval:grad"].unpadded_max_abs_diff == diff(eval_grad[keep], ref[keep])
    assert got["eval:inference_mode"].unpadded_max_abs_diff is None  # same path as the reference
    gm = next(d for d in report.comparison.grad_mode_diffs if d.row == "eval:grad")
    assert gm.max_abs_diff == diff(eval_grad, ref) and gm.unpadded_max_abs_diff == diff(eval_grad[keep], ref[keep])
    assert "_nested_tensor_from_mask" in gm.ops_only_base
    # one sentence about the fast path; no warning for a difference that is by design; no raw exception text
    assert sum("nested-tensor fast path" in line for line in report.verdict) == 1
    assert "grad-mode-changes-output" not in codes(report)
    assert "train-eval-unexplained" not in codes(report) and "attribution-incomplete" not in codes(report)
    assert "NestedTensor" not in all_text(report) and "Error" not in all_text(report)
    a = report.comparison.attribution
    assert a is not None and a.explained is True and a.fast_path_off is True and not a.failures
    expected = {f"enc.layers.{i}.{m}" for i in range(2) for m in ("self_attn", "dropout", "dropout1", "dropout2")}
    assert {e.name for e in a.modules if not e.within_tolerance} == (expected if dropout else set())
    # plain check of the attribution: fast path off, eval with only those modules in train = the train output
    twin = copy.deepcopy(model).eval()
    for name, mod in twin.named_modules():
        if name in {e.name for e in a.modules}:
            mod.train()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            assert diff(twin(**batch), train) == 0.0
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


# ------------------------------------------------------------------------ inputs exactly as supplied


class AddsToItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x += 1  # in place, on the caller's tensor
        return self.lin(x)


class PopsFromItsBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch.pop("x")  # the second call would raise KeyError if the dict were not put back
        batch["seen"] = x
        return self.lin(x)


def test_every_row_gets_the_inputs_as_supplied() -> None:
    model = AddsToItsInput()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    original = x.clone()
    report = run(model, x, repeat=3, backward=True)
    assert torch.equal(x, original)  # the user's tensor is left as given
    for r in report.rows:
        out = plain(model, r.mode, r.grad_mode, original.clone())
        assert r.ok and r.output_requires_grad == out.requires_grad, r.label
        assert r.max_abs_diff == 0.0 and r.repeat_max_abs_diff == 0.0, r.label
    assert "nondeterministic-output" not in codes(report) and "eval-output-random" not in codes(report)


def test_a_forward_that_edits_its_input_dict() -> None:
    model = PopsFromItsBatch()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    batch = {"x": x}
    report = run(model, (batch,), repeat=2)
    assert list(batch) == ["x"] and batch["x"] is x  # the user's dict holds what it held
    assert all(r.ok for r in report.rows), [r.error for r in report.rows]
    assert all(r.max_abs_diff == 0.0 for r in report.rows)


# -------------------------------------------------------------------------------- TorchScript modes


def scripted_bn() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))


@pytest.mark.parametrize("start_in_train", [True, False])
def test_scripted_batchnorm_rows_and_modes(start_in_train: bool) -> None:
    model = scripted_bn().train(start_in_train)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(4))
    report = run(model, x, repeat=1)
    # plain PyTorch on copies of the scripted model, modes set through its own train()/eval()
    ref = plain(model, "eval", "no_grad", x)
    for r in report.rows:
        twin = copy.deepcopy(model).train(r.mode == "train")
        before = {k: v.clone() for k, v in twin.named_buffers()}
        with GRAD[r.grad_mode]():
            out = twin(x)
        changed = [k for k, v in twin.named_buffers() if not torch.equal(v, before[k])]
        assert list(r.buffers_changed) == changed, r.label
        assert r.max_abs_diff == diff(out, ref), r.label
    assert set(rows(report)["train:no_grad"].buffers_changed) == {"1.running_mean", "1.running_var",
                                                                  "1.num_batches_tracked"}
    assert rows(report)["eval:no_grad"].buffers_changed == ()
    # the scripted code runs in the mode the user left it in
    with torch.no_grad():
        again = copy.deepcopy(model)(x)
    expected = plain(model, "train" if start_in_train else "eval", "no_grad", x)
    assert torch.equal(again, expected)


# ---------------------------------------------------------- a replay gradprobe cannot do is its problem


_INSIDE = {"parent": False}


class NeedsItsParent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _INSIDE["parent"]:
            raise RuntimeError("child needs its parent (gradprobe test marker)")
        return x * 3 if self.training else x


class Parent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.child = NeedsItsParent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _INSIDE["parent"] = True
        try:
            return self.child(self.lin(x))
        finally:
            _INSIDE["parent"] = False


def test_a_failing_replay_is_reported_as_gradprobes_limit() -> None:
    model = Parent()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    with pytest.raises(RuntimeError, match="needs its parent"):  # plain PyTorch: the child alone cannot run
        model.child(x)
    expected = diff(plain(model, "train", "no_grad", x), plain(model, "eval", "no_grad", x))
    assert expected > 0
    report = run(model, x, repeat=1)
    assert rows(report)["train:no_grad"].max_abs_diff == expected
    a = report.comparison.attribution
    assert a is not None and a.explained is False
    assert [(f.step, f.module, f.exception) for f in a.failures] == [("replay", "child", "RuntimeError")]
    assert "train-eval-unexplained" not in codes(report)
    f = next(f for f in report.findings if f.code == "attribution-incomplete")
    assert f.severity == "info" and "not a finding about the model" in f.message
    assert "needs its parent" not in all_text(report)  # the raw exception text stays in JSON, not in verdicts


# ------------------------------------------------------------------ Hugging Face: GPT-2 and T5 (tiny)


def _gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _t5() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                                vocab_size=50, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg)


def padded_ids() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(out: Any) -> torch.Tensor:
    return out.logits


@pytest.mark.slow
@pytest.mark.transformers
def test_gpt2_padded_mask_replays_every_module() -> None:
    model, batch = _gpt2(), padded_ids()
    report = run(model, batch, repeat=1)
    a = report.comparison.attribution
    assert a is not None and not a.failures and a.explained is True
    assert "train-eval-unexplained" not in codes(report) and "attribution-incomplete" not in codes(report)
    found = {e.name for e in a.modules}
    # plain PyTorch: eval with exactly these modules in train reproduces the train logits ...
    train = plain(model, "train", "no_grad", **batch)
    twin = copy.deepcopy(model).eval()
    for name, mod in twin.named_modules():
        if name in found:
            mod.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert diff(_logits(twin(**batch)), _logits(train)) == 0.0
    # ... and each of them alone, in train inside an eval model, changes the logits
    ref = _logits(plain(model, "eval", "no_grad", **batch))
    for name in found:
        one = copy.deepcopy(model).eval()
        one.get_submodule(name).train()
        torch.manual_seed(0)
        with torch.no_grad():
            assert diff(_logits(one(**batch)), ref) > 0, name


@pytest.mark.slow
@pytest.mark.transformers
def test_t5_grad_mode_rounding_is_not_a_warning() -> None:
    model, batch = _t5(), {**padded_ids(), "labels": padded_ids()["input_ids"]}
    report = run(model, batch, modes="eval:grad,eval:no_grad", repeat=1)
    grad, no_grad = plain(model, "eval", "grad", **batch), plain(model, "eval", "no_grad", **batch)
    expected = max(diff(grad[k], no_grad[k]) for k in ("loss", "logits", "encoder_last_hidden_state"))
    magnitude = max(float(no_grad[k].abs().max()) for k in ("loss", "logits", "encoder_last_hidden_state"))
    d = report.comparison.grad_mode_diffs[0]
    assert (d.row, d.base) == ("eval:grad", "eval:no_grad") and d.max_abs_diff == expected
    assert expected < 1e-5 * magnitude  # float rounding by the test's own measure
    assert "grad-mode-changes-output" not in codes(report)
    twin = copy.deepcopy(model).eval()
    with torch.enable_grad(), OpNames() as grad_ops:
        twin(**batch)
    with torch.no_grad(), OpNames() as no_grad_ops:
        twin(**batch)
    if expected > 0:
        assert d.within_tolerance is True
        assert set(d.ops_only_row) <= grad_ops.names - no_grad_ops.names
        assert set(d.ops_only_base) <= no_grad_ops.names - grad_ops.names
        assert d.ops_only_row or d.ops_only_base  # the kernel difference is named
        assert any("within float rounding" in line for line in report.verdict)


def test_a_real_grad_mode_branch_still_warns() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * (1.001 if torch.is_grad_enabled() else 1.0)

    model, x = Branch(), torch.randn(5, 4, generator=torch.Generator().manual_seed(7))
    report = run(model, x, repeat=1)
    d = next(d for d in report.comparison.grad_mode_diffs if d.row == "eval:grad")
    assert d.max_abs_diff == diff(plain(model, "eval", "grad", x), plain(model, "eval", "no_grad", x))
    assert d.within_tolerance is False
    assert {f.subject for f in report.findings if f.code == "grad-mode-changes-output"} == {"train:grad", "eval:grad"}
