"""Experts of a fused mixture-of-experts parameter whose gradient slice is exactly zero: routing, not a bug.

Each expert's gradient comes only from the tokens the router sent it, so an expert no token reached has an
exactly zero slice while the fused parameter as a whole is "nonzero".  Whether that is worth a look depends
on how many tokens the run had: with few, an empty expert is likely even under perfectly uniform routing;
with many it is not, and an empty expert says the router concentrates its tokens (a load-balancing signal).
The figure that decides is measured arithmetic: under uniform top-k routing a given expert gets none of T
tokens with probability ``(1 - k/E)^T`` (exactly, for k distinct experts per token), so ``E (1 - k/E)^T``
experts stay empty on average.
"""

from __future__ import annotations

from gradprobe.facts.experts import ExpertsFact
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.units import shorten

CODE = "experts-without-gradient"
DESCRIPTION = "experts of a fused MoE parameter whose gradient slice is exactly zero (tokens per expert given)"
_LIKELY = 0.05  # uniform routing leaves at least this many experts empty on average: "few tokens"


def uniform_empty_experts(e: ExpertsFact) -> float | None:
    """Experts that uniform top-k routing of the run's tokens leaves without a token, on average."""
    if e.routed_rows is None or e.top_k is None or e.experts <= 0:
        return None
    return e.experts * max(0.0, 1.0 - e.top_k / e.experts) ** e.routed_rows


def expert_findings(facts: RunFacts) -> list[Finding]:
    """One finding per experts module with exactly zero expert slices."""
    return [f for f in (_one(e) for e in facts.experts) if f is not None]


def _experts(ids: tuple[int, ...]) -> str:
    return shorten([str(i) for i in ids], 8, quote=False)


def _one(e: ExpertsFact) -> Finding | None:
    zero = e.zero_experts()
    if not zero:
        return None
    where = f"'{e.module}'" if e.module else "the model"
    params = shorten([p.name.rpartition(".")[2] for p in e.parameters], 3, quote=True)
    head = (f"{len(zero)} of {e.experts} experts in {where} ({e.type}, fused in {params}) got an exactly zero "
            f"gradient slice: expert(s) {_experts(zero)}")
    if e.tokens is None:
        return Finding(CODE, "info", e.module or "(model)",
                       f"{head}; gradprobe did not see the routing (no expert-index tensor reached the module), so "
                       f"whether no token was routed to them is unknown",
                       "run a batch with more tokens, or check the router and these experts' weights")
    unrouted, ignored = set(e.unrouted), set(e.ignored)
    unexplained = tuple(i for i in zero if i not in unrouted and i not in ignored)
    total = sum(e.tokens)
    routing = f"the router's top-{e.top_k} sent {total} assignments of {e.routed_rows} tokens as {_counts(e.tokens)}"
    if unrouted & set(zero):
        routing += f", none to expert(s) {_experts(tuple(i for i in zero if i in unrouted))}"
    if ignored & set(zero):
        some = tuple(i for i in zero if i in ignored)
        routing += (f"; expert(s) {_experts(some)} got only tokens whose output got an exactly zero gradient "
                    f"(the loss ignores them: padded or label-masked positions, or a causal LM's last position)")
    if unexplained:
        return Finding(CODE, "warning", e.module or "(model)",
                       f"{head}; {routing}; but expert(s) {_experts(unexplained)} got tokens the loss depends on "
                       f"and still an exactly zero gradient",
                       "check those experts' weights and the routing weights they were given (a zero weight "
                       "or a zero-initialised factor)")
    data = "each expert's gradient comes only from the tokens routed to it, so this is data-dependent"
    if not unrouted & set(zero):
        return Finding(CODE, "info", e.module or "(model)", f"{head}: {routing}; {data}: expected",
                       "nothing to fix; batches whose loss covers more tokens give these experts a gradient")
    expected = uniform_empty_experts(e)
    if expected is not None and expected >= _LIKELY:
        return Finding(CODE, "info", e.module or "(model)",
                       f"{head}: {routing}; {data}, and expected with this few tokens (even uniform routing "
                       f"leaves {_figure(expected)} of {e.experts} experts empty on average)",
                       "nothing to fix; a larger batch gives every expert tokens")
    busiest = max(e.tokens)
    return Finding(CODE, "warning", e.module or "(model)",
                   f"{head}: {routing}; {data}, but with {e.routed_rows} tokens uniform routing would leave "
                   f"{_figure(expected)} experts empty on average: a load-balancing signal (the busiest expert "
                   f"got {busiest / total:.0%} of the assignments, uniform is {1 / e.experts:.0%})",
                   "check the router's auxiliary load-balancing loss (output_router_logits=True, "
                   "router_aux_loss_coef) or a router collapsing onto few experts")


def _counts(tokens: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in tokens) + "]"


def _figure(x: float | None) -> str:
    if x is None:
        return "an unknown number of"
    return f"{x:.2g}" if x >= 0.001 else f"{x:.1e}"
