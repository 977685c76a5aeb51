"""docs/ci-examples.md stays true: its pyproject, GitHub Actions and pytest snippets are run as written."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ci-examples.md"


def snippets() -> dict[str, str]:
    """Fenced blocks that follow an ``<!-- example: NAME -->`` marker, by name."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- example: ([\w.-]+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(found)


def test_readme_use_in_ci_shows_the_same_snippets() -> None:
    """The README's "Use in CI" section copies the tested snippets; a drift would show untested text."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, code in snippets().items():
        assert code in readme, f"README.md lacks the '{name}' snippet of docs/ci-examples.md"


def test_pytest_example_is_the_real_test_file() -> None:
    example = (REPO / "tests" / "run" / "test_freeze_ci_example.py").read_text(encoding="utf-8")
    assert snippets()["pytest"] == example


@pytest.mark.slow
def test_pyproject_and_github_step_run_as_written(tmp_path: Path, run_cli: Callable[..., Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = snippets()
    (tmp_path / "pyproject.toml").write_text(blocks["pyproject.toml"], encoding="utf-8")
    (tmp_path / "train.py").write_text(blocks["train.py"], encoding="utf-8")
    (command,) = re.findall(r"^\s*run: (.+)$", blocks["github-actions"], flags=re.M)
    argv = shlex.split(command)
    assert argv[:2] == ["gradprobe", "freeze-check"]
    summary = tmp_path / "step-summary.md"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    res = run_cli(*argv[1:], cwd=tmp_path, env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert res.code == 0, res.err
    assert res.out.strip().splitlines()[-1] == blocks["verdict"].strip()
    assert not [line for line in res.err.splitlines() if line.startswith("::error")]
    assert "## gradprobe freeze-check `gradprobe.examples:fixed`: PASS" in summary.read_text()
    suite = ET.parse(tmp_path / "freeze-junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    names = {c.get("name") for c in suite.findall("testcase")}
    assert {"flag: frozen backbone", "step: trainable head", "buffer: frozen backbone"} <= names
