"""A fused mixture-of-experts layer written in plain PyTorch (no transformers): per-expert gradient states against
slices of the fused gradient, routing against the router's own top-k, and the load-balancing signal of a router
that sends many tokens to few experts."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gradprobe.api import probe
from gradprobe.facts.run import GradState

TOKENS, HIDDEN, EXPERTS, TOP_K = 256, 8, 6, 2


class FusedExperts(nn.Module):
    """Expert weights as one ``(experts, out, in)`` tensor; called with the router's indices and weights."""

    def __init__(self, declare: bool) -> None:
        super().__init__()
        if declare:
            self.num_experts = EXPERTS
        self.up = nn.Parameter(torch.randn(EXPERTS, 2 * HIDDEN, HIDDEN) * 0.2)
        self.down = nn.Parameter(torch.randn(EXPERTS, HIDDEN, 2 * HIDDEN) * 0.2)

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in range(EXPERTS):
            token, slot = torch.where(index == e)
            if token.numel():
                h = torch.relu(x[token] @ self.up[e].t()) @ self.down[e].t()
                out = out.index_add(0, token, h * weights[token, slot, None])
        return out


class CollapsedMoE(nn.Module):
    """A router whose bias keeps experts 4 and 5 out of every token's top-2."""

    def __init__(self, declare: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(HIDDEN, EXPERTS)
        with torch.no_grad():
            self.router.bias.copy_(torch.tensor([5.0, 5.0, 5.0, 5.0, -50.0, -50.0]))
        self.experts = FusedExperts(declare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.router(x).softmax(-1)
        weights, index = probs.topk(TOP_K, dim=-1)
        return self.experts(x, index, weights)


X = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(1))


def plain(model: CollapsedMoE) -> tuple[dict[str, torch.Tensor], list[int]]:
    twin = copy.deepcopy(model)
    twin(X).sum().backward()
    with torch.no_grad():
        index = twin.router(X).softmax(-1).topk(TOP_K, dim=-1).indices
    return {"up": twin.experts.up.grad, "down": twin.experts.down.grad}, \
        torch.bincount(index.reshape(-1), minlength=EXPERTS).tolist()


def test_collapsed_router_is_a_load_balancing_signal() -> None:
    model = CollapsedMoE()
    grads, counts = plain(model)
    assert counts[4] == counts[5] == 0 and sum(counts) == TOKENS * TOP_K
    report = probe(model, X)
    (e,) = report.facts.experts
    assert (e.module, e.experts, e.recognised_by, e.top_k, e.routed_rows) == ("experts", EXPERTS, "num_experts",
                                                                              TOP_K, TOKENS)
    assert list(e.tokens or ()) == counts and list(e.tokens_with_gradient or ()) == counts
    for p in e.parameters:
        g = grads[p.name.rpartition(".")[2]]
        assert p.states == tuple(GradState.NONZERO if g[i].any() else GradState.ZERO for i in range(EXPERTS))
    assert e.zero_experts() == (4, 5) == e.unrouted
    (f,) = [f for f in report.findings if f.code == "experts-without-gradient"]
    expected = EXPERTS * (1 - TOP_K / EXPERTS) ** TOKENS
    assert f.severity == "warning" and "load-balancing signal" in f.message and f"{expected:.1e}" in f.message
    assert f"{max(counts) / sum(counts):.0%} of the assignments" in f.message
    # the fused parameters as a whole are "nonzero": only the slices tell
    assert {p.name: p.grad for p in report.facts.parameters if p.name.startswith("experts.")} == {
        "experts.up": GradState.NONZERO, "experts.down": GradState.NONZERO}


def test_experts_recognised_by_shape_without_a_count_attribute() -> None:
    model = CollapsedMoE(declare=False)
    report = probe(model, X)
    (e,) = report.facts.experts
    assert e.recognised_by == "shape" and e.experts == EXPERTS and e.zero_experts() == (4, 5)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # hooks removed


def test_no_grad_run_reports_routing_without_gradients() -> None:
    model = CollapsedMoE()
    _, counts = plain(model)
    report = probe(model, X, grad_mode="no_grad")
    (e,) = report.facts.experts
    assert list(e.tokens or ()) == counts and e.tokens_with_gradient is None
    assert all(p.states == () for p in e.parameters)
    assert not [f for f in report.findings if f.code == "experts-without-gradient"]
