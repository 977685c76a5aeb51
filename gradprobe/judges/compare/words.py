"""Facts into words for compare-modes: names, numbers, and the sentences findings and verdict share.

Torch-free; every text is built from measured values in :mod:`gradprobe.facts.compare`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gradprobe.facts.compare import (
    REFERENCE,
    Attribution,
    Comparison,
    GradModeDiff,
    Mismatch,
    ModeRow,
    ModuleEffect,
    NestedFastPath,
    ReplayFailure,
)
from gradprobe.units import shape_text, shorten

Diff = ModeRow | GradModeDiff  # both carry max_abs_diff, tolerance and the non-padded figures


def is_dropout(e: ModuleEffect) -> bool:
    return "Dropout" in e.type


def is_norm(e: ModuleEffect) -> bool:
    return "BatchNorm" in e.type or "InstanceNorm" in e.type


def listed(items: Iterable[str], limit: int = 4) -> str:
    return shorten(items, limit)


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def percent(part: float, whole: float) -> str:
    if not whole:
        return "-"
    p = 100 * part / whole
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"


def effect_text(e: ModuleEffect) -> str:
    what = f"max |diff| {num(e.max_abs_diff)} on its own output" if e.max_abs_diff is not None else "output changes"
    if e.within_tolerance:
        what += ", within float rounding: " + kernel_choice(e)
    return f"{e.name or '(model)'} ({e.type}, {what})"


def ops_text(ops: Iterable[str], limit: int = 4) -> str:
    return listed((f"aten.{op}" for op in ops), limit)


def kernel_choice(e: ModuleEffect) -> str:
    """How a module's flag changes the kernel it runs, from the ops each flag's replay used."""
    if e.ops_only_eval and e.ops_only_train:
        return f"runs {ops_text(e.ops_only_eval)} in eval and {ops_text(e.ops_only_train)} in train"
    if e.ops_only_eval or e.ops_only_train:
        return f"runs {ops_text(e.ops_only_eval or e.ops_only_train)} only in {'eval' if e.ops_only_eval else 'train'}"
    return "runs the same ops, grouped differently"


def kernel_difference(d: GradModeDiff) -> str | None:
    """``only eval:grad ran aten.bmm; only eval:no_grad ran aten._scaled_dot_product...``, or None."""
    parts = [f"only {name} ran {ops_text(ops)}" for name, ops in ((d.row, d.ops_only_row), (d.base, d.ops_only_base))
             if ops]
    return "; ".join(parts) or None


# ------------------------------------------------------------------------ sizes of differences


def measured(d: Diff) -> tuple[float | None, bool | None, bool]:
    """``(max |diff|, within tolerance, on non-padded positions only)``: the figure a verdict rests on.

    When one side took the nested-tensor fast path and the other did not, padded positions differ by
    design (zeros against computed values); the comparison that means something is the rest.
    """
    if d.unpadded_max_abs_diff is not None:
        return d.unpadded_max_abs_diff, d.unpadded_within_tolerance, True
    return d.max_abs_diff, d.within_tolerance, False


def real_difference(d: Diff) -> bool:
    """More than float rounding explains: a mismatch, integer outputs that differ, or a diff past tolerance."""
    size, within, _ = measured(d)
    return d.mismatch is not None or d.int_outputs_equal is False or (bool(size) and within is not True)


def rounding_only(d: Diff) -> bool:
    """Floats differ, but by no more than rounding explains, and nothing else differs."""
    size, within, _ = measured(d)
    return bool(size) and within is True and d.mismatch is None and d.int_outputs_equal is not False


def where(d: Diff) -> str:
    return " on the non-padded positions" if measured(d)[2] else ""


def rounding_text(d: Diff) -> str:
    tol = f" (tolerance {num(d.tolerance)})" if d.tolerance is not None else ""
    return f"within float rounding for these outputs{tol}"


def nested_text(n: NestedFastPath) -> str:
    """The nested-tensor fast path in one sentence."""
    encoders = listed(f"'{e}'" for e in n.encoders)
    padded = (f" at the {n.padded_positions} padded of {n.positions} (batch, position) pairs"
              if n.padded_positions is not None else " at padded positions")
    tail = ("differences between rows on either side of it are given on the non-padded positions" if n.separable
            else "the outputs mix positions, so differences between rows on either side of it include them")
    return (f"nn.TransformerEncoder {encoders} took PyTorch's nested-tensor fast path under {listed(n.rows)} "
            f"(a padding mask, eval mode, grad off), which writes zeros{padded} where the other rows compute "
            f"values: {tail}.")


def mismatch_text(m: Mismatch | None) -> str | None:
    """Why two runs' outputs could not be compared, in words (the JSON ``diff_note``)."""
    if m is None:
        return None
    if m.kind == "structure":
        return f"the outputs differ in structure ({m.counts[0]} vs {m.counts[1]} tensors)"
    if m.kind == "shape":
        return (f"'{m.path}' is {shape_text(m.shapes[0])} {m.dtypes[0]} in one run and "
                f"{shape_text(m.shapes[1])} {m.dtypes[1]} in the other")
    return "values are unknown on the meta device"


def attribution_note(a: Attribution) -> str | None:
    """Why the attribution is incomplete or skipped its exact check, in words (the JSON ``note``)."""
    if a.skipped == "same-flags":
        return "model.train() and model.eval() set the same training flags on every module"
    if a.failures:
        steps = [_failure_text(f) for f in a.failures]
        return f"gradprobe could not do {len(steps)} step(s) of its replay: {listed(steps, 3)}"
    if a.skipped == "nondeterministic":
        return "two train runs from the same seed differ, so the exact check was skipped"
    return None


def _failure_text(f: ReplayFailure) -> str:
    if f.step == "replay":
        return f"replaying '{f.module}' alone raised {f.exception}"
    if f.step == "capture":
        return f"recording the modules' inputs raised {f.exception}"
    return f"the check run raised {f.exception}"


def train_row(c: Comparison) -> ModeRow | None:
    """The train row compared with the eval reference: same grad mode as the reference if it ran."""
    train = [r for r in c.ok_rows("train")
             if r.max_abs_diff is not None or r.mismatch is not None or r.int_outputs_equal is not None]
    ref_grad = c.reference.split(":")[1] if c.reference else REFERENCE[1]
    train.sort(key=lambda r: r.grad_mode != ref_grad)
    return train[0] if train else None


def random_in_eval(c: Comparison) -> bool:
    """Eval outputs follow the RNG state while two runs from the same state agree: torch's RNG is sampled in eval."""
    ref = c.row("eval", "no_grad")
    return c.eval_random and not (ref is not None and ref.nondeterministic)


def int_outputs_differ(c: Comparison) -> list[str]:
    """The combinations whose integer/bool outputs differ from the reference's."""
    return [r.label for r in c.rows if r.ok and r.int_outputs_equal is False]


def random_runs(c: Comparison) -> str:
    """Which two eval:no_grad forwards were compared: the seeds when known."""
    if c.seed is None:
        return "the eval:no_grad forward from another random state differs from the one from the starting state"
    return f"the eval:no_grad forward from seed {c.seed + 1} differs from the one from seed {c.seed}"


def random_size(c: Comparison) -> str:
    if c.eval_random_max_abs_diff:
        return f"max |diff| {num(c.eval_random_max_abs_diff)}"
    return mismatch_text(c.eval_random_mismatch) or "integer/bool outputs differ"


RANDOM_CAUSE = ("something samples randomness although the model is in eval mode: F.dropout(..., training=True) "
                 "instead of training=self.training, or torch.rand/randn in forward")


RANDOM_NOTE = "part of it can be randomness that model.eval() does not turn off (see eval-output-random)"
