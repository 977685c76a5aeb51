"""Helpers of the real ``torchrun`` tests: running gradprobe as users start it, and reading its documents.

A module of its own (not conftest): test files import from it by a name unique in the tests tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TIMEOUT = 180  # a whole torchrun job on a busy 2-core machine; the runs themselves take seconds


@dataclass
class DistResult:
    code: int
    out: str
    err: str
    seconds: float
    ranks: list[dict[str, Any]]  # reference facts per rank (reference runs only)

    def json(self) -> dict[str, Any]:
        return json.loads(self.out)  # one document: only rank 0 writes

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def gradprobe_lines(self) -> list[str]:
        return [line for line in self.err_lines if line.startswith("gradprobe:")]


def dist_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "NO_COLOR": "1",
           "GRADPROBE_NO_PROGRESS": "1", **(extra or {})}
    env.pop("FORCE_COLOR", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def gradprobe_cmd() -> list[str]:
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


def run_command(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> DistResult:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=dist_env(env), capture_output=True, text=True, timeout=timeout)
    return DistResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start, [])


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["parameters"]}


def codes(doc: dict[str, Any]) -> list[str]:
    return [f["code"] for f in doc["findings"]]


def finding(doc: dict[str, Any], code: str) -> dict[str, Any]:
    found = [f for f in doc["findings"] if f["code"] == code]
    assert found, f"no {code} finding in {codes(doc)}"
    return found[0]


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    """Norms equal up to float32 rounding (both None counts as equal)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-9
