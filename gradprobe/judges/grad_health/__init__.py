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

Every message states what was measured; a cause that was not measured is worded as likely.  One module per
verdict (``nonfinite``, ``scale``, ``underflow``, ``dead_units``); ``words`` names calls and numbers.
"""

from __future__ import annotations

from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.grad_health.dead_units import dead_unit_findings
from gradprobe.judges.grad_health.nonfinite import nonfinite_findings
from gradprobe.judges.grad_health.scale import scale_findings
from gradprobe.judges.grad_health.underflow import underflow_findings

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

