"""``fp16-underflow``: float16 gradients with subnormal values, or flushed to zeros, without loss scaling."""

from __future__ import annotations

from gradprobe.facts.grad_health import GradHealthFacts
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.grad_health.words import label, sig3
from gradprobe.units import shorten


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
        # every exact zero is counted: a ReLU or a mask makes some by design, which no count here tells apart
        parts.append(f"exact zeros rise from {late_share:.0%} of the gradient at {label(gh, late)} to "
                     f"{early_share:.0%} at {label(gh, early)} (every exact zero counts, also those a ReLU or a mask "
                     f"makes by design)")
    if flushed:
        parts.append(f"{len(flushed)} float16 gradient(s) are all zeros although the gradient at the model's output "
                     f"is not, at {shorten(flushed)}")
    return [Finding(
        "fp16-underflow", "warning", (hit or flushed)[0].split(" (")[0].strip("'"),
        f"{'; '.join(parts)}: values below float16's range flush to zero, and gradprobe's backward ran without loss "
        f"scaling, as a training step without torch.amp.GradScaler does (loss = {sig3(facts.loss)})",
        "use torch.amp.GradScaler (scaler.scale(loss).backward(); scaler.step(opt); scaler.update()), or bfloat16 "
        "autocast, whose range is float32's")]
