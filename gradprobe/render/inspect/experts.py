"""Per-expert gradient states of fused mixture-of-experts parameters, with the routing behind them.

One row per (experts module, expert): the token assignments the router's top-k sent it in this run, then
each fused parameter's slice ``grad[e]``: its state and L2 norm.  The same rows feed the rich table, the
Markdown section and the JSON ``experts`` field.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradprobe.facts.experts import ExpertParamGrads, ExpertsFact
from gradprobe.facts.run import GradState, RunFacts
from gradprobe.render.common import md_table

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
        return f"nonzero {norm:.3g}", state
    return state.value, state


def _rows(facts: RunFacts, top: int | None) -> tuple[list[tuple[str, str, str, list[tuple[str, GradState | None]]]],
                                                      int]:
    """(module shown on its first row, expert, tokens, cells) for each row, and how many rows were left out."""
    cols = _columns(facts)
    rows = []
    for e in facts.experts:
        by_short = {_short(p): p for p in e.parameters}
        for i in range(e.experts):
            tokens = "?" if e.tokens is None else str(e.tokens[i])
            if e.tokens is not None and e.tokens_with_gradient is not None and e.tokens_with_gradient[i] != e.tokens[i]:
                tokens += f" ({e.tokens_with_gradient[i]} in loss)"
            rows.append((e.module if i == 0 else "", str(i), tokens, [_cell(by_short.get(c), i) for c in cols]))
    if top and len(rows) > top:
        return rows[:top], len(rows) - top
    return rows, 0


def caption(facts: RunFacts) -> str:
    """How the figures were measured, in one line."""
    routed = [e for e in facts.experts if e.tokens is not None]
    parts = []
    if routed:
        e = routed[0]
        parts.append(f"tokens: assignments the router's top-{e.top_k} sent each expert in this run "
                     f"({e.routed_rows} tokens per layer call; 'in loss': those whose output got a nonzero gradient)")
    if len(routed) < len(facts.experts):
        parts.append("?: routing not seen")
    parts.append("grad: the state of each expert's slice grad[e] of the fused parameter, nonzero with its L2 norm")
    return "; ".join(parts)


def experts_view(facts: RunFacts, top: int | None) -> RenderableType | None:
    """The rich table, or None when the model has no fused experts."""
    if not facts.experts:
        return None
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    t.add_column("module", overflow="fold")
    t.add_column("expert", justify="right")
    t.add_column("tokens", justify="right")
    for c in _columns(facts):
        t.add_column(c)
    rows, left = _rows(facts, top)
    for module, expert, tokens, cells in rows:
        t.add_row(module, expert, Text(tokens, style="yellow" if tokens.startswith("0") else ""),
                  *(Text(text, style=_STYLE.get(state, "")) if state else Text(text, style="dim")
                    for text, state in cells))
    parts: list[RenderableType] = [Text(TITLE, style="bold"), t, Text(caption(facts), style="dim")]
    if left:
        parts.append(Text(f"{left} more rows: use --top 0 or --format json for all", style="dim"))
    return Group(*parts)


def experts_markdown(facts: RunFacts, top: int | None) -> str:
    """The Markdown section ('' without fused experts)."""
    if not facts.experts:
        return ""
    rows, left = _rows(facts, top)
    table = md_table(["module", "expert", "tokens", *_columns(facts)],
                     [(f"`{m}`" if m else "", x, n, *(text for text, _ in cells)) for m, x, n, cells in rows])
    out = [f"### {TITLE}", "", table, "", f"_{caption(facts)}_"]
    if left:
        out.append(f"\n_{left} more rows: use --format json for all._")
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
