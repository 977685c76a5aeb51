"""Judges for ``compare-modes``: findings and the plain-words verdict, pure functions of a :class:`Comparison`.

No torch here: every sentence is built from the measured numbers in the facts, so each one can be
tested with hand-made rows.  Finding codes are a public contract (see ``CODES``).
"""

from __future__ import annotations

from collections.abc import Iterable

from gradprobe.facts.compare import REFERENCE, Comparison, ModeRow, ModuleEffect
from gradprobe.facts.run import Finding
from gradprobe.units import human_bytes

CODES = {
    "mode-failed": "the forward raised under one train/eval x grad-mode combination",
    "inference-output": "outputs are inference tensors although the forward ran with grad or no_grad",
    "eval-grad-graph": "eval + grad builds an autograd graph an evaluation never uses (with its bytes)",
    "train-no-grad-buffers": "a validation-style run (grad off) in train mode changes buffers",
    "nondeterministic-output": "two runs from the same seed and starting state give different outputs",
    "eval-output-random": "eval outputs change with the random state: something samples randomness in eval mode",
    "train-eval-difference": "train and eval outputs differ, attributed to the modules that cause it",
    "train-eval-unexplained": "flipping single modules' training flags does not reproduce the train output",
    "grad-mode-changes-output": "outputs differ between grad modes within train or within eval",
    "integer-output-differs": "integer/bool outputs differ from the reference combination",
}

_ORDER = {"error": 0, "warning": 1, "info": 2}


def _is_dropout(e: ModuleEffect) -> bool:
    return "Dropout" in e.type


def _is_norm(e: ModuleEffect) -> bool:
    return "BatchNorm" in e.type or "InstanceNorm" in e.type


def _names(items: Iterable[str], limit: int = 4) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _percent(part: float, whole: float) -> str:
    if not whole:
        return "-"
    p = 100 * part / whole
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"


def _effect_text(e: ModuleEffect) -> str:
    what = f"max |diff| {_num(e.max_abs_diff)} on its own output" if e.max_abs_diff is not None else "output changes"
    return f"{e.name or '(model)'} ({e.type}, {what})"


def _train_row(c: Comparison) -> ModeRow | None:
    """The train row compared with the eval reference: same grad mode as the reference if it ran."""
    train = [r for r in c.ok_rows("train")
             if r.max_abs_diff is not None or r.diff_note is not None or r.int_outputs_equal is not None]
    ref_grad = c.reference.split(":")[1] if c.reference else REFERENCE[1]
    train.sort(key=lambda r: r.grad_mode != ref_grad)
    return train[0] if train else None


# ------------------------------------------------------------------------------------------- findings


def judge_compare(c: Comparison) -> list[Finding]:
    """Every diagnosis the comparison supports, most severe first."""
    findings: list[Finding] = []
    for r in c.rows:
        if not r.ok:
            findings.append(_failed(r))
        elif r.is_inference and r.grad_mode != "inference_mode":
            findings.append(Finding(
                "inference-output", "error", r.label,
                f"under {r.label} the outputs are inference tensors: torch.inference_mode() inside forward "
                f"(or a cached inference tensor) leaks out, and no backward can use them",
                "use torch.no_grad() inside forward, or .clone() the tensor outside inference_mode",
            ))
    findings += _eval_grad(c)
    findings += _buffers(c)
    findings += _nondeterminism(c)
    findings += _eval_random(c)
    findings += _train_eval(c)
    findings += _grad_mode_changes(c)
    ints = [r.label for r in c.rows if r.ok and r.int_outputs_equal is False]
    if ints:
        findings.append(Finding(
            "integer-output-differs", "info", ints[0],
            f"integer/bool outputs of {_names(ints)} differ from {c.reference}'s (e.g. predicted classes "
            f"change with the mode)",
        ))
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def _failed(r: ModeRow) -> Finding:
    error = r.error or "unknown error"
    if "nference tensor" in error:
        hint = ("the model uses torch.inference_mode() (or inference tensors) inside forward; torch.no_grad() "
                "there also works when grad is on")
    else:
        hint = f"run 'gradprobe inspect TARGET --mode {r.mode} --grad {r.grad_mode} --debug' for the traceback"
    return Finding("mode-failed", "error", r.label, f"the forward failed under {r.label}: {error}", hint)


def _eval_grad(c: Comparison) -> list[Finding]:
    grad, no_grad = c.row("eval", "grad"), c.row("eval", "no_grad")
    if grad is None or not grad.ok or not (grad.graph_nodes or grad.saved_for_backward_bytes):
        return []
    cost = f"keeps {human_bytes(grad.saved_for_backward_bytes)} saved for backward"
    if no_grad is not None and no_grad.ok and grad.forward_peak_bytes is not None \
            and no_grad.forward_peak_bytes is not None:
        extra = grad.forward_peak_bytes - no_grad.forward_peak_bytes
        if extra > 0:
            cost += (f" and raises the forward peak by {human_bytes(extra)} "
                     f"({human_bytes(grad.forward_peak_bytes)} vs {human_bytes(no_grad.forward_peak_bytes)} "
                     f"with no_grad, {_percent(extra, no_grad.forward_peak_bytes)} more)")
    return [Finding(
        "eval-grad-graph", "info", "eval:grad",
        f"eval + grad builds an autograd graph of {grad.graph_nodes} nodes that an evaluation never uses: it {cost}",
        "run evaluation under torch.no_grad() (or torch.inference_mode() when outputs never join training)",
    )]


def _buffers(c: Comparison) -> list[Finding]:
    rows = [r for r in c.ok_rows("train") if r.grad_mode != "grad" and r.buffers_changed]
    if not rows:
        return []
    names = list(dict.fromkeys(b for r in rows for b in r.buffers_changed))
    modes = " and ".join(r.grad_mode for r in rows)
    return [Finding(
        "train-no-grad-buffers", "warning", names[0],
        f"in train mode the forward changes {len(names)} buffer(s) even under {modes}: {_names(names)}; "
        f"a validation loop without model.eval() corrupts these statistics",
        "call model.eval() before evaluating and model.train() after it",
    )]


def _nondeterminism(c: Comparison) -> list[Finding]:
    rows = [r for r in c.ok_rows() if r.nondeterministic]
    if not rows:
        return []
    worst = max((r.repeat_max_abs_diff or 0.0) for r in rows)
    return [Finding(
        "nondeterministic-output", "warning", rows[0].label,
        f"two runs from the same seed and starting state give different outputs under {_names(r.label for r in rows)} "
        f"(max |diff| {_num(worst)}): randomness the seed does not control, or nondeterministic kernels",
        "seed every random source the forward uses (random, numpy), or torch.use_deterministic_algorithms(True)",
    )]


def _random_in_eval(c: Comparison) -> bool:
    """Eval outputs follow the RNG state while two runs from the same state agree: torch's RNG is sampled in eval."""
    ref = c.row("eval", "no_grad")
    return c.eval_random and not (ref is not None and ref.nondeterministic)


def _random_runs(c: Comparison) -> str:
    """Which two eval:no_grad forwards were compared: the seeds when known."""
    if c.seed is None:
        return "the eval:no_grad forward from another random state differs from the one from the starting state"
    return f"the eval:no_grad forward from seed {c.seed + 1} differs from the one from seed {c.seed}"


def _random_size(c: Comparison) -> str:
    if c.eval_random_max_abs_diff:
        return f"max |diff| {_num(c.eval_random_max_abs_diff)}"
    return c.eval_random_note or "integer/bool outputs differ"


_RANDOM_CAUSE = ("something samples randomness although the model is in eval mode: F.dropout(..., training=True) "
                 "instead of training=self.training, or torch.rand/randn in forward")


def _eval_random(c: Comparison) -> list[Finding]:
    if not _random_in_eval(c):
        return []
    return [Finding(
        "eval-output-random", "error", "eval:no_grad",
        f"eval outputs change with the random state: {_random_runs(c)} ({_random_size(c)}); {_RANDOM_CAUSE}",
        "pass training=self.training to F.dropout (or use nn.Dropout), and draw noise only when self.training",
    )]


_RANDOM_NOTE = "part of it can be randomness that model.eval() does not turn off (see eval-output-random)"


def _train_eval(c: Comparison) -> list[Finding]:
    row = _train_row(c)
    if row is None or not row.differs or row.nondeterministic or c.reference is None \
            or not c.reference.startswith("eval"):
        return []
    a = c.attribution
    size = f"up to {_num(row.max_abs_diff)}" if row.max_abs_diff is not None else "in structure"
    if a is not None and a.modules:
        only_dropout = all(_is_dropout(e) for e in a.modules)
        why = "only because of dropout (random masks in train mode)" if only_dropout else "because of"
        out = [Finding(
            "train-eval-difference", "info", a.modules[0].name or "(model)",
            f"{row.label} and {c.reference} outputs differ ({size}) {why}: "
            f"{_names((_effect_text(e) for e in a.modules), 6)}"
            + (f"; {_RANDOM_NOTE}" if _random_in_eval(c) else ""),
            "expected in training; evaluate after model.eval()",
        )]
        if a.explained is False:
            out.append(_unexplained(row, c, a.note))
        return out
    return [_unexplained(row, c, a.note if a else None)]


def _unexplained(row: ModeRow, c: Comparison, note: str | None) -> Finding:
    return Finding(
        "train-eval-unexplained", "warning", row.label,
        f"{row.label} and {c.reference} outputs differ, but flipping one module's training flag at a time does "
        f"not reproduce the train output" + (f" ({note})" if note else "")
        + ": modules interact, or code reads another module's training flag",
        "look for self.training checks outside the modules' own forward",
    )


def _grad_mode_changes(c: Comparison) -> list[Finding]:
    nondet = {r.label for r in c.rows if r.nondeterministic}
    out = []
    for d in c.grad_mode_diffs:
        if d.differs and d.row not in nondet and d.base not in nondet:
            size = f"max |diff| {_num(d.max_abs_diff)}" if d.max_abs_diff is not None else (d.note or "integers")
            out.append(Finding(
                "grad-mode-changes-output", "warning", d.row,
                f"{d.row}'s output differs from {d.base}'s ({size}) although only the grad mode changed: "
                f"forward branches on torch.is_grad_enabled()/is_inference_mode_enabled(), or the kernels differ",
                "results should not depend on the grad mode; check such branches in forward",
            ))
    return out


# -------------------------------------------------------------------------------------------- verdict


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
        lines.append(f"Integer/bool outputs differ from {c.reference}'s under {_names(ints)}.")
    for r in c.rows:
        if r.backward_error:
            lines.append(f"{r.label}: the backward failed ({r.backward_error}).")
    return lines


def duration(t: float | None) -> str:
    """Three significant digits: timings of small models differ in the tenths of a millisecond."""
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _change(base: int, other: int, unit: str = "lower") -> str:
    diff = base - other
    if diff == 0:
        return "the same peak"
    word = unit if diff > 0 else ("higher" if unit == "lower" else "more")
    return f"a peak {human_bytes(abs(diff))} {word} ({_percent(abs(diff), base)})"


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
                text += (f" and runs {_percent(abs(dt), grad.time_s)} {'faster' if dt >= 0 else 'slower'} "
                         f"({duration(r.time_s)})")
        parts.append(text)
    line = f"{mode.capitalize()} mode against grad ({', '.join(base)}): {'; '.join(parts)}."
    kept = [r for r in others if r.saved_for_backward_bytes]
    if grad.saved_for_backward_bytes and not kept:
        line += f" Without grad nothing is kept for backward (grad keeps {human_bytes(grad.saved_for_backward_bytes)})."
    return [line]


def _train_eval_lines(c: Comparison) -> list[str]:
    row = _train_row(c)
    if row is None or c.reference is None or not c.reference.startswith("eval"):
        return []
    if not row.differs:
        if _random_in_eval(c):
            return [f"Train and eval outputs are identical from the same random state ({row.label} vs {c.reference}, "
                    f"max |diff| {_num(row.max_abs_diff)}): the training flag changes nothing, but the forward samples "
                    f"randomness in both modes (see below)."]
        return [f"Train and eval outputs are identical ({row.label} vs {c.reference}, max |diff| "
                f"{_num(row.max_abs_diff)}): nothing in this forward behaves differently in train mode."]
    size = f"by up to {_num(row.max_abs_diff)}" if row.max_abs_diff is not None else f"({row.diff_note})"
    line = f"Train and eval outputs differ {size} ({row.label} vs {c.reference})"
    if row.nondeterministic:
        return [line + f", but two train runs from the same seed differ too (by {_num(row.repeat_max_abs_diff)}), "
                       f"so the difference cannot be pinned on modules."]
    a = c.attribution
    if a is None or not a.modules:
        note = f" ({a.note})" if a is not None and a.note else ""
        return [line + f"; no single module changes its output when only its own flag flips{note}."]
    line += (f". Flipping one module's training flag at a time pins it on {len(a.modules)} of "
             f"{len(a.tested)} tested module(s): {_names((_effect_text(e) for e in a.modules), 6)}.")
    if a.explained:
        line += " Switching only these to train mode reproduces the train output exactly."
    elif a.explained is False:
        line += " Switching only these to train mode does not reproduce the train output: something else differs."
    if all(_is_dropout(e) for e in a.modules) and not _random_in_eval(c):
        line += " The difference is only dropout: it disappears with model.eval()."
    elif any(_is_norm(e) for e in a.modules):
        line += " BatchNorm uses batch statistics in train mode and running statistics in eval mode."
    if a.note and a.explained is not None:
        line += f" Note: {a.note}."
    if _random_in_eval(c):
        line += f" Note: {_RANDOM_NOTE}."
    return [line]


def _eval_random_lines(c: Comparison) -> list[str]:
    if c.eval_random_max_abs_diff is None and c.eval_random_int_equal is None and c.eval_random_note is None:
        return []  # not checked (meta device, eval:no_grad failed)
    if not c.eval_random:
        return ["Eval outputs do not depend on the random state: an eval:no_grad forward from another seed gives "
                "identical outputs."]
    line = f"Eval outputs change with the random state: {_random_runs(c)} ({_random_size(c)})"
    if not _random_in_eval(c):
        return [line + ", but two runs from the same seed differ too, so it cannot be pinned on the RNG."]
    return [line + f"; {_RANDOM_CAUSE}. model.eval() does not make this forward deterministic."]


def _buffer_lines(c: Comparison) -> list[str]:
    ran = c.ok_rows()
    if not ran:
        return []
    val = [r for r in c.ok_rows("train") if r.grad_mode != "grad" and r.buffers_changed]
    lines = []
    if val:
        names = list(dict.fromkeys(b for r in val for b in r.buffers_changed))
        lines.append(f"In train mode the forward changes {len(names)} buffer(s) even under "
                     f"{' and '.join(r.grad_mode for r in val)}: {_names(names)}. A validation loop without "
                     f"model.eval() corrupts these (BatchNorm running statistics).")
    evals = [r for r in c.ok_rows("eval") if r.buffers_changed]
    if evals:
        names = list(dict.fromkeys(b for r in evals for b in r.buffers_changed))
        lines.append(f"Even in eval mode the forward changes {len(names)} buffer(s): {_names(names)}.")
    if not any(r.buffers_changed for r in ran):
        lines.append("No combination changes a buffer.")
    elif not val and not evals:
        names = list(dict.fromkeys(b for r in ran for b in r.buffers_changed))
        lines.append(f"Only train + grad changes buffers ({_names(names)}); with model.eval() they stay put.")
    return lines


def _determinism_lines(c: Comparison) -> list[str]:
    checked = [r for r in c.ok_rows() if r.repeat_max_abs_diff is not None or r.repeat_int_equal is not None]
    if not checked:
        return []
    bad = [r for r in checked if r.nondeterministic]
    if not bad:
        return ["Two runs from the same seed and starting state give identical outputs in every combination."]
    return [f"Two runs from the same seed and starting state differ under "
            f"{_names(f'{r.label} (max |diff| {_num(r.repeat_max_abs_diff)})' for r in bad)}: the forward is "
            f"nondeterministic."]


__all__ = ["CODES", "compare_verdict", "judge_compare"]
