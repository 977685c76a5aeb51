"""The compare-modes verdict: short sentences in plain words, each with the measured numbers."""

from __future__ import annotations

from gradprobe.facts.compare import Comparison
from gradprobe.judges.compare.words import (
    RANDOM_CAUSE,
    RANDOM_NOTE,
    attribution_note,
    effect_text,
    is_dropout,
    is_norm,
    listed,
    mismatch_text,
    num,
    percent,
    random_in_eval,
    random_runs,
    random_size,
    train_row,
)
from gradprobe.units import duration, human_bytes


def compare_verdict(c: Comparison) -> list[str]:
    """Short sentences in plain words, each with the measured numbers."""
    lines: list[str] = []
    failed = [r.label for r in c.rows if not r.ok]
    if failed:
        lines.append(f"{len(failed)} of {len(c.rows)} combination(s) failed: {', '.join(failed)} (the errors are "
                     f"in the findings); every other row ran.")
    for mode in ("eval", "train"):
        lines += _savings(c, mode)
    lines += _train_eval_lines(c)
    lines += _eval_random_lines(c)
    lines += _buffer_lines(c)
    lines += _determinism_lines(c)
    ints = [r.label for r in c.rows if r.ok and r.int_outputs_equal is False]
    if ints:
        lines.append(f"Integer/bool outputs differ from {c.reference}'s under {listed(ints)}.")
    for r in c.rows:
        if r.backward_error:
            lines.append(f"{r.label}: the backward failed ({r.backward_error}).")
    return lines


def _change(base: int, other: int, unit: str = "lower") -> str:
    diff = base - other
    if diff == 0:
        return "the same peak"
    word = unit if diff > 0 else ("higher" if unit == "lower" else "more")
    return f"a peak {human_bytes(abs(diff))} {word} ({percent(abs(diff), base)})"


def _overlapping(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """True when two timing samples' ranges overlap: a busy machine, not the mode, explains the difference."""
    if len(a) < 2 or len(b) < 2:
        return False
    return min(a) <= max(b) and min(b) <= max(a)


def _savings(c: Comparison, mode: str) -> list[str]:
    """Memory and time of no_grad and inference_mode relative to grad, in bytes and percent."""
    grad = c.row(mode, "grad")
    if grad is None or not grad.ok:
        return []
    others = [r for r in (c.row(mode, "no_grad"), c.row(mode, "inference_mode")) if r is not None and r.ok]
    if not others:
        return []
    base = [f"peak {human_bytes(grad.forward_peak_bytes)}",
            f"{human_bytes(grad.saved_for_backward_bytes)} saved for backward"]
    if grad.time_s is not None:
        base.append(duration(grad.time_s))
    parts = []
    for r in others:
        text = r.grad_mode
        if grad.forward_peak_bytes is not None and r.forward_peak_bytes is not None:
            text += f" has {_change(grad.forward_peak_bytes, r.forward_peak_bytes)}"
        if grad.time_s and r.time_s is not None:
            dt = grad.time_s - r.time_s
            if _overlapping(grad.times_s, r.times_s):
                text += f" and runs within timing noise of it ({duration(r.time_s)})"
            else:
                text += (f" and runs {percent(abs(dt), grad.time_s)} {'faster' if dt >= 0 else 'slower'} "
                         f"({duration(r.time_s)})")
        parts.append(text)
    line = f"{mode.capitalize()} mode against grad ({', '.join(base)}): {'; '.join(parts)}."
    kept = [r for r in others if r.saved_for_backward_bytes]
    if grad.saved_for_backward_bytes and not kept:
        line += f" Without grad nothing is kept for backward (grad keeps {human_bytes(grad.saved_for_backward_bytes)})."
    return [line]


def _train_eval_lines(c: Comparison) -> list[str]:
    row = train_row(c)
    if row is None or c.reference is None or not c.reference.startswith("eval"):
        return []
    if not row.differs:
        if random_in_eval(c):
            return [f"Train and eval outputs are identical from the same random state ({row.label} vs {c.reference}, "
                    f"max |diff| {num(row.max_abs_diff)}): the training flag changes nothing, but the forward samples "
                    f"randomness in both modes (see below)."]
        return [f"Train and eval outputs are identical ({row.label} vs {c.reference}, max |diff| "
                f"{num(row.max_abs_diff)}): nothing in this forward behaves differently in train mode."]
    size = f"by up to {num(row.max_abs_diff)}" if row.max_abs_diff is not None else f"({mismatch_text(row.mismatch)})"
    line = f"Train and eval outputs differ {size} ({row.label} vs {c.reference})"
    if row.nondeterministic:
        return [line + f", but two train runs from the same seed differ too (by {num(row.repeat_max_abs_diff)}), "
                       f"so the difference cannot be pinned on modules."]
    a = c.attribution
    if a is None or not a.modules:
        note = f" ({attribution_note(a)})" if a is not None and attribution_note(a) else ""
        return [line + f"; no single module changes its output when only its own flag flips{note}."]
    line += (f". Flipping one module's training flag at a time pins it on {len(a.modules)} of "
             f"{len(a.tested)} tested module(s): {listed((effect_text(e) for e in a.modules), 6)}.")
    if a.explained:
        line += " Switching only these to train mode reproduces the train output exactly."
    elif a.explained is False:
        line += " Switching only these to train mode does not reproduce the train output: something else differs."
    if all(is_dropout(e) for e in a.modules) and not random_in_eval(c):
        line += " The difference is only dropout: it disappears with model.eval()."
    elif any(is_norm(e) for e in a.modules):
        line += " BatchNorm uses batch statistics in train mode and running statistics in eval mode."
    if attribution_note(a) and a.explained is not None:
        line += f" Note: {attribution_note(a)}."
    if random_in_eval(c):
        line += f" Note: {RANDOM_NOTE}."
    return [line]


def _eval_random_lines(c: Comparison) -> list[str]:
    if c.eval_random_max_abs_diff is None and c.eval_random_int_equal is None and c.eval_random_mismatch is None:
        return []  # not checked (meta device, eval:no_grad failed)
    if not c.eval_random:
        return ["Eval outputs do not depend on the random state: an eval:no_grad forward from another seed gives "
                "identical outputs."]
    line = f"Eval outputs change with the random state: {random_runs(c)} ({random_size(c)})"
    if not random_in_eval(c):
        return [line + ", but two runs from the same seed differ too, so it cannot be pinned on the RNG."]
    return [line + f"; {RANDOM_CAUSE}. model.eval() does not make this forward deterministic."]


def _buffer_lines(c: Comparison) -> list[str]:
    ran = c.ok_rows()
    if not ran:
        return []
    val = [r for r in c.ok_rows("train") if r.grad_mode != "grad" and r.buffers_changed]
    lines = []
    if val:
        found = list(dict.fromkeys(b for r in val for b in r.buffers_changed))
        lines.append(f"In train mode the forward changes {len(found)} buffer(s) even under "
                     f"{' and '.join(r.grad_mode for r in val)}: {listed(found)}. A validation loop without "
                     f"model.eval() corrupts these (BatchNorm running statistics).")
    evals = [r for r in c.ok_rows("eval") if r.buffers_changed]
    if evals:
        found = list(dict.fromkeys(b for r in evals for b in r.buffers_changed))
        lines.append(f"Even in eval mode the forward changes {len(found)} buffer(s): {listed(found)}.")
    if not any(r.buffers_changed for r in ran):
        lines.append("No combination changes a buffer.")
    elif not val and not evals:
        found = list(dict.fromkeys(b for r in ran for b in r.buffers_changed))
        lines.append(f"Only train + grad changes buffers ({listed(found)}); with model.eval() they stay put.")
    return lines


def _determinism_lines(c: Comparison) -> list[str]:
    checked = [r for r in c.ok_rows() if r.repeat_max_abs_diff is not None or r.repeat_int_equal is not None]
    if not checked:
        return []
    bad = [r for r in checked if r.nondeterministic]
    if not bad:
        return ["Two runs from the same seed and starting state give identical outputs in every combination."]
    return [f"Two runs from the same seed and starting state differ under "
            f"{listed(f'{r.label} (max |diff| {num(r.repeat_max_abs_diff)})' for r in bad)}: the forward is "
            f"nondeterministic."]
