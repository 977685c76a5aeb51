"""Per-expert gradient states of fused mixture-of-experts parameters, with the routing behind them.

One row per (experts module, expert): the token assignments the router's top-k sent it in this run, then
each fused parameter's slice ``grad[e]``: its state and L2 norm.  The same rows feed the rich table, the
Markdown section and the JSON ``experts`` field.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gradprobe.facts.experts import ExpertParamGrads, ExpertsFact
from gradprobe.facts.run import GradState, RunFacts
from gradprobe.render.common import light_table, md_table

TITLE = "Experts (fused MoE parameters, per expert slice)"
_STYLE = {GradState.ABSENT: "red", GradState.ZERO: "yellow", GradState.NONZERO: "green", GradState.PRESENT: "green"}


def _short(p: ExpertParamGrads) -> str:
    return p.name.rpartition(".")[2]


def _columns(facts: RunFacts) -> list[str]:
    return list(dict.fromkeys(_short(p) for e in facts.experts for p in e.parameters))


def _cell(p: ExpertParamGrads | None, i: int) -> tuple[str, GradState | None]:
    if p is None or i >= len(p.states):
        return "-", None
    state, norm = p.states[i], p.norms[i]
    if state is GradState.NONZERO and norm is not None:
        return f"nonzero ‖{norm:.3g}‖", state
    return state.value, state


def _tokens(e: ExpertsFact, i: int) -> tuple[str, str]:
    """The assignments expert ``i`` got, and of those the ones whose token the loss depends on."""
    if e.tokens is None:
        return "?", "?"
    return str(e.tokens[i]), "?" if e.tokens_with_gradient is None else str(e.tokens_with_gradient[i])


def _rows(e: ExpertsFact, cols: list[str]) -> list[tuple[str, str, str, list[tuple[str, GradState | None]]]]:
    """(expert, tokens, tokens in the loss, one cell per fused parameter) for each expert of ``e``."""
    by_short = {_short(p): p for p in e.parameters}
    return [(str(i), *_tokens(e, i), [_cell(by_short.get(c), i) for c in cols]) for i in range(e.experts)]


def _heading(e: ExpertsFact) -> str:
    routing = f"top-{e.top_k} of {e.routed_rows} tokens" if e.tokens is not None else "routing not seen"
    return f"{e.module or '(model)'} ({e.type}, {e.experts} experts, {routing})"


def caption(facts: RunFacts) -> str:
    """How the figures were measured, in one line."""
    return ("tokens: assignments the router sent each expert in this run; in loss: those whose token's output got "
            "a nonzero gradient; each parameter: the state of the expert's slice grad[e], with its L2 norm")


def _shown(facts: RunFacts, top: int | None) -> tuple[list[ExpertsFact], int]:
    """The experts modules that fit in ``top`` rows, and how many modules were left out."""
    if not top:
        return list(facts.experts), 0
    shown, rows = [], 0
    for e in facts.experts:
        if shown and rows + e.experts > top:
            break
        shown.append(e)
        rows += e.experts
    return shown, len(facts.experts) - len(shown)


def experts_view(facts: RunFacts, top: int | None) -> RenderableType | None:
    """One small rich table per experts module, or None when the model has no fused experts."""
    if not facts.experts:
        return None
    cols = _columns(facts)
    parts: list[RenderableType] = [Text(TITLE, style="bold")]
    shown, left = _shown(facts, top)
    for e in shown:
        t = light_table()
        for c in ("expert", "tokens", "in loss"):
            t.add_column(c, justify="right")
        for c in cols:
            t.add_column(c)
        for expert, tokens, in_loss, cells in _rows(e, cols):
            t.add_row(expert, Text(tokens, style="yellow" if tokens == "0" else ""),
                      Text(in_loss, style="yellow" if in_loss == "0" else ""),
                      *(Text(text, style=_STYLE.get(state, "")) if state else Text(text, style="dim")
                        for text, state in cells))
        parts += [Text(_heading(e)), t]
    parts.append(Text(caption(facts), style="dim"))
    if left:
        parts.append(Text(f"{left} more experts modules: use --top 0 or --format json for all", style="dim"))
    return Group(*parts)


def experts_markdown(facts: RunFacts, top: int | None) -> str:
    """The Markdown section ('' without fused experts)."""
    if not facts.experts:
        return ""
    cols = _columns(facts)
    out = [f"### {TITLE}", ""]
    shown, left = _shown(facts, top)
    for e in shown:
        out += [f"`{e.module or '(model)'}` ({e.type}, {e.experts} experts, "
                f"{_heading(e).rpartition(', ')[2]}", "",
                md_table(["expert", "tokens", "in loss", *cols],
                         [(x, n, g, *(text for text, _ in cells)) for x, n, g, cells in _rows(e, cols)]), ""]
    out.append(f"_{caption(facts)}_")
    if left:
        out.append(f"\n_{left} more experts modules: use --format json for all._")
    return "\n".join(out)


def experts_json(e: ExpertsFact) -> dict[str, Any]:
    """One experts module for the JSON ``experts`` field."""
    return {
        "module": e.module, "type": e.type, "experts": e.experts, "recognised_by": e.recognised_by,
        "tokens_per_expert": None if e.tokens is None else list(e.tokens), "routed_tokens": e.routed_rows,
        "tokens_with_gradient_per_expert": None if e.tokens_with_gradient is None else list(e.tokens_with_gradient),
        "ignored_token_experts": list(e.ignored),
        "top_k": e.top_k, "unrouted_experts": list(e.unrouted), "zero_grad_experts": list(e.zero_experts()),
        "parameters": [{"name": p.name, "shape": list(p.shape), "grad_per_expert": [s.value for s in p.states],
                        "grad_norm_per_expert": [_num(n) for n in p.norms]} for p in e.parameters],
    }


def _num(x: float | None) -> float | str | None:
    """JSON has no NaN/Inf: those are written as strings."""
    return x if x is None or math.isfinite(x) else str(x)
