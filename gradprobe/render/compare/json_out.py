"""``compare-modes --format json``: the ``gradprobe.run.compare/1`` document."""

from __future__ import annotations

import math
from typing import Any

from gradprobe.facts.compare import COMPARE_SCHEMA, Attribution, CompareReport, GradModeDiff, ModeRow, NestedFastPath
from gradprobe.judges.compare import attribution_note, mismatch_text
from gradprobe.render.common import finding_json


def _num(x: float | None) -> float | str | None:
    """JSON has no Inf/NaN (a NaN on one side only gives an infinite difference): write them as strings."""
    return x if x is None or math.isfinite(x) else str(x)


def row_json(r: ModeRow) -> dict[str, Any]:
    """One combination; the first fourteen fields are the contract of issue 3, the rest are additions."""
    return {
        "mode": r.mode,
        "grad_mode": r.grad_mode,
        "ok": r.ok,
        "error": r.error,
        "output_requires_grad": r.output_requires_grad,
        "output_grad_fn": r.output_grad_fn,
        "is_inference": r.is_inference,
        "graph_nodes": r.graph_nodes,
        "saved_for_backward_bytes": r.saved_for_backward_bytes,
        "forward_peak_bytes": r.forward_peak_bytes,
        "time_s": r.time_s,
        "max_abs_diff": _num(r.max_abs_diff),
        "buffers_changed": list(r.buffers_changed),
        "backward_possible": r.backward_possible,
        "backward_time_s": r.backward_time_s,
        "backward_peak_bytes": r.backward_peak_bytes,
        "backward_error": r.backward_error,
        "times_s": list(r.times_s),
        "cpu_times_s": list(r.cpu_times_s),
        "int_outputs_equal": r.int_outputs_equal,
        "diff_note": mismatch_text(r.mismatch),
        "repeat_max_abs_diff": _num(r.repeat_max_abs_diff),
        "repeat_int_equal": r.repeat_int_equal,
        "error_phase": r.error_phase,
        "within_tolerance": r.within_tolerance,
        "tolerance": _num(r.tolerance),
        "unpadded_max_abs_diff": _num(r.unpadded_max_abs_diff),
        "unpadded_within_tolerance": r.unpadded_within_tolerance,
    }


def _attribution_json(a: Attribution) -> dict[str, Any]:
    return {
        "modules": [{"name": e.name, "type": e.type, "max_abs_diff": _num(e.max_abs_diff),
                     "int_outputs_equal": e.int_outputs_equal, "within_tolerance": e.within_tolerance,
                     "ops_only_eval": list(e.ops_only_eval), "ops_only_train": list(e.ops_only_train)}
                    for e in a.modules],
        "tested": list(a.tested),
        "explained": a.explained,
        "note": attribution_note(a),
        "failures": [{"step": f.step, "module": f.module, "exception": f.exception, "detail": f.detail}
                     for f in a.failures],
        "fast_path_off": a.fast_path_off,
    }


def _grad_mode_json(d: GradModeDiff) -> dict[str, Any]:
    return {"row": d.row, "base": d.base, "max_abs_diff": _num(d.max_abs_diff),
            "int_outputs_equal": d.int_outputs_equal, "note": mismatch_text(d.mismatch),
            "within_tolerance": d.within_tolerance, "tolerance": _num(d.tolerance),
            "unpadded_max_abs_diff": _num(d.unpadded_max_abs_diff),
            "unpadded_within_tolerance": d.unpadded_within_tolerance,
            "ops_only_row": list(d.ops_only_row), "ops_only_base": list(d.ops_only_base)}


def _nested_json(n: NestedFastPath | None) -> dict[str, Any] | None:
    if n is None:
        return None
    return {"encoders": list(n.encoders), "rows": list(n.rows), "padded_positions": n.padded_positions,
            "positions": n.positions, "separable": n.separable}


def compare_json(report: CompareReport) -> dict[str, Any]:
    """The ``gradprobe.run.compare/1`` document."""
    c = report.comparison
    return {
        "schema": COMPARE_SCHEMA,
        "target": c.target,
        "torch": c.torch_version,
        "device": c.device,
        "seed": c.seed,
        "repeat": c.repeat,
        "backward": c.backward,
        "reference": c.reference,
        "rows": [row_json(r) for r in c.rows],
        "training_dependent": None if c.attribution is None else _attribution_json(c.attribution),
        "eval_random_max_abs_diff": _num(c.eval_random_max_abs_diff),
        "eval_random_int_equal": c.eval_random_int_equal,
        "eval_random_note": mismatch_text(c.eval_random_mismatch),
        "grad_mode_diffs": [_grad_mode_json(d) for d in c.grad_mode_diffs],
        "nested_fast_path": _nested_json(c.nested_fast_path),
        "findings": [finding_json(f) for f in report.findings],
        "verdict": list(report.verdict),
        "notes": list(report.notes),
        "weights": {"missing_keys": list(c.missing_keys), "unexpected_keys": list(c.unexpected_keys)},
    }
