"""``nonfinite-forward`` and ``nonfinite-backward``: where the first NaN/Inf was made, and what the op's input
figures say about why."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradprobe.facts.grad_health import DTYPE_MAX, CallGrad, GradHealthFacts, NodeGrad, NonfiniteOrigin, ValueStats
from gradprobe.facts.run import Finding, GraphFact, RunFacts
from gradprobe.judges.grad_health.words import label, sig3
from gradprobe.units import shorten


def nonfinite_findings(facts: RunFacts, gh: GradHealthFacts) -> list[Finding]:
    origin = gh.forward_origin
    if origin is not None:
        return [_forward_finding(gh, origin)]
    if not gh.backward:
        return []
    return _backward_findings(facts, gh)


def _forward_finding(gh: GradHealthFacts, origin: NonfiniteOrigin) -> Finding:
    if origin.call is None:
        return Finding("nonfinite-forward", "error", "(inputs)",
                       "the model's inputs already held NaN/Inf before any module ran",
                       "check the data pipeline (normalisation by a zero std, log of 0, missing values)")
    c = gh.calls[origin.call]
    subject = c.module or "(model)"
    where = label(gh, origin.call)
    if origin.op is None:
        return Finding("nonfinite-forward", "error", subject,
                       f"the first NaN/Inf of the forward came out of {where} ({c.nonfinite} of {c.output_numel} "
                       f"output values) although its inputs were finite; the op was not located: {origin.note}",
                       "check the ops of this module's forward for log/sqrt/division of values that can be 0 "
                       "or negative, and for float16 overflow")
    made = " and ".join(x for x in (f"{origin.made_nan} NaN" if origin.made_nan else "",
                                     f"{origin.made_inf} Inf" if origin.made_inf else "") if x)
    why, hint = explain_op(origin)
    return Finding(
        "nonfinite-forward", "error", subject,
        f"the first NaN/Inf of the forward was made in {where} by {origin.op}: it turned inputs without "
        f"{_held(origin.inputs)} into {made}; {why} (located by running that call again on a copy of its inputs)",
        hint)


def _held(inputs: Sequence[ValueStats]) -> str:
    """``NaN/Inf``, or ``NaN (they held 10 Inf)`` when the op's inputs held Inf (it made NaN from them)."""
    inf = sum(s.inf for s in inputs)
    return f"NaN (they held {inf} Inf)" if inf else "NaN/Inf"


def _short_op(op: str) -> str:
    """``aten.log.default`` -> ``log``; ``aten.div.Tensor`` -> ``div``."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]


def _stats(s: ValueStats) -> str:
    return f"min {sig3(s.min)}, max {sig3(s.max)}, {s.negatives} negative and {s.zeros} zero of {s.numel}"


def explain_op(origin: NonfiniteOrigin) -> tuple[str, str]:
    """What the op's input figures say about the NaN/Inf it made, and what to try."""
    op = _short_op(origin.op or "")
    inputs = origin.inputs
    first = inputs[0] if inputs else None
    if origin.made_nan and any(math.isnan(v) for v in origin.scalars):
        return (f"its number argument is NaN: the op writes NaN on purpose (a fill value such as "
                f"{op}(mask, float('nan')))",
                "fill with a finite value, or make sure every NaN written here is masked out before it reaches "
                "the loss")
    if op in ("std", "var", "std_mean", "var_mean") and origin.reduced is not None and origin.correction is not None \
            and origin.reduced <= origin.correction:
        return (f"{op} over {origin.reduced} value(s) per result with correction {origin.correction:g} divides by "
                f"{origin.reduced} - {origin.correction:g} <= 0 (0/0)",
                "reduce over more than one value, or pass correction=0 (the population statistic) where a "
                "single value can occur")
    if origin.wide_finite and origin.dtype in DTYPE_MAX:
        limit = DTYPE_MAX[origin.dtype]
        return (f"overflow in {origin.dtype}: recomputed in float64 the result reaches {sig3(origin.wide_max_abs)}, "
                f"above the largest {origin.dtype} value ({limit:.6g})",
                "keep this op in float32 (autocast(enabled=False) around it, or bfloat16 autocast, which has "
                "float32's range), or scale its inputs down (e.g. subtract the max before exp)")
    if op in ("log", "log2", "log10", "log_") and first is not None and (first.negatives or first.zeros):
        return (f"log of values <= 0: its input had {_stats(first)} values",
                "clamp the input (x.clamp_min(eps).log()), use log1p / log_softmax, or find what makes it <= 0")
    if op in ("log1p", "log1p_") and first is not None and first.min is not None and first.min <= -1:
        return (f"log1p of values <= -1: its input had {_stats(first)} values",
                "clamp the input above -1, or find what pushes it there")
    if op in ("sqrt", "sqrt_", "rsqrt", "rsqrt_") and first is not None and (first.negatives or first.zeros):
        return (f"{op} of values outside its domain: its input had {_stats(first)} values",
                f"clamp the input before {op.rstrip('_')} (x.clamp_min(eps).{op.rstrip('_')}()), or find what "
                f"makes it {'<= 0' if op.startswith('r') else 'negative'}")
    if op in ("_softmax", "softmax", "_log_softmax", "log_softmax") and origin.neg_inf_slices:
        return (f"{origin.neg_inf_slices} of its {origin.slices} rows along the softmax dim are -Inf in every "
                f"position (a fully masked row: an attention row whose every key is masked), and softmax of such "
                f"a row is 0/0",
                "leave every row at least one unmasked position (e.g. the query itself), fill masked scores "
                "with a large finite negative (torch.finfo(dtype).min) instead of -inf, or zero the fully "
                "masked rows' output after the softmax")
    if origin.made_nan and any(s.inf for s in inputs):
        held = "; ".join(f"input {i}: {s.inf} of {s.numel} Inf" for i, s in enumerate(inputs) if s.inf)
        return (f"its inputs held Inf ({held}): NaN from Inf arithmetic (inf - inf, 0 * inf, inf / inf)",
                f"find where the Inf entering {op} was made (a -inf mask, an overflow) and keep it finite")
    divisor = _divisor(op, inputs, origin.scalars)
    if divisor is not None:
        return (f"division by zero: {divisor}",
                "add an epsilon to the divisor (x / (d + eps)) or mask the zero entries")
    if op in ("pow", "pow_") and first is not None and (first.negatives or first.zeros):
        return (f"a power of values that are negative or zero: its input had {_stats(first)} values",
                "clamp the base, or use an integer exponent for negative bases")
    if op in ("exp", "exp_", "exp2", "expm1") and origin.made_inf:
        return (f"exp overflowed: its input reached {sig3(first.max if first else None)}",
                "subtract the max before exp (as softmax/logsumexp do), or clamp the input")
    described = "; ".join(f"input {i}: {_stats(s)}" for i, s in enumerate(inputs[:3])) or "no tensor inputs"
    return (f"its inputs were finite ({described})",
            f"check the values reaching {op} and whether its result fits {origin.dtype or 'the dtype'}")


def _divisor(op: str, inputs: Sequence[ValueStats], scalars: Sequence[float]) -> str | None:
    if op in ("div", "div_", "true_divide", "floor_divide", "remainder", "fmod"):
        if len(inputs) >= 2 and inputs[1].zeros:
            return f"{inputs[1].zeros} of {inputs[1].numel} divisor values are 0"
        if len(inputs) == 1 and 0.0 in scalars:
            return "the divisor is the number 0"
    if op in ("reciprocal", "reciprocal_") and inputs and inputs[0].zeros:
        return f"{inputs[0].zeros} of {inputs[0].numel} values passed to reciprocal are 0"
    return None


NODE_HINTS = {
    "Sqrt": "sqrt has an infinite derivative at 0: use (x + eps).sqrt() or x.clamp_min(eps).sqrt()",
    "Rsqrt": "rsqrt's derivative is infinite at 0: add an epsilon to its input",
    "Pow": "a fractional power's derivative is infinite at 0: add an epsilon to the base",
    "Div": "a gradient divided by a (near) zero divisor: add an epsilon to the divisor",
    "Reciprocal": "1/x's derivative is infinite at 0: add an epsilon",
    "Log": "log's derivative 1/x is infinite at 0: clamp the input (x.clamp_min(eps))",
    "Norm": "a norm's derivative at the zero vector is 0/0: add eps (e.g. F.normalize(x, eps=...))",
    "LinalgVectorNorm": "a norm's derivative at the zero vector is 0/0: add eps (e.g. F.normalize(x, eps=...))",
    "Acos": "acos/asin have infinite derivatives at ±1: clamp the input to (-1 + eps, 1 - eps)",
    "Asin": "acos/asin have infinite derivatives at ±1: clamp the input to (-1 + eps, 1 - eps)",
    "Atan2": "atan2's derivative at (0, 0) is 0/0: add an epsilon",
    "Cdist": "cdist's derivative at zero distance is 0/0: add an epsilon or use squared distances",
    "Std": "std over a single element (or constant values) has an undefined derivative",
    "Var": "var over a single element has an undefined derivative",
    "Prod": "prod's backward divides by the inputs: zeros give NaN",
    "Exp": "exp's gradient overflowed: its forward result was very large",
}


def node_hint(kind: str) -> str:
    base = _base_kind(kind)
    return NODE_HINTS.get(base, f"check the backward of {kind} (a custom autograd.Function's backward, "
                                f"or a formula that divides by its input)")


# ops whose forward is NaN outside their domain (negative inputs): a torch.where/mask that hides that NaN from
# the output does not hide it from the backward
_DOMAIN = frozenset({"Sqrt", "Rsqrt", "Pow", "Log", "Log2", "Log10", "Acos", "Asin", "Atanh", "Acosh", "Lgamma"})

_WHERE_HINT = ("make the branch that is selected away finite too, not only unselected: compute it on a safe input "
               "(torch.where(x > 0, x.clamp_min(eps).sqrt(), 0)) — the torch.where NaN-gradient trap: the zero "
               "gradient of the unselected branch times the op's NaN/infinite derivative is NaN")


def _node_saved(node: NodeGrad) -> tuple[str, str | None]:
    """What the node's saved forward values say (measured before the backward): text for the message and a hint
    that replaces the kind's generic one, or ("", None) when they say nothing more."""
    base = _base_kind(node.kind)
    if node.saved_nonfinite:
        return (f"; the forward values it saved for its formula already held {node.saved_nonfinite} NaN/Inf: "
                f"the forward made them there and a later op (torch.where, a mask, indexing) kept them out of "
                f"every module's output", _WHERE_HINT)
    if base in _DOMAIN and node.saved_negatives and not node.saved_zeros:
        return (f"; the forward values it saved had {node.saved_negatives} negative value(s) and no zero: "
                f"outside {base.lower()}'s domain, so the forward made NaN there that a later op (torch.where, a "
                f"mask) kept out of every module's output", _WHERE_HINT)
    if node.saved_zeros:
        return f"; the forward values it saved had {node.saved_zeros} zero(s)", None
    return "", None


def _base_kind(kind: str) -> str:
    base = kind.removesuffix("Backward0").removesuffix("Backward1").removesuffix("Backward2")
    return base.removesuffix("Backward3").removesuffix("Backward")


def _backward_findings(facts: RunFacts, gh: GradHealthFacts) -> list[Finding]:
    bad_params = [p for p in gh.parameters if p.nonfinite]
    calls_bad = [c for c in gh.calls if _bad(c.grad_out_norm) or _bad(c.grad_in_norm)]
    if not bad_params and not calls_bad:
        return []
    names = shorten([p.name for p in bad_params], 3, quote=True)
    tail = f"; {len(bad_params)} parameter gradient(s) hold NaN/Inf ({names})" if bad_params else ""
    if gh.backward_nodes:
        node = gh.backward_nodes[0]
        subject = gh.calls[node.call].module or "(model)" if node.call is not None else node.kind
        why, hint = _node_saved(node)
        return [Finding(
            "nonfinite-backward", "error", subject,
            f"{'every module output of the forward' if node.saved_nonfinite else 'the forward'} was finite, but in "
            f"backward {node.kind} (made in {label(gh, node.call)}) received finite gradients and returned "
            f"{node.nonfinite_out} NaN/Inf value(s): the first such node in backward order{why}{tail}",
            hint or node_hint(node.kind))]
    order = sorted((i for i, c in enumerate(gh.calls) if c.backward_rank is not None),
                   key=lambda i: gh.calls[i].backward_rank or 0)
    root_bad = next((i for i in order if gh.calls[i].parent is None and _bad(gh.calls[i].grad_out_norm)), None)
    if root_bad is not None:
        return [Finding("nonfinite-backward", "error", "(loss)",
                        f"the gradient reaching the model's output is already NaN/Inf: it comes from the loss "
                        f"(loss = {sig3(facts.loss)}){tail}",
                        "check the loss function for log/sqrt/division at 0 and its inputs' range")]
    culprit = first_turning(gh)
    if culprit is None:
        return [Finding("nonfinite-backward", "error", bad_params[0].name if bad_params else "(model)",
                        f"the forward was finite but gradients hold NaN/Inf{tail}; no module call was located "
                        f"(the value was made outside the recorded calls)",
                        "run once under torch.autograd.detect_anomaly() to get the backward op's traceback")]
    c = gh.calls[culprit]
    kinds = nodes_made_in(facts.graph, c)
    suspects = [k for k in kinds if k in gh.watched_kinds]
    made = (f"; nodes made in that call: {', '.join(kinds[:6])}{' …' if len(kinds) > 6 else ''}" if kinds else "")
    return [Finding(
        "nonfinite-backward", "error", c.module or "(model)",
        f"the forward was finite, but in backward the gradient at the input of {label(gh, culprit)} holds NaN/Inf "
        f"while the gradient reaching its output was finite (‖g‖ = {sig3(c.grad_out_norm)}): the first such call "
        f"in backward order{made}{tail}",
        node_hint(suspects[0]) if suspects else "look for a division, root, log or norm of values that can be 0 "
                                                "in this module's forward")]


def _bad(x: float | None) -> bool:
    return x is not None and not math.isfinite(x)


def first_turning(gh: GradHealthFacts) -> int | None:
    """The call whose input gradient is non-finite while its output gradient is finite, first in backward order
    (of several nested ones the innermost, which started last)."""
    found = [i for i, c in enumerate(gh.calls)
             if c.grad_out_norm is not None and math.isfinite(c.grad_out_norm) and _bad(c.grad_in_norm)]
    if not found:
        return None
    return min(found, key=lambda i: (gh.calls[i].backward_rank or 0, -i))


def nodes_made_in(graph: GraphFact | None, call: CallGrad) -> list[str]:
    """Kinds of the autograd nodes made while ``call`` was the innermost call (from the graph facts)."""
    if graph is None or not graph.call_of:
        return []
    key = (call.module, call.call)
    kinds: list[str] = []
    for i in range(graph.nodes):
        if graph.call(i) == key:
            kind = graph.kind(i)
            if kind not in kinds and kind != "AccumulateGrad":
                kinds.append(kind)
    return kinds
