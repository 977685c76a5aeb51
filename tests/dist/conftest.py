"""Fixtures of the real ``torchrun`` tests: gradprobe as users start it, and plain PyTorch references on every rank."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # dist_helpers, dist_models: beside this file

from dist_helpers import HERE, TIMEOUT, DistResult, gradprobe_cmd, run_command


@pytest.fixture
def nproc() -> Callable[..., DistResult]:
    """``gradprobe ARGS --nproc N``: gradprobe starts torch.distributed.run itself."""

    def run(*args: str, n: int = 2, timeout: float = TIMEOUT, cwd: Path = HERE,
            env: dict[str, str] | None = None) -> DistResult:
        return run_command([*gradprobe_cmd(), *args, "--nproc", str(n)], cwd, timeout, env)

    return run


@pytest.fixture
def torchrun() -> Callable[..., DistResult]:
    """``torchrun --standalone --nproc-per-node N -m gradprobe ARGS``: the users' launcher, unchanged."""

    def run(*args: str, n: int = 2, timeout: float = TIMEOUT, cwd: Path = HERE) -> DistResult:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "gradprobe", *args]
        return run_command(cmd, cwd, timeout)

    return run


@pytest.fixture
def reference(tmp_path: Path) -> Callable[..., DistResult]:
    """Plain PyTorch on every rank (tests/dist/reference.py), then gradprobe in the same torchrun job."""

    def run(ref_args: list[str], gradprobe_args: list[str], n: int = 2, timeout: float = TIMEOUT) -> DistResult:
        out = tmp_path / "ref"
        out.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               str(HERE / "reference.py"), str(out), *ref_args, "--", *gradprobe_args]
        result = run_command(cmd, HERE, timeout)
        files = sorted(out.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
        result.ranks = [json.loads(p.read_text()) for p in files]
        return result

    return run


