"""freeze-check only: JUnit XML for CI dashboards, one test case per check and spec group.

``inspect`` and ``compare-modes`` have no JUnit output; this module reads a ``FreezeReport`` and nothing else.
Failures carry the message.

A spec group is what one pattern claims (``frozen backbone``, ``trainable head``), or ``baseline``,
``unlisted``, ``conflict``.  Checks that did not run (no ``--optimizer``, ``--allow-buffer-updates``)
are reported as skipped test cases; warnings go to the case's ``system-out``.  No torch here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.judges.freeze import FreezeReport
from gradprobe.judges.freeze.report import issue_line

_FROZEN_CHECKS = ("flag", "gradient", "optimizer", "step", "buffer")
_TRAINABLE_CHECKS = ("flag", "gradient", "optimizer", "step")


@dataclass
class _Case:
    check: str
    group: str
    skipped: str | None = None
    failures: list[FreezeIssue] = field(default_factory=list)
    warnings: list[FreezeIssue] = field(default_factory=list)


def _skip_reason(report: FreezeReport, check: str) -> str | None:
    if check in ("optimizer", "step") and report.facts.optimizer is None:
        return "no --optimizer given"
    if check == "step" and report.facts.optimizer is not None and report.facts.optimizer.steps_skipped:
        return report.facts.optimizer.steps_skipped
    if check == "buffer" and report.allow_buffer_updates:
        return "--allow-buffer-updates"
    return None


def _cases(report: FreezeReport) -> list[_Case]:
    cases: dict[tuple[str, str], _Case] = {}

    def case(check: str, group: str) -> _Case:
        key = (check, group)
        if key not in cases:
            cases[key] = _Case(check, group, _skip_reason(report, check))
        return cases[key]

    case("conflict", "frozen vs trainable")
    for p in report.frozen:
        for check in _FROZEN_CHECKS:
            case(check, f"frozen {p}")
    for p in report.trainable:
        for check in _TRAINABLE_CHECKS:
            case(check, f"trainable {p}")
    if report.baseline:
        case("flag", "baseline")
    if report.unlisted != "ignore":
        case("unlisted", "unlisted")
    for issues, failing in ((report.violations, True), (report.warnings, False)):
        for issue in issues:
            groups = issue.groups or ("model",)
            for group in groups:
                c = case(issue.check, "frozen vs trainable" if issue.check == "conflict" else group)
                (c.failures if failing else c.warnings).append(issue)
    return list(cases.values())


def junit_xml(report: FreezeReport) -> str:
    """The JUnit document: ``testsuites`` > ``testsuite name="gradprobe freeze-check"`` > ``testcase``."""
    cases = _cases(report)
    failures = sum(bool(c.failures) for c in cases)
    skipped = sum(c.skipped is not None and not c.failures for c in cases)
    run = report.facts.run
    elapsed = sum(t or 0.0 for t in (run.forward_time_s, run.backward_time_s))
    suites = ET.Element("testsuites", name="gradprobe", tests=str(len(cases)), failures=str(failures),
                        errors="0", skipped=str(skipped), time=f"{elapsed:.3f}")
    suite = ET.SubElement(suites, "testsuite", name="gradprobe freeze-check", tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped=str(skipped), time=f"{elapsed:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("target", report.target), ("torch", run.torch_version), ("device", run.device),
                        ("frozen", " ".join(report.frozen)), ("trainable", " ".join(report.trainable))):
        ET.SubElement(props, "property", name=name, value=value)
    for c in cases:
        el = ET.SubElement(suite, "testcase", classname=f"gradprobe.freeze.{c.check}", name=f"{c.check}: {c.group}",
                           time="0")
        if c.failures:
            first = c.failures[0]
            failure = ET.SubElement(el, "failure", type=c.check,
                                    message=f"{len(c.failures)} violation(s); first: {first.subject}: {first.message}")
            failure.text = "\n".join(issue_line(i) for i in c.failures)
        elif c.skipped is not None:
            ET.SubElement(el, "skipped", message=c.skipped)
        if c.warnings:
            out = ET.SubElement(el, "system-out")
            out.text = "\n".join("warning: " + issue_line(i) for i in c.warnings)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
