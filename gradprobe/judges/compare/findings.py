"""compare-modes findings: stable codes (a public contract, see ``CODES``), most severe first."""

from __future__ import annotations

from gradprobe.facts.compare import Attribution, Comparison, ModeRow
from gradprobe.facts.run import Finding
from gradprobe.judges.compare.words import (
    RANDOM_CAUSE,
    RANDOM_NOTE,
    attribution_note,
    effect_text,
    int_outputs_differ,
    is_dropout,
    kernel_difference,
    listed,
    measured,
    mismatch_text,
    num,
    percent,
    random_in_eval,
    random_runs,
    random_size,
    real_difference,
    train_row,
    where,
)
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
    "grad-mode-changes-output": "outputs differ between grad modes within train or within eval, beyond float rounding",
    "attribution-incomplete": "gradprobe could not replay every module alone; the attribution is partial",
    "integer-output-differs": "integer/bool outputs differ from the reference combination",
}

_ORDER = {"error": 0, "warning": 1, "info": 2}


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
    ints = int_outputs_differ(c)
    if ints:
        findings.append(Finding(
            "integer-output-differs", "info", ints[0],
            f"integer/bool outputs of {listed(ints)} differ from {c.reference}'s (e.g. predicted classes "
            f"change with the mode)",
        ))
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def _failed(r: ModeRow) -> Finding:
    error = r.error or "unknown error"
    if r.error_cause == "inference-tensor":
        hint = ("inference tensors reached autograd (torch.inference_mode() inside forward, or a tensor made under "
                "it: the error names the model's own): use torch.no_grad() inside forward, and .clone() such "
                "tensors outside inference_mode")
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
                     f"with no_grad, {percent(extra, no_grad.forward_peak_bytes)} more)")
    return [Finding(
        "eval-grad-graph", "info", "eval:grad",
        f"eval + grad builds an autograd graph of {grad.graph_nodes} nodes that an evaluation never uses: it {cost}",
        "run evaluation under torch.no_grad() (or torch.inference_mode() when outputs never join training)",
    )]


def _buffers(c: Comparison) -> list[Finding]:
    rows = [r for r in c.ok_rows("train") if r.grad_mode != "grad" and r.buffers_changed]
    if not rows:
        return []
    found = list(dict.fromkeys(b for r in rows for b in r.buffers_changed))
    modes = " and ".join(r.grad_mode for r in rows)
    return [Finding(
        "train-no-grad-buffers", "warning", found[0],
        f"in train mode the forward changes {len(found)} buffer(s) even under {modes}: {listed(found)}; "
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
        f"two runs from the same seed and starting state give different outputs under {listed(r.label for r in rows)} "
        f"(max |diff| {num(worst)}): randomness the seed does not control, or nondeterministic kernels",
        "seed every random source the forward uses (random, numpy), or torch.use_deterministic_algorithms(True)",
    )]


def _eval_random(c: Comparison) -> list[Finding]:
    if not random_in_eval(c):
        return []
    return [Finding(
        "eval-output-random", "error", "eval:no_grad",
        f"eval outputs change with the random state: {random_runs(c)} ({random_size(c)}); {RANDOM_CAUSE}",
        "pass training=self.training to F.dropout (or use nn.Dropout), and draw noise only when self.training",
    )]


def _train_eval(c: Comparison) -> list[Finding]:
    row = train_row(c)
    if row is None or not real_difference(row) or row.nondeterministic or c.reference is None \
            or not c.reference.startswith("eval"):
        return []
    a = c.attribution
    size, _, _ = measured(row)
    size_text = f"up to {num(size)}{where(row)}" if size is not None else "in structure"
    effects = [e for e in a.modules if not e.within_tolerance] if a is not None else []
    if a is not None and effects:
        only_dropout = all(is_dropout(e) for e in effects)
        why = "only because of dropout (random masks in train mode)" if only_dropout else "because of"
        out = [Finding(
            "train-eval-difference", "info", effects[0].name or "(model)",
            f"{row.label} and {c.reference} outputs differ ({size_text}) {why}: "
            f"{listed((effect_text(e) for e in effects), 6)}"
            + (f"; {RANDOM_NOTE}" if random_in_eval(c) else ""),
            "expected in training; evaluate after model.eval()",
        )]
        if a.explained is False:
            out.append(_incomplete(row, c, a) if a.failures else _unexplained(row, c))
        return out
    return [_incomplete(row, c, a) if a is not None and a.failures else _unexplained(row, c)]


def _unexplained(row: ModeRow, c: Comparison) -> Finding:
    return Finding(
        "train-eval-unexplained", "warning", row.label,
        f"{row.label} and {c.reference} outputs differ, but flipping one module's training flag at a time (every "
        f"replay ran) does not reproduce the train output: likely causes are code that reads another module's "
        f"training flag, or modules whose train-mode effects only show together",
        "look for self.training checks outside the modules' own forward",
    )


def _incomplete(row: ModeRow, c: Comparison, a: Attribution) -> Finding:
    """A replay gradprobe could not do: its own limit, said as such, never a verdict on the model."""
    found = [e.name or "(model)" for e in a.modules if not e.within_tolerance]
    return Finding(
        "attribution-incomplete", "info", row.label,
        f"gradprobe could not attribute the difference between {row.label} and {c.reference} to modules: "
        f"{attribution_note(a)}; this is a limit of replaying single modules, not a finding about the model"
        + (f" (modules found before that: {listed(found)})" if found else ""),
        "the JSON report lists each failed step with the exception's message (training_dependent.failures)",
    )


def _grad_mode_changes(c: Comparison) -> list[Finding]:
    nondet = {r.label for r in c.rows if r.nondeterministic}
    out = []
    for d in c.grad_mode_diffs:
        if not real_difference(d) or d.row in nondet or d.base in nondet:
            continue
        size, _, _ = measured(d)
        text = f"max |diff| {num(size)}{where(d)}" if size is not None else (mismatch_text(d.mismatch) or "integers")
        kernels = kernel_difference(d)
        out.append(Finding(
            "grad-mode-changes-output", "warning", d.row,
            f"{d.row}'s output differs from {d.base}'s ({text}, more than float rounding explains) although only "
            f"the grad mode changed: forward branches on torch.is_grad_enabled()/is_inference_mode_enabled(), "
            f"or a kernel differs" + (f" ({kernels})" if kernels else ""),
            "results should not depend on the grad mode; check such branches in forward",
        ))
    return out
