"""The compare-modes verdict: short sentences in plain words, each with the measured numbers."""

from __future__ import annotations

from gradprobe.facts.compare import Attribution, Comparison, ModeRow
from gradprobe.judges.compare.words import (
    RANDOM_CAUSE,
    RANDOM_NOTE,
    attribution_note,
    effect_text,
    int_outputs_differ,
    is_dropout,
    is_norm,
    kernel_choice,
    kernel_difference,
    listed,
    measured,
    mismatch_text,
    nested_text,
    num,
    percent,
    random_in_eval,
    random_runs,
    random_size,
    real_difference,
    rounding_only,
    rounding_text,
    train_row,
    where,
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
    if c.nested_fast_path is not None:
        lines.append(nested_text(c.nested_fast_path))
    lines += _train_eval_lines(c)
    lines += _grad_mode_lines(c)
    lines += _eval_random_lines(c)
    lines += _buffer_lines(c)
    lines += _determinism_lines(c)
    ints = int_outputs_differ(c)
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
            # the CPU times too: load that delays one row's runs (they run back to back) is not the mode
            if _overlapping(grad.times_s, r.times_s) or _overlapping(grad.cpu_times_s, r.cpu_times_s):
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
    size, _, _ = measured(row)
    pair = f"{row.label} vs {c.reference}"
    if not row.differs or (where(row) and not real_difference(row) and not size):
        if random_in_eval(c):
            return [f"Train and eval outputs are identical{where(row)} from the same random state ({pair}, max |diff| "
                    f"{num(size)}): the training flag changes nothing, but the forward samples randomness in both "
                    f"modes (see below)."]
        return [f"Train and eval outputs are identical{where(row)} ({pair}, max |diff| {num(size)}): nothing in this "
                f"forward behaves differently in train mode."]
    if rounding_only(row) and not row.nondeterministic:
        return [_rounding_line(row, pair, c.attribution)]
    text = f"by up to {num(size)}{where(row)}" if size is not None else f"({mismatch_text(row.mismatch)})"
    line = f"Train and eval outputs differ {text} ({pair})"
    if row.nondeterministic:
        return [line + f", but two train runs from the same seed differ too (by {num(row.repeat_max_abs_diff)}), "
                       f"so the difference cannot be pinned on modules."]
    return [line + _attribution_text(c, c.attribution)]


def _rounding_line(row: ModeRow, pair: str, a: Attribution | None) -> str:
    """Train and eval differ by float rounding only: name the kernels that round differently."""
    size, _, _ = measured(row)
    line = f"Train and eval outputs differ by up to {num(size)}{where(row)} ({pair}), {rounding_text(row)}"
    kernels = [e for e in a.modules if e.within_tolerance] if a is not None else []
    if kernels:
        line += ": " + "; ".join(f"{e.name or '(model)'} ({e.type}) {kernel_choice(e)}" for e in kernels[:3])
    return line + ". Nothing in this forward behaves differently in train mode beyond the kernel choice."


def _attribution_text(c: Comparison, a: Attribution | None) -> str:
    """What flipping single modules found, in sentences that follow 'Train and eval outputs differ ...'."""
    if a is None or not a.modules:
        note = f" ({attribution_note(a)})" if a is not None and attribution_note(a) else ""
        return f"; no single module changes its output when only its own flag flips{note}."
    line = (f". Flipping one module's training flag at a time pins it on {len(a.modules)} of "
            f"{len(a.tested)} tested module(s): {listed((effect_text(e) for e in a.modules), 6)}.")
    if a.explained:
        line += " Switching only these to train mode reproduces the train output exactly."
    elif a.explained is False and not a.failures:
        line += " Switching only these to train mode does not reproduce the train output: something else differs."
    real = [e for e in a.modules if not e.within_tolerance]
    if real and all(is_dropout(e) for e in real) and not random_in_eval(c):
        line += " The difference is only dropout: it disappears with model.eval()."
    elif any(is_norm(e) for e in real):
        line += " BatchNorm uses batch statistics in train mode and running statistics in eval mode."
    if a.fast_path_off:
        line += (" The flips ran with PyTorch's transformer fast path off (torch.backends.mha.set_fastpath_enabled"
                 "(False)), so eval and train run the same kernels.")
    if attribution_note(a) and a.explained is not None:
        line += f" Note: {attribution_note(a)}."
    if random_in_eval(c):
        line += f" Note: {RANDOM_NOTE}."
    return line


def _grad_mode_lines(c: Comparison) -> list[str]:
    """Grad modes whose outputs differ by rounding only (kernel choice) or only at padded positions."""
    lines = []
    for d in c.grad_mode_diffs:
        if not d.differs or real_difference(d):
            continue  # identical (nothing to say) or a real difference (a finding says it)
        size, _, _ = measured(d)
        if not size:
            lines.append(f"The {d.row} and {d.base} outputs differ only at padded positions, where the fast path "
                         f"writes zeros; they are identical on the non-padded positions.")
            continue
        kernels = kernel_difference(d)
        lines.append(f"The {d.row} and {d.base} outputs differ by {num(size)}{where(d)}, {rounding_text(d)}: "
                     + (f"the kernels differ ({kernels})." if kernels else "the same ops run, grouped differently."))
    return lines


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


def _owners(c: Comparison, buffers: list[str]) -> str:
    """What the changed buffers are, from the modules that own them (never guessed from a buffer's name):
    BatchNorm running statistics, or the other owners' buffers by class name."""
    owners = {name: (kind, bn) for name, kind, bn in c.buffer_owners}
    known = [owners[b] for b in buffers if b in owners]
    if not known:
        return ""
    others = list(dict.fromkeys(kind for kind, bn in known if not bn))
    if not others:
        return " (BatchNorm running statistics)"
    bn = ["BatchNorm running statistics"] if any(bn for _, bn in known) else []
    return f" ({'; '.join(bn + [f'buffers of {kind}' for kind in others])})"


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
                     f"model.eval() corrupts these{_owners(c, found)}.")
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
