"""The freeze-check report: the verdict on the facts, with its one-line summary and explanation.

No torch here.  ``summary()`` is the last line of every view; ``explain()`` is the text of
``assert_frozen``'s AssertionError.  Both are public.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradprobe.facts.freeze import EXPECTED, FreezeFacts, FreezeIssue, FreezeParam


@dataclass(frozen=True)
class FreezeReport:
    """The result of ``freeze-check``: ``passed`` is True when there is no violation (warnings do not fail)."""

    target: str
    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    unlisted: str
    parameters: tuple[FreezeParam, ...]
    violations: tuple[FreezeIssue, ...]
    warnings: tuple[FreezeIssue, ...]
    facts: FreezeFacts
    allow_buffer_updates: bool = False
    baseline: str | None = None
    config: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    ddp_unused: tuple[str, ...] = ()  # require grad, receive none: DDP needs find_unused_parameters=True

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def optimizer(self) -> str | None:
        opt = self.facts.optimizer
        return f"{opt.spec} ({opt.type})" if opt is not None else None

    def summary(self) -> str:
        """The one-line verdict."""
        return summary_line(self)

    def explain(self) -> str:
        """The verdict and every violation, one per line: the text of ``assert_frozen``'s AssertionError."""
        return "\n".join([summary_line(self), *("  " + issue_line(v, with_check=True) for v in self.violations)])


def summary_line(report: FreezeReport) -> str:
    """``PASS: the freeze holds for T: 8 parameters (6 frozen, 2 trainable, 0 unlisted); 0 violation(s), ...``."""
    counts = {e: sum(p.expected == e and not p.conflict for p in report.parameters) for e in EXPECTED}
    conflicts = sum(p.conflict for p in report.parameters)
    checked = (f"{len(report.parameters)} parameters ({counts['frozen']} frozen, {counts['trainable']} trainable, "
               f"{counts['unlisted']} unlisted" + (f", {conflicts} conflicting)" if conflicts else ")"))
    tail = f"{len(report.violations)} violation(s), {len(report.warnings)} warning(s)"
    if report.passed:
        return f"PASS: the freeze holds for {report.target}: {checked}; {tail}"
    return f"FAIL: the freeze does not hold for {report.target}: {checked}; {tail}"


def issue_line(i: FreezeIssue, with_check: bool = False) -> str:
    """``[check] subject: expected X, found Y -- message`` (JUnit bodies leave out the check)."""
    head = f"[{i.check}] {i.subject}" if with_check else i.subject
    return f"{head}: expected {i.expected}, found {i.found} -- {i.message}"
