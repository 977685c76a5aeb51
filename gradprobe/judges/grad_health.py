"""Gradient-health verdicts (``inspect --grads``): pure functions of the run's facts, no torch.

* ``nonfinite-forward``: the first module call whose output held NaN/Inf from finite inputs, the aten op inside
  it and the input figures that explain it (log of values <= 0, division by zero, overflow of the dtype).
* ``nonfinite-backward``: the forward was finite but gradients were not: the first watched backward node that
  turned finite gradients into NaN/Inf, else the first module call (in backward order) whose input gradient was
  non-finite while the gradient reaching its output was finite.
* ``grad-vanishing`` / ``grad-exploding``: the gradient's root-mean-square per element falls / rises by more than
  ``GradThresholds.factor`` across the model's blocks; the block where most of it happens is named.
* ``fp16-underflow``: float16 gradients with subnormal values (or flushed to all zeros) in a backward that ran
  without loss scaling.
* ``dead-units``: ReLU units that no sample of the batch activated, and the exactly-zero gradient rows and
  columns of the layers around them (told apart from zero gradients of a zero-initialised partner factor, which
  ``grad-zero`` of :mod:`gradprobe.judges.gradients` words as expected; :func:`zero_grad_cause` uses its rule).

Every message states what was measured; a cause that was not measured is worded as likely.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradprobe.facts.grad_health import DTYPE_MAX, CallGrad, GradHealthFacts, NonfiniteOrigin, ParamGrad, ValueStats
from gradprobe.facts.run import Finding, GraphFact, ParamFact, RunFacts
from gradprobe.judges.gradients import _zero_partners
from gradprobe.units import shorten

CODES = {
    "nonfinite-forward": "the forward made NaN/Inf: the module call and op that made the first one",
    "nonfinite-backward": "the forward was finite but a gradient became NaN/Inf: the backward node or module call",
    "grad-vanishing": "the gradient shrinks by more than the threshold factor across the model's blocks",
    "grad-exploding": "the gradient grows by more than the threshold factor across the model's blocks",
    "fp16-underflow": "float16 gradients underflow (subnormal or flushed to zero) without loss scaling",
    "dead-units": "ReLU units that no sample activated: exactly-zero gradient rows/columns around them",
}


def grad_health_findings(facts: RunFacts) -> list[Finding]:
    """Every gradient-health verdict the facts support (none without ``--grads`` or on meta)."""
    gh = facts.grad_health
    if gh is None or not gh.measured:
        return []
    findings = nonfinite_findings(facts, gh)
    if gh.backward:
        findings += scale_findings(gh)
        findings += underflow_findings(facts, gh)
    findings += dead_unit_findings(facts, gh)
    return findings


def label(gh: GradHealthFacts, index: int | None) -> str:
    """``'encoder.layers.3' (Linear)``, with ``call #2`` for a repeated module; "the model itself" for the root."""
    if index is None or not 0 <= index < len(gh.calls):
        return "outside any module call"
    c = gh.calls[index]
    repeated = c.module in gh.repeated
    where = f"'{c.module}'" if c.module else "the model itself"
    return f"{where} ({c.type}{f', call #{c.call}' if repeated else ''})"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


# ----------------------------------------------------------------------------------------------- NaN / Inf


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
        f"NaN/Inf into {made}; {why} (located by running that call again on a copy of its inputs)",
        hint)


def _short_op(op: str) -> str:
    """``aten.log.default`` -> ``log``; ``aten.div.Tensor`` -> ``div``."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]


def _stats(s: ValueStats) -> str:
    return f"min {_g(s.min)}, max {_g(s.max)}, {s.negatives} negative and {s.zeros} zero of {s.numel}"


def explain_op(origin: NonfiniteOrigin) -> tuple[str, str]:
    """What the op's input figures say about the NaN/Inf it made, and what to try."""
    op = _short_op(origin.op or "")
    inputs = origin.inputs
    first = inputs[0] if inputs else None
    if origin.wide_finite and origin.dtype in DTYPE_MAX:
        limit = DTYPE_MAX[origin.dtype]
        return (f"overflow in {origin.dtype}: recomputed in float64 the result reaches {_g(origin.wide_max_abs)}, "
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
                "clamp the input (x.clamp_min(eps)) before the root")
    divisor = _divisor(op, inputs, origin.scalars)
    if divisor is not None:
        return (f"division by zero: {divisor}",
                "add an epsilon to the divisor (x / (d + eps)) or mask the zero entries")
    if op in ("pow", "pow_") and first is not None and (first.negatives or first.zeros):
        return (f"a power of values that are negative or zero: its input had {_stats(first)} values",
                "clamp the base, or use an integer exponent for negative bases")
    if op in ("exp", "exp_", "exp2", "expm1") and origin.made_inf:
        return (f"exp overflowed: its input reached {_g(first.max if first else None)}",
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
    base = kind.removesuffix("Backward0").removesuffix("Backward1").removesuffix("Backward2")
    base = base.removesuffix("Backward3").removesuffix("Backward")
    return NODE_HINTS.get(base, f"check the backward of {kind} (a custom autograd.Function's backward, "
                                f"or a formula that divides by its input)")


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
        return [Finding(
            "nonfinite-backward", "error", subject,
            f"the forward was finite, but in backward {node.kind} (made in {label(gh, node.call)}) received finite "
            f"gradients and returned {node.nonfinite_out} NaN/Inf value(s): the first such node in backward "
            f"order{tail}", node_hint(node.kind))]
    order = sorted((i for i, c in enumerate(gh.calls) if c.backward_rank is not None),
                   key=lambda i: gh.calls[i].backward_rank or 0)
    root_bad = next((i for i in order if gh.calls[i].parent is None and _bad(gh.calls[i].grad_out_norm)), None)
    if root_bad is not None:
        return [Finding("nonfinite-backward", "error", "(loss)",
                        f"the gradient reaching the model's output is already NaN/Inf: it comes from the loss "
                        f"(loss = {_g(facts.loss)}){tail}",
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
        f"while the gradient reaching its output was finite (‖g‖ = {_g(c.grad_out_norm)}): the first such call "
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


# ------------------------------------------------------------------------------------- vanishing / exploding


@dataclass(frozen=True)
class ScaleProfile:
    """The gradient's scale across the model's blocks (RMS per element, backward from the last block)."""

    blocks: tuple[int, ...]  # call indices, forward order
    start_rms: float  # at the input of the first block (or its output when its input got no gradient)
    end_rms: float  # at the output of the last block
    worst: int  # the block with the largest change in the direction of the total
    worst_gain: float  # its input RMS / output RMS

    @property
    def ratio(self) -> float:
        """Input of the first block over output of the last: < 1 vanishing, > 1 exploding."""
        return self.start_rms / self.end_rms


def blocks(gh: GradHealthFacts) -> list[int]:
    """The model's blocks: among the direct child calls of the call with the most children that received a
    gradient, the span from the first to the last call of the most repeated type (a transformer's layers
    without the embeddings and head around them, a ResNet's stages, a Sequential's layers); all of them when
    no type repeats three times."""
    children: dict[int, list[int]] = {}
    for i, c in enumerate(gh.calls):
        if c.parent is not None and c.grad_out_rms is not None:
            children.setdefault(c.parent, []).append(i)
    if not children:
        return []
    parent = max(children, key=lambda p: (len(children[p]), -p))
    found = children[parent]
    counts: dict[str, int] = {}
    for i in found:
        counts[gh.calls[i].type] = counts.get(gh.calls[i].type, 0) + 1
    common = max(counts, key=lambda t: counts[t])  # ties: the type seen first (dicts keep insertion order)
    if counts[common] < 3:
        return found
    at = [k for k, i in enumerate(found) if gh.calls[i].type == common]
    end = at[-1]
    steps = {b - a for a, b in itertools.pairwise(at)}
    if len(steps) == 1:  # a periodic stack (Linear, Sigmoid, Linear, ...): the last period belongs to it
        period = steps.pop()
        types = [gh.calls[i].type for i in found]
        tail = types[end + 1:end + period]
        if len(tail) == period - 1 and tail == types[at[0] + 1:at[0] + period]:
            end += period - 1
    return found[at[0]:end + 1]


def scale_profile(gh: GradHealthFacts) -> ScaleProfile | None:
    found = blocks(gh)
    if len(found) < 3:
        return None
    gains: list[tuple[int, float]] = []
    previous: float | None = None
    for i in found:
        c = gh.calls[i]
        into = c.grad_in_rms if c.grad_in_rms is not None else previous
        out = c.grad_out_rms
        if into is not None and out is not None and into > 0 and out > 0 and math.isfinite(into * out):
            gains.append((i, into / out))
        previous = out
    first, last = gh.calls[found[0]], gh.calls[found[-1]]
    start = first.grad_in_rms if first.grad_in_rms else first.grad_out_rms
    end = last.grad_out_rms
    if not start or not end or not gains or not math.isfinite(start) or not math.isfinite(end):
        return None
    falling = start < end
    worst, gain = min(gains, key=lambda x: x[1]) if falling else max(gains, key=lambda x: x[1])
    return ScaleProfile(tuple(found), start, end, worst, gain)


def scale_findings(gh: GradHealthFacts) -> list[Finding]:
    profile = scale_profile(gh)
    if profile is None or gh.forward_origin is not None:
        return []
    factor = gh.thresholds.factor
    ratio = profile.ratio
    if 1 / factor <= ratio <= factor:
        return []
    first = gh.calls[profile.blocks[0]]
    worst = gh.calls[profile.worst]
    total_log = math.log10(ratio)
    share = math.log10(profile.worst_gain) / total_log if total_log else 0.0
    vanishing = ratio < 1
    where = (f"from {_g(profile.end_rms)} at the output of {label(gh, profile.blocks[-1])} to "
             f"{_g(profile.start_rms)} at the {'input' if first.grad_in_rms else 'output'} of "
             f"{label(gh, profile.blocks[0])}")
    message = (f"the gradient's root-mean-square per element {'falls' if vanishing else 'rises'} by a factor of "
               f"{_g(1 / ratio if vanishing else ratio)} across {len(profile.blocks)} blocks ({where}; threshold "
               f"{factor:g}, --grad-factor); "
               f"{'it is spread over the blocks: ' if share < 0.25 else ''}the largest step is "
               f"{label(gh, profile.worst)}, which {'shrinks' if vanishing else 'grows'} it "
               f"{_g(1 / profile.worst_gain if vanishing else profile.worst_gain)}x ({share:.0%} of the total on a "
               f"log scale)")
    if vanishing:
        return [Finding("grad-vanishing", "warning", worst.module or "(model)", message,
                        "the early blocks barely learn: try ReLU/GELU instead of sigmoid/tanh, normalisation "
                        "(LayerNorm/BatchNorm), residual connections, or kaiming/xavier initialisation")]
    return [Finding("grad-exploding", "warning", worst.module or "(model)", message,
                    "clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, add normalisation, "
                    "or scale the initialisation down")]


# ---------------------------------------------------------------------------------------------- fp16 underflow


def underflow_findings(facts: RunFacts, gh: GradHealthFacts) -> list[Finding]:
    limit = gh.thresholds.subnormal_share
    output_grad = any(c.parent is None and c.grad_out_norm for c in gh.calls)
    hit: list[str] = []
    zero_shares: list[tuple[int, float]] = []
    worst_sub = 0.0
    flushed: list[str] = []
    parents = {c.parent for c in gh.calls}
    for i, c in enumerate(gh.calls):
        if i in parents:  # a call around others: its output is one of theirs, or made outside any layer
            continue
        if c.grad_out_dtype != "float16" or not c.grad_out_numel or c.grad_out_subnormal is None:
            continue
        sub = c.grad_out_subnormal / c.grad_out_numel
        zero_shares.append((i, (c.grad_out_zeros or 0) / c.grad_out_numel))
        if sub >= limit:
            hit.append(label(gh, i))
            worst_sub = max(worst_sub, sub)
        elif c.grad_out_zeros == c.grad_out_numel and output_grad:
            flushed.append(label(gh, i))
    for p in gh.parameters:
        if p.subnormal is not None and p.numel and p.subnormal / p.numel >= limit:
            hit.append(f"'{p.name}'")
            worst_sub = max(worst_sub, p.subnormal / p.numel)
        elif p.dtype == "float16" and p.zeros == p.numel and p.numel and output_grad:
            flushed.append(f"'{p.name}'")
    if not hit and not flushed:
        return []
    parts = []
    if hit:
        parts.append(f"{len(hit)} float16 gradient(s) hold subnormal values (nonzero, below 6.1e-05; up to "
                     f"{worst_sub:.0%} of their elements) at {shorten(hit)}")
    if len(zero_shares) >= 2 and zero_shares[0][1] > zero_shares[-1][1]:
        (early, early_share), (late, late_share) = zero_shares[0], zero_shares[-1]
        parts.append(f"exact zeros rise from {late_share:.0%} of the gradient at {label(gh, late)} to "
                     f"{early_share:.0%} at {label(gh, early)}")
    if flushed:
        parts.append(f"{len(flushed)} float16 gradient(s) are all zeros although the gradient at the model's output "
                     f"is not, at {shorten(flushed)}")
    return [Finding(
        "fp16-underflow", "warning", (hit or flushed)[0].split(" (")[0].strip("'"),
        f"{'; '.join(parts)}: values below float16's range flush to zero, and gradprobe's backward ran without loss "
        f"scaling, as a training step without torch.amp.GradScaler does (loss = {_g(facts.loss)})",
        "use torch.amp.GradScaler (scaler.scale(loss).backward(); scaler.step(opt); scaler.update()), or bfloat16 "
        "autocast, whose range is float32's")]


# ------------------------------------------------------------------------------------------------ dead units


def _param_grads(gh: GradHealthFacts) -> dict[str, ParamGrad]:
    return {p.name: p for p in gh.parameters}


def dead_unit_findings(facts: RunFacts, gh: GradHealthFacts) -> list[Finding]:
    grads = _param_grads(gh)
    by_name = {p.name: p for p in facts.parameters}
    own = {m.name: [by_name[n] for n in m.direct_params if n in by_name] for m in facts.modules}
    findings = []
    for i, c in enumerate(gh.calls):
        d = c.dead
        if d is None or not d.dead:
            continue
        around = []
        for j in c.inputs_from:
            for p in own.get(gh.calls[j].module, ()):
                g = grads.get(p.name)
                if g is not None and g.zero_rows is not None and g.rows:
                    what = "rows" if len(p.shape) >= 2 else "entries"
                    around.append(f"'{p.name}' has {g.zero_rows} of {g.rows} gradient {what} exactly zero")
        for k in gh.consumers.get(i, ()):
            if k != i:
                for p in own.get(gh.calls[k].module, ()):
                    g = grads.get(p.name)
                    if g is not None and g.zero_cols is not None and g.cols:
                        around.append(f"'{p.name}' has {g.zero_cols} of {g.cols} gradient columns exactly zero")
        sure = d.samples >= gh.thresholds.dead_min_samples
        material = d.dead / d.units >= gh.thresholds.dead_share
        units = f"unit{'s' if d.dead > 1 else ''} {', '.join(map(str, d.first_dead))}{' …' if d.dead > 8 else ''}"
        message = (f"{d.dead} of {d.units} units of {label(gh, i)} output 0 for all {d.samples} values of each unit "
                   f"in this batch ({units}, dim {d.dim}): their pre-activations were all <= 0, so no gradient "
                   f"flows through them")
        if around:
            message += "; " + "; ".join(around)
        if not sure:
            message += (f" (with {d.samples} value(s) per unit, inactive in this batch does not prove dead: a larger "
                        f"batch tells)")
        producer = f"'{gh.calls[c.inputs_from[0]].module}'" if c.inputs_from else "the layer before"
        findings.append(Finding(
            "dead-units", "warning" if sure and material else "info", c.module or "(model)", message,
            f"dead ReLUs stay dead: check the bias and initialisation of {producer} (a large negative bias), "
            f"lower the learning rate, or use LeakyReLU/GELU"))
    return findings


def zero_grad_causes(facts: RunFacts) -> dict[str, str]:
    """Why parameters' gradients have exact zeros, where a measurement says so: "dead units" (a ReLU next to
    it had dead units: zero rows or columns were counted), "zero partner" (an all-zero factor next to it, as
    LoRA's B at initialisation: the ``grad-zero`` finding of gradprobe.judges.gradients words it, by the same
    rule).  Parameters without such a cause are left out."""
    gh = facts.grad_health
    if gh is None:
        return {}
    by_name = {p.name: p for p in facts.parameters}
    zero_valued = _zero_valued(facts)
    causes = {}
    for g in gh.parameters:
        if not g.zeros:
            continue
        p = by_name.get(g.name)
        if g.zero_rows or g.zero_cols:
            causes[g.name] = "dead units"
        elif p is not None and g.zeros == g.numel and zero_valued and _zero_partners(p, zero_valued):
            causes[g.name] = "zero partner"
    return causes


def zero_grad_cause(facts: RunFacts, name: str) -> str | None:
    """:func:`zero_grad_causes` for one parameter."""
    return zero_grad_causes(facts).get(name)


def _zero_valued(facts: RunFacts) -> dict[str, ParamFact]:
    """The all-zero parameters the run found (``RunFacts.zero_valued_parameters``), for the rule of
    :mod:`gradprobe.judges.gradients` that pairs a zero gradient with its zero-initialised partner."""
    names = set(facts.zero_valued_parameters)
    return {p.name: p for p in facts.parameters if p.name in names}
