"""Real Hugging Face architectures (built from tiny configs, no downloads) against plain PyTorch.

Each model gets a realistic fine-tuning freeze (embeddings and every block but the last frozen); the test
runs ``gradprobe`` on it and, independently, a forward + backward of its own on a deep copy, and compares
per-parameter ``requires_grad`` and gradient state, gradient norms, which modules produced outputs that
require grad, and how often each module ran.
"""

from __future__ import annotations

import copy
import json
import math
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.transformers, pytest.mark.slow]  # importing transformers alone takes seconds

from gradprobe.api import probe  # noqa: E402

SEQ, BATCH, VOCAB = 8, 2, 50


# ----------------------------------------------------------------------------------------- the models


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """``requires_grad_(False)`` on every parameter whose (first) name starts with one of ``prefixes``."""
    used = set()
    for name, param in model.named_parameters():
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                param.requires_grad_(False)
                used.add(p)
    assert used == set(prefixes), f"prefixes matching nothing (transformers renamed a module?): {set(prefixes) - used}"


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    freeze(model, ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1"])
    return model


def bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                                  vocab_size=VOCAB, max_position_embeddings=32)
    model = transformers.BertModel(cfg)
    freeze(model, ["embeddings", "encoder.layer.0", "encoder.layer.1"])
    return model


def t5() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                                vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
    freeze(model, ["shared", "encoder.block.0", "decoder.block.0"])
    return model


def vit_unfrozen() -> nn.Module:
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=3,
                                 num_attention_heads=2, intermediate_size=32)
    return transformers.ViTModel(cfg)


# transformers 4.x names ViT blocks ``encoder.layer.N``, 5.x ``layers.N``
VIT_BLOCKS = "encoder.layer" if any(n.startswith("encoder.layer.") for n, _ in vit_unfrozen().named_parameters()) \
    else "layers"


def vit() -> nn.Module:
    torch.manual_seed(0)
    model = vit_unfrozen()
    freeze(model, ["embeddings", f"{VIT_BLOCKS}.0", f"{VIT_BLOCKS}.1"])
    return model


def token_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def gpt2_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": token_ids()}


def bert_inputs() -> dict[str, torch.Tensor]:
    ids = token_ids()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def t5_inputs() -> dict[str, torch.Tensor]:
    ids = token_ids()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": token_ids(2)}


def vit_inputs() -> torch.Tensor:
    return torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    frozen: list[str]  # prefixes the freeze above used, to check the reference is not vacuous
    tied: dict[str, set[str]]  # canonical name -> the other names of the same Parameter


CASES = [
    Case("gpt2", gpt2, gpt2_inputs, ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1"],
         {"transformer.wte.weight": {"lm_head.weight"}}),
    Case("bert", bert, bert_inputs, ["embeddings", "encoder.layer.0", "encoder.layer.1"], {}),
    Case("t5", t5, t5_inputs, ["shared", "encoder.block.0", "decoder.block.0"],
         {"shared.weight": {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}}),
    Case("vit", vit, vit_inputs, ["embeddings", f"{VIT_BLOCKS}.0", f"{VIT_BLOCKS}.1"], {}),
]


# ------------------------------------------------------------------------------ the plain PyTorch reference


def float_leaves(value: Any) -> list[torch.Tensor]:
    """Tensors in tuples, lists, dicts and ModelOutputs (cache objects are not containers)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in float_leaves(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in float_leaves(v)]
    return []


@dataclass
class Reference:
    requires_grad: dict[str, bool]
    grad: dict[str, str]
    norm: dict[str, float]
    loss: float
    calls: dict[str, int]
    grad_outputs: set[str]  # modules whose output holds a tensor that requires grad


def reference(model: nn.Module, inputs: Any) -> Reference:
    """Forward + sum-of-float-outputs loss + backward on a deep copy, in train mode with grad enabled."""
    twin = copy.deepcopy(model)
    twin.train()
    for p in twin.parameters():
        p.grad = None
    names = {name: mod for name, mod in twin.named_modules()}
    calls: dict[str, int] = {}
    grad_outputs: set[str] = set()
    handles = []
    for name, mod in names.items():
        def hook(_m: nn.Module, _a: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if any(t.requires_grad for t in float_leaves(out)):
                grad_outputs.add(name)
        handles.append(mod.register_forward_hook(hook))
    torch.manual_seed(0)  # gradprobe's default --seed, for dropout
    with torch.enable_grad():
        out = twin(**inputs) if isinstance(inputs, dict) else twin(inputs)
        loss = sum(t.float().sum() for t in float_leaves(out) if t.is_floating_point())
        loss.backward()
    for h in handles:
        h.remove()
    grad: dict[str, str] = {}
    norm: dict[str, float] = {}
    for name, p in twin.named_parameters():
        if p.grad is None:
            grad[name] = "none"
        elif bool((p.grad == 0).all()):
            grad[name] = "zero"
        else:
            grad[name] = "nonzero"
            norm[name] = float(p.grad.float().norm())
    return Reference({n: p.requires_grad for n, p in twin.named_parameters()}, grad, norm, float(loss.detach()), calls,
                     grad_outputs)


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(after["grads"][n] is g for n, g in before["grads"].items())
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    assert before["grad_enabled"] == after["grad_enabled"]


# ------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inspect_matches_plain_pytorch(case: Case) -> None:
    model = case.build()
    inputs = case.inputs()
    model.eval()  # gradprobe must put it in train mode for the run and back to eval afterwards
    ref = reference(model, inputs)
    before = snapshot(model)

    report = probe(model, inputs, mode="train", grad_mode="grad")
    facts = report.facts
    assert_same(before, snapshot(model))

    # the reference is not vacuous: the freeze really froze something, and something trains
    assert any(not rg for rg in ref.requires_grad.values()) and any(ref.requires_grad.values())
    assert any(g == "nonzero" for g in ref.grad.values())

    assert facts.backward
    assert facts.loss == pytest.approx(ref.loss, rel=1e-5, abs=1e-4)
    seen: dict[str, str] = {}
    for p in facts.parameters:
        for name in p.names:
            seen[name] = p.name
        assert p.requires_grad == ref.requires_grad[p.name], p.name
        assert p.grad == ref.grad[p.name], p.name
        if p.grad == "nonzero":
            assert p.grad_norm == pytest.approx(ref.norm[p.name], rel=1e-4), p.name
        if not p.requires_grad:
            assert p.grad == "none", p.name
        assert p.module_training  # the run was in train mode
    # every parameter name of the model is reported exactly once (tied ones as aliases)
    all_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert sorted(seen) == sorted(set(all_names))
    assert len(facts.parameters) == len(list(model.parameters()))
    for canonical, others in case.tied.items():
        fact = next(p for p in facts.parameters if p.name == canonical)
        assert set(fact.aliases) == others

    # module calls and which module outputs require grad, as forward hooks of our own saw them
    calls = {m.name: m.calls for m in facts.modules}
    for name, n in ref.calls.items():
        assert calls[name] == n, name
    grad_outputs = {t.module for t in facts.tensors if t.requires_grad and t.module}
    assert grad_outputs == {m for m in ref.grad_outputs if m}

    # no error findings on a correct freeze: frozen parameters without gradient are not "grad-none"
    assert not [f for f in report.findings if f.severity == "error"], report.findings


def test_gpt2_output_holds_a_cache_object_and_only_logits_feed_the_loss() -> None:
    model = gpt2()
    out = model(**gpt2_inputs())
    cache = [v for v in out.values() if not isinstance(v, torch.Tensor)]
    assert cache, "transformers changed: GPT-2 no longer returns a cache object"
    report = probe(model, gpt2_inputs())
    assert [o.path for o in report.facts.outputs] == ["output.logits"]
    logits = report.facts.outputs[0]
    assert logits.shape == (BATCH, SEQ, VOCAB)
    assert logits.requires_grad and logits.grad_fn is not None


def test_bert_frozen_blocks_outputs_do_not_require_grad() -> None:
    """The frozen layers' outputs carry no graph; the last layer's does (autograd's own view)."""
    report = probe(bert(), bert_inputs())
    by_module = {}
    for t in report.facts.tensors:
        by_module.setdefault(t.module, []).append(t)
    assert not any(t.requires_grad for t in by_module["encoder.layer.0"])
    assert not any(t.requires_grad for t in by_module["encoder.layer.1"])
    assert any(t.requires_grad for t in by_module["encoder.layer.2"])
    assert {o.path for o in report.facts.outputs} == {"output.last_hidden_state", "output.pooler_output"}


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_no_backward_modes_on_t5(grad_mode: str) -> None:
    model = t5()
    before = snapshot(model)
    report = probe(model, t5_inputs(), mode="eval", grad_mode=grad_mode)
    assert not report.facts.backward
    assert all(p.grad is None for p in report.facts.parameters)
    assert not any(o.requires_grad for o in report.facts.outputs)
    assert all(o.is_inference == (grad_mode == "inference_mode") for o in report.facts.outputs)
    assert_same(before, snapshot(model))


# ------------------------------------------------------------------------------- through the real CLI


TARGET_FILE = '''
"""A user's project file: builds a tiny model from a config and freezes it."""
import torch
import transformers


def freeze(model, prefixes):
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=16, vocab_size={vocab}, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    freeze(model, ["transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.h.1"])
    return model


def t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                                vocab_size={vocab}, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
    freeze(model, ["shared", "encoder.block.0", "decoder.block.0"])
    return model
'''

INPUTS_FILE = '''
import torch


def ids(seed):
    return torch.randint(2, {vocab}, ({batch}, {seq}), generator=torch.Generator().manual_seed(seed))


def gpt2_inputs(model):
    assert model.training is not None  # takes the model as its one argument
    return {{"input_ids": ids(1)}}


def t5_inputs():
    x = ids(1)
    return {{"input_ids": x, "attention_mask": torch.ones_like(x), "decoder_input_ids": ids(2)}}
'''


@pytest.mark.slow
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=["gpt2", "t5"])
def test_cli_inspect_json_matches_plain_pytorch(case: Case, tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    fmt = {"vocab": VOCAB, "batch": BATCH, "seq": SEQ}
    (tmp_path / "hf_target.py").write_text(textwrap.dedent(TARGET_FILE).format(**fmt))
    (tmp_path / "hf_inputs.py").write_text(textwrap.dedent(INPUTS_FILE).format(**fmt))
    result = run_cli("inspect", f"hf_target.py:{case.name}", "--inputs", f"hf_inputs.py:{case.name}_inputs",
                     "--format", "json", cwd=tmp_path)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    ref = reference(case.build(), case.inputs())
    assert doc["backward"] is True
    assert math.isclose(doc["loss"], ref.loss, rel_tol=1e-5, abs_tol=1e-4)
    params = {p["name"]: p for p in doc["parameters"]}
    assert set(params) == set(ref.requires_grad)
    for name, p in params.items():
        assert p["requires_grad"] == ref.requires_grad[name], name
        assert p["grad"] == ref.grad[name], name
    for canonical, others in case.tied.items():
        assert set(params[canonical]["aliases"]) == others
    assert not [f for f in doc["findings"] if f["severity"] == "error"]


# ------------------------------------------------------------------------------------------ compare-modes


def plain_rows(model: nn.Module, inputs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Per mode pair, on a deep copy: output flags, and the outputs themselves (seeded as gradprobe seeds)."""
    contexts = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    rows = {}
    for mode in ("train", "eval"):
        for grad_mode, ctx in contexts.items():
            twin = copy.deepcopy(model).train(mode == "train")
            torch.manual_seed(0)
            with ctx():
                out = twin(**inputs) if isinstance(inputs, dict) else twin(inputs)
            leaves = [t for t in float_leaves(out) if t.is_floating_point()]
            rows[(mode, grad_mode)] = {
                "requires_grad": any(t.requires_grad for t in leaves),
                "is_inference": any(t.is_inference() for t in float_leaves(out)),
                "outputs": [t.detach().clone() for t in leaves] if grad_mode != "inference_mode"
                else [t.clone() for t in leaves],
            }
    return rows


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compare_modes_matches_plain_pytorch(case: Case) -> None:
    from gradprobe.api import compare_modes

    model = case.build()
    inputs = case.inputs()
    expected = plain_rows(model, inputs)
    before = snapshot(model)
    report = compare_modes(model, inputs, repeat=1)
    assert_same(before, snapshot(model))
    rows = {(r.mode, r.grad_mode): r for r in report.comparison.rows}
    assert set(rows) == set(expected)
    ref = expected[("eval", "no_grad")]["outputs"]
    has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    for key, row in rows.items():
        exp = expected[key]
        assert row.ok, (key, row.error)
        assert row.output_requires_grad == exp["requires_grad"], key
        assert row.is_inference == exp["is_inference"], key
        assert row.backward_possible == (exp["requires_grad"] and key[1] == "grad"), key
        assert (row.graph_nodes or 0) > 0 if exp["requires_grad"] else not row.graph_nodes, key
        assert row.buffers_changed == (), key  # no BatchNorm here: the models' buffers are constants
        if key[0] == "eval" or not has_dropout:  # deterministic rows: the same numbers as plain PyTorch
            assert row.max_abs_diff == pytest.approx(max_diff(exp["outputs"], ref), abs=1e-5), key
        else:  # dropout in train mode really changes the outputs
            assert row.max_abs_diff is not None and row.max_abs_diff > 0, key
    # a correct freeze still has trainable parameters, so train/eval + grad rows need a graph
    assert expected[("train", "grad")]["requires_grad"]


# ------------------------------------------------------------------------------------------- freeze-check


TRAINABLE = {
    "gpt2": ["transformer.h.2", "transformer.ln_f"],
    "bert": ["encoder.layer.2", "pooler"],
    "t5": ["encoder.block.1", "decoder.block.1", "encoder.final_layer_norm", "decoder.final_layer_norm"],
    "vit": [f"{VIT_BLOCKS}.2", "layernorm", "pooler"],
}


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_freeze_check_on_a_correct_freeze_passes_and_matches_plain_pytorch(case: Case) -> None:
    from gradprobe.api import freeze_check

    model = case.build()
    inputs = case.inputs()
    ref = reference(model, inputs)
    before = snapshot(model)
    report = freeze_check(model, inputs, frozen=case.frozen, trainable=TRAINABLE[case.name], unlisted="error")
    assert_same(before, snapshot(model))
    assert report.passed, [v.message for v in report.violations]
    for p in report.parameters:
        names = p.names
        expect = "frozen" if any(under(n, case.frozen) for n in names) else (
            "trainable" if any(under(n, TRAINABLE[case.name]) for n in names) else "unlisted")
        assert p.expected == expect, p.name
        assert p.requires_grad == ref.requires_grad[p.name], p.name
        assert p.grad == ref.grad[p.name], p.name
    assert {p.expected for p in report.parameters} == {"frozen", "trainable"}


def test_freeze_check_catches_a_wrong_claim_on_bert() -> None:
    """Claiming encoder.layer.1 is trainable when it is frozen: a flag violation on each of its parameters."""
    from gradprobe.api import freeze_check

    model = bert()
    report = freeze_check(model, bert_inputs(), frozen=["embeddings", "encoder.layer.0"],
                          trainable=["encoder.layer.1", "encoder.layer.2", "pooler"])
    assert not report.passed
    expected = {n for n, p in model.named_parameters() if n.startswith("encoder.layer.1.")}
    flagged = {v.subject for v in report.violations if v.check == "flag"}
    assert expected <= flagged
    assert not {v.subject for v in report.violations} - expected - {"encoder.layer.1"}


def test_freeze_check_sees_the_gpt2_tied_weight_conflict() -> None:
    """lm_head.weight *is* transformer.wte.weight: freezing one name and training the other is a conflict."""
    from gradprobe.api import freeze_check

    report = freeze_check(gpt2(), gpt2_inputs(), frozen=["transformer.wte"], trainable=["lm_head"],
                          unlisted="ignore")
    conflicts = [v for v in report.violations if v.check == "conflict"]
    assert len(conflicts) == 1
    assert conflicts[0].subject in {"transformer.wte.weight", "lm_head.weight"}


def test_freeze_check_optimizer_holding_frozen_gpt2_parameters() -> None:
    from gradprobe.api import freeze_check

    frozen = CASES[0].frozen
    model = gpt2()
    good = freeze_check(model, gpt2_inputs(), frozen=frozen, trainable=TRAINABLE["gpt2"],
                        optimizer=lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]))
    assert good.passed, [v.message for v in good.violations]
    # every parameter in AdamW with weight decay: torch.optim skips the frozen ones (.grad stays None), so the
    # freeze holds; each frozen parameter in a param group is a warning (it would move once it had a gradient)
    lax = freeze_check(model, gpt2_inputs(), frozen=frozen, trainable=TRAINABLE["gpt2"],
                       optimizer=lambda m: torch.optim.AdamW(m.parameters(), weight_decay=0.1))
    assert lax.passed, lax.explain()
    in_optimizer = {v.subject for v in lax.warnings if v.check == "optimizer"}
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert in_optimizer and in_optimizer <= frozen_names | {"lm_head.weight"}


@pytest.mark.slow
def test_cli_freeze_check_and_compare_modes_on_gpt2(tmp_path: Path, run_cli: Callable[..., Any],
                                                    cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = {"vocab": VOCAB, "batch": BATCH, "seq": SEQ}
    (tmp_path / "hf_target.py").write_text(textwrap.dedent(TARGET_FILE).format(**fmt))
    (tmp_path / "hf_inputs.py").write_text(textwrap.dedent(INPUTS_FILE).format(**fmt))
    spec = ["hf_target.py:gpt2", "--inputs", "hf_inputs.py:gpt2_inputs"]
    freeze_args = [f"--frozen={p}" for p in CASES[0].frozen] + [f"--trainable={p}" for p in TRAINABLE["gpt2"]]
    ok = run_cli("freeze-check", *spec, *freeze_args, "--unlisted", "error", "--format", "json", cwd=tmp_path)
    assert ok.code == 0, ok.err
    doc = json.loads(ok.out)
    assert doc["passed"] is True and doc["violations"] == []
    ref = reference(gpt2(), gpt2_inputs())
    for p in doc["parameters"]:
        assert p["requires_grad"] == ref.requires_grad[p["name"]] and p["grad"] == ref.grad[p["name"]]

    monkeypatch.chdir(tmp_path)
    wrong = cli("freeze-check", *spec, "--frozen", "transformer.wte", "--trainable", "lm_head", "--unlisted",
                "ignore", "--format", "json")
    assert wrong.code == 1, wrong.err
    assert [v["check"] for v in json.loads(wrong.out)["violations"]] == ["conflict"]

    compared = cli("compare-modes", *spec, "--repeat", "1", "--format", "json")
    assert compared.code == 0, compared.err
    rows = {(r["mode"], r["grad_mode"]): r for r in json.loads(compared.out)["rows"]}
    plain = plain_rows(gpt2(), gpt2_inputs())
    assert {k: r["output_requires_grad"] for k, r in rows.items()} == {k: v["requires_grad"] for k, v in plain.items()}
