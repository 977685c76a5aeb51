"""Fused mixture-of-experts parameters (transformers 5 Mixtral and Qwen2-MoE from tiny configs): per-expert
gradient states against slices of the fused gradient computed here in plain PyTorch, and tokens per expert
against the router's own top-k indices recorded here with a plain forward hook."""

from __future__ import annotations

import copy
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CliResult
from torch import nn

from gradprobe.api import probe
from gradprobe.facts.experts import ExpertParamGrads, ExpertsFact
from gradprobe.facts.run import GradState
from gradprobe.judges.experts import expert_findings
from gradprobe.render.inspect.markdown import inspect_markdown
from tests.fixtures.facts import run_facts

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.transformers, pytest.mark.slow]  # importing transformers alone takes seconds

VOCAB = 50


def mixtral(experts: int = 8) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=VOCAB, num_local_experts=experts,
                                     num_experts_per_tok=2)
    return transformers.MixtralForCausalLM(cfg)


def qwen2_moe() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(hidden_size=16, intermediate_size=32, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=VOCAB, num_experts=6, num_experts_per_tok=2)
    return transformers.Qwen2MoeForCausalLM(cfg)


def padded_batch(batch: int = 2, seq: int = 5) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[-1, seq - 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def model_loss(out: Any, _inputs: Any) -> torch.Tensor:
    return out.loss


@dataclass
class Plain:
    grads: dict[str, torch.Tensor]  # every 3-D parameter's gradient
    counts: dict[str, torch.Tensor]  # experts module -> assignments per expert (from the router's own output)
    in_loss: dict[str, torch.Tensor]  # ... of tokens whose experts output row got a nonzero gradient


def plain_reference(model: nn.Module, batch: dict[str, torch.Tensor]) -> Plain:
    """loss.backward() on a copy; the router (the experts' sibling ``gate``) output and the experts output's
    gradient recorded with plain hooks."""
    twin = copy.deepcopy(model).train()
    index: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in twin.named_modules():
        if name.endswith(".gate") and hasattr(mod, "top_k"):
            key = name.rpartition(".")[0] + ".experts"

            def on_router(_m: nn.Module, _a: Any, out: Any, key: str = key) -> None:
                index[key] = out[2]

            def on_experts(_m: nn.Module, _a: Any, out: torch.Tensor, key: str = key) -> None:
                out.register_hook(lambda g: masks.__setitem__(key, g.ne(0).any(dim=1)))

            handles.append(mod.register_forward_hook(on_router))
            handles.append(twin.get_submodule(key).register_forward_hook(on_experts))
    torch.manual_seed(0)
    twin(**batch).loss.backward()
    for h in handles:
        h.remove()
    n = {k: twin.get_submodule(k).num_experts for k in index}
    return Plain({name: p.grad for name, p in twin.named_parameters() if p.dim() == 3},
                 {k: torch.bincount(i.reshape(-1), minlength=n[k]) for k, i in index.items()},
                 {k: torch.bincount(i[masks[k]].reshape(-1), minlength=n[k]) for k, i in index.items()})


def check_against_plain(report: Any, ref: Plain, experts: int) -> None:
    facts, grads = report.facts, ref.grads
    assert {e.module for e in facts.experts} == set(ref.counts)
    for e in facts.experts:
        assert e.experts == experts
        assert e.tokens == tuple(ref.counts[e.module].tolist())
        assert e.tokens_with_gradient == tuple(ref.in_loss[e.module].tolist())
        assert e.top_k == 2 and e.routed_rows == sum(e.tokens) // 2
        assert {p.name for p in e.parameters} == {n for n in grads if n.startswith(e.module + ".")}
        for p in e.parameters:
            g = grads[p.name]
            assert p.states == tuple(GradState.NONZERO if bool(g[i].any()) else GradState.ZERO for i in range(experts))
            for i in range(experts):
                assert p.norms[i] == pytest.approx(float(g[i].norm()), rel=1e-5, abs=1e-12)
        zero = tuple(i for i in range(experts) if all(not grads[p.name][i].any() for p in e.parameters))
        assert e.zero_experts() == zero
        # routing is the whole story on these models: no token, or only tokens the loss ignores
        assert set(zero) == set(e.unrouted) | set(e.ignored)


def test_mixtral_per_expert_states_against_fused_gradient_slices() -> None:
    model, batch = mixtral(), padded_batch()
    ref = plain_reference(model, batch)
    assert any(not g[i].any() for g in ref.grads.values() for i in range(8))  # the case the issue is about
    assert all(g.any() for g in ref.grads.values())  # ... while each fused tensor as a whole is "nonzero"
    report = probe(model, batch, loss=model_loss)
    check_against_plain(report, ref, 8)
    assert all(not m._forward_pre_hooks for m in model.modules())  # nothing left on the user's model
    by_module = {f.subject: f for f in report.findings if f.code == "experts-without-gradient"}
    for e in report.facts.experts:
        if not e.zero_experts():
            assert e.module not in by_module
            continue
        f = by_module[e.module]
        assert f.severity == "info" and "data-dependent" in f.message
        if not set(e.unrouted) & set(e.zero_experts()):
            continue
        expected = 8 * (1 - 2 / 8) ** e.routed_rows  # uniform top-2 routing leaves this many empty on average
        assert "expected with this few tokens" in f.message
        assert f"{expected:.2g} of 8 experts empty on average" in f.message
        assert str(list(e.tokens)).replace(" ", "") in f.message.replace(" ", "")


def test_qwen2_moe_per_expert_states() -> None:
    model, batch = qwen2_moe(), padded_batch()
    report = probe(model, batch, loss=model_loss)
    check_against_plain(report, plain_reference(model, batch), 6)


def test_frozen_experts_have_no_per_expert_finding() -> None:
    model = mixtral()
    for p in model.parameters():
        if p.dim() == 3:
            p.requires_grad_(False)
    report = probe(model, padded_batch(), loss=model_loss)
    assert all(s is GradState.ABSENT for e in report.facts.experts for p in e.parameters for s in p.states)
    assert not [f for f in report.findings if f.code == "experts-without-gradient"]
    assert all(p.requires_grad is (p.dim() != 3) for p in model.parameters())  # flags as handed over


def test_many_tokens_with_an_empty_expert_is_a_load_balancing_signal() -> None:
    """Judge on hand-made facts: 400 tokens, top-2 of 8, expert 3 never chosen."""
    tokens = (120, 110, 100, 0, 150, 120, 100, 100)
    states = tuple(GradState.ZERO if n == 0 else GradState.NONZERO for n in tokens)
    e = ExpertsFact("layers.0.experts", "MixtralExperts", 8, "num_experts",
                    (ExpertParamGrads("layers.0.experts.w", (8, 4, 4), states, tuple(float(n) for n in tokens)),),
                    tokens=tokens, routed_rows=400, top_k=2)
    (f,) = expert_findings(replace(run_facts(), experts=(e,)))
    expected = 8 * (1 - 2 / 8) ** 400
    assert f.severity == "warning" and "load-balancing signal" in f.message and f"{expected:.1e}" in f.message
    assert f"{150 / sum(tokens):.0%} of the assignments" in f.message
    few = replace(e, tokens=(1, 1, 1, 0, 1, 1, 1, 0), routed_rows=3)
    (g,) = expert_findings(replace(run_facts(), experts=(few,)))
    assert g.severity == "info" and "expected with this few tokens" in g.message
    assert math.isclose(8 * 0.75 ** 3, float(g.message.split("leaves ")[1].split(" of")[0]), rel_tol=0.01)


def test_markdown_table_has_one_row_per_expert() -> None:
    model, batch = mixtral(4), padded_batch()
    ref = plain_reference(model, batch)
    grads, counts = ref.grads, ref.counts
    md = inspect_markdown(probe(model, batch, loss=model_loss), top=0)
    assert "### Experts (fused MoE parameters, per expert slice)" in md
    first = next(iter(counts))
    section = md.split(f"`{first}` (MixtralExperts, 4 experts, top-2 of 10 tokens)")[1]
    for i, n in enumerate(counts[first].tolist()):
        slices = [grads[f"{first}.{p}"][i] for p in ("gate_up_proj", "down_proj")]
        states = ["zero" if not g.any() else f"nonzero ‖{float(g.norm()):.3g}‖" for g in slices]
        assert f"| {i} | {n} | {int(ref.in_loss[first][i])} | {states[0]} | {states[1]} |" in section


def test_cli_json_experts_field(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "moe_model.py").write_text(textwrap.dedent(f"""
        import torch
        import transformers

        def tiny_mixtral():
            torch.manual_seed(0)
            cfg = transformers.MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size={VOCAB},
                                             num_local_experts=8, num_experts_per_tok=2)
            return transformers.MixtralForCausalLM(cfg)

        def batch():
            ids = torch.randint(2, {VOCAB}, (2, 5), generator=torch.Generator().manual_seed(1))
            mask = torch.ones_like(ids)
            mask[-1, 3:] = 0
            return {{"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}}

        def loss(out, inputs):
            return out.loss
    """))
    model, batch = mixtral(), padded_batch()
    ref = plain_reference(model, batch)
    grads, counts = ref.grads, ref.counts
    f = str(tmp_path / "moe_model.py")
    result = run_cli("inspect", f + ":tiny_mixtral", "--inputs", f + ":batch", "--loss", f + ":loss",
                     "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert {e["module"] for e in doc["experts"]} == set(counts)
    for e in doc["experts"]:
        assert e["tokens_per_expert"] == counts[e["module"]].tolist() and e["top_k"] == 2
        assert e["tokens_with_gradient_per_expert"] == ref.in_loss[e["module"]].tolist()
        for p in e["parameters"]:
            g = grads[p["name"]]
            assert p["grad_per_expert"] == ["nonzero" if g[i].any() else "zero" for i in range(8)]
        assert e["zero_grad_experts"] == [i for i in range(8) if not grads[e["parameters"][0]["name"]][i].any()]
