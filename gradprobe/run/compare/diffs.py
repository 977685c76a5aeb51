"""Rows against the reference and grad modes against each other: the diffs, their tolerance, their kernels."""

from __future__ import annotations

from dataclasses import replace

from gradprobe.facts.compare import REFERENCE, GradModeDiff, ModeRow, label
from gradprobe.run.compare.fastpath import unpadded
from gradprobe.run.compare.kernels import only_in, op_names
from gradprobe.run.compare.outputs import OutputDiff, Snapshot, compare_outputs
from gradprobe.run.compare.session import Session

Outputs = dict[tuple[str, str], Snapshot]  # each row's output (of its first timed run)


def against_reference(s: Session, row: ModeRow, out: Snapshot | None, ref_key: tuple[str, str] | None,
                      ref: Snapshot | None) -> ModeRow:
    """The row with its difference from the reference filled in."""
    if out is None or ref is None or ref_key is None:
        return row
    diff = _diff(s, out, ref)
    kept = _unpadded_diff(s, row.label, label(*ref_key), out, ref)
    return replace(row, max_abs_diff=diff.max_abs_diff, int_outputs_equal=diff.ints_equal, mismatch=diff.mismatch,
                   within_tolerance=diff.within_tolerance, tolerance=diff.tolerance,
                   unpadded_max_abs_diff=kept.max_abs_diff, unpadded_within_tolerance=kept.within_tolerance)


def _diff(s: Session, a: Snapshot, b: Snapshot) -> OutputDiff:
    """:func:`compare_outputs`, once per pair of snapshots: eval+grad and eval+inference_mode are compared with
    the reference as rows and again as grad modes, the same two snapshots in the same order (issue 16: on a
    2x64x50,257 logits output each comparison reads ~50 MB)."""
    key = (id(a), id(b))  # the snapshots live in the comparison's outputs until it ends
    known = s.diffs.get(key)
    if known is None:
        known = s.diffs[key] = compare_outputs(a, b)
    return known


def _unpadded_diff(s: Session, a_label: str, b_label: str, a: Snapshot, b: Snapshot) -> OutputDiff:
    """The difference on non-padded positions when exactly one of the two runs took the nested-tensor path."""
    if not s.nested.straddles(a_label, b_label):
        return OutputDiff()
    a_kept, b_kept = unpadded(a, s.nested), unpadded(b, s.nested)
    if a_kept is None or b_kept is None:
        return OutputDiff()
    return compare_outputs(a_kept, b_kept)


def grad_mode_diffs(s: Session, rows: list[ModeRow], outs: Outputs) -> tuple[GradModeDiff, ...]:
    """Within train and within eval, every grad mode's output against no_grad's (or the first that ran).

    Where outputs differ, one more plain forward per row records which ATen ops each ran, so a kernel
    choice (a fused attention under no_grad) is named rather than guessed.
    """
    found = []
    ops: dict[tuple[str, str], frozenset[str]] = {}
    for mode in ("train", "eval"):
        ran = [r for r in rows if r.mode == mode and (r.mode, r.grad_mode) in outs]
        ran.sort(key=lambda r: r.grad_mode != REFERENCE[1])
        for r in ran[1:]:
            base = ran[0]
            out, base_out = outs[(r.mode, r.grad_mode)], outs[(base.mode, base.grad_mode)]
            diff = _diff(s, out, base_out)
            kept = _unpadded_diff(s, r.label, base.label, out, base_out)
            only_row: tuple[str, ...] = ()
            only_base: tuple[str, ...] = ()
            if diff.differs and diff.mismatch is None and not (r.nondeterministic or base.nondeterministic):
                only_row, only_base = only_in(_ops(s, ops, r), _ops(s, ops, base))
            found.append(GradModeDiff(
                r.label, base.label, diff.max_abs_diff, diff.ints_equal, diff.mismatch, diff.within_tolerance,
                diff.tolerance, kept.max_abs_diff, kept.within_tolerance, only_row, only_base))
    return tuple(found)


def _ops(s: Session, cache: dict[tuple[str, str], frozenset[str]], row: ModeRow) -> frozenset[str]:
    key = (row.mode, row.grad_mode)
    if key not in cache:
        try:
            cache[key] = op_names(lambda: s.forward(*key))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # the row's own runs worked: a failure here only loses the kernel names
            cache[key] = frozenset()
    return cache[key]
