"""Judges for ``compare-modes``: findings and the plain-words verdict, pure functions of a :class:`Comparison`.

No torch here: every sentence is built from the measured numbers in the facts, so each one can be
tested with hand-made rows.  :mod:`.words` turns facts into words, :mod:`.findings` gives the findings
(codes are a public contract, see ``CODES``), :mod:`.verdict` the sentences.
"""

from __future__ import annotations

from gradprobe.facts.compare import CompareReport, Comparison
from gradprobe.judges.compare.findings import CODES, judge_compare
from gradprobe.judges.compare.verdict import compare_verdict
from gradprobe.judges.compare.words import attribution_note, mismatch_text
from gradprobe.units import duration  # its old home; renderers take it from gradprobe.units


def compare_notes(c: Comparison) -> list[str]:
    """Notes under the table: loading notes, the meta device's limits, a cross-check that could not run."""
    notes = list(c.notes)
    if c.device == "meta":
        notes.append("meta device: bytes are estimates; no times, output values or training attribution")
    if c.eval_random_error is not None:
        other = "another seed" if c.seed is None else f"seed {c.seed + 1}"
        notes.append(f"the eval check from another random state ({other}) raised {c.eval_random_error}")
    return notes


def compare_report(c: Comparison) -> CompareReport:
    """The judged comparison: findings, verdict and notes, computed once for every renderer."""
    return CompareReport(c, tuple(judge_compare(c)), tuple(compare_verdict(c)), tuple(compare_notes(c)))


__all__ = ["CODES", "attribution_note", "compare_notes", "compare_report", "compare_verdict", "duration",
           "judge_compare", "mismatch_text"]
