"""freeze-check only: GitHub Actions ``::error`` annotations and the step summary.

``inspect`` and ``compare-modes`` do not publish to GitHub; this module reads a ``FreezeReport`` and its
Markdown.

Active only when ``GITHUB_ACTIONS=true`` (GitHub sets it on every runner).  Annotations go to
stderr, which the runner scans for workflow commands like stdout, so stdout keeps only the report.
No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.judges.freeze import FreezeReport


def active(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get("GITHUB_ACTIONS") == "true"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, title: str, message: str) -> str:
    """One workflow command line: ``::error title=...::message``."""
    return f"::{level} title={_escape_property(title)}::{_escape_data(message)}"


def issue_annotation(level: str, issue: FreezeIssue) -> str:
    return annotation(level, f"gradprobe freeze-check: {issue.check} {issue.subject}",
                      f"{issue.message} (expected {issue.expected}, found {issue.found})")


def annotations(report: FreezeReport) -> list[str]:
    """``::error`` per violation, ``::warning`` per warning."""
    return ([issue_annotation("error", v) for v in report.violations]
            + [issue_annotation("warning", w) for w in report.warnings])


def publish(report: FreezeReport, markdown: str, stream: TextIO, env: Mapping[str, str] | None = None) -> None:
    """Under GitHub Actions: print annotations and append the Markdown report to ``$GITHUB_STEP_SUMMARY``."""
    env = env if env is not None else os.environ
    if not active(env):
        return
    for line in annotations(report):
        stream.write(line + "\n")
    stream.flush()
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with Path(summary).open("a", encoding="utf-8") as fh:
                fh.write(markdown if markdown.endswith("\n") else markdown + "\n")
        except OSError as exc:
            stream.write(annotation("warning", "gradprobe freeze-check",
                                    f"cannot append to GITHUB_STEP_SUMMARY {summary}: {exc.strerror}") + "\n")


def publish_error(message: str, stream: TextIO, env: Mapping[str, str] | None = None) -> None:
    """Under GitHub Actions: a run that could not verify the freeze is an ``::error`` too."""
    if active(env):
        stream.write(annotation("error", "gradprobe freeze-check could not run", message) + "\n")
        stream.flush()
