"""Shared test fixtures: the real CLI (in a subprocess and in-process) and global-state hygiene.

Golden-output (snapshot) tests live in ``tests/golden/`` and use syrupy: ``pytest tests/golden --snapshot-update``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@dataclass
class CliResult:
    """Exit code and the two streams of one ``gradprobe`` invocation."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def gradprobe_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m gradprobe``."""
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """Run the installed ``gradprobe`` command in a fresh process (the real user path)."""

    def run(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> CliResult:
        # the repo root on the path: model files written by tests import the shared fixtures (tests.fixtures.zoo)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "PYTHONPATH": path, **(env or {})}
        full_env.pop("FORCE_COLOR", None)
        proc = subprocess.run([*gradprobe_command(), *args], cwd=cwd or REPO, env=full_env, capture_output=True,
                              text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``gradprobe.cli.main`` in this process: the same code path as the command, without the torch import."""
    from gradprobe.cli.app import main

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")

    def run(*args: str) -> CliResult:
        capfd.readouterr()
        code = main(list(args))
        captured = capfd.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def _restore_global_torch_state() -> Iterator[None]:
    """Tests import user modules that switch the global grad mode off; never let that leak into the next test."""
    torch = sys.modules.get("torch")
    enabled = torch.is_grad_enabled() if torch is not None else True
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_grad_enabled(enabled)
