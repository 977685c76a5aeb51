"""The probe adds little (issue 5 §4): inspect's run within 1.5x of a plain forward+backward in process, and
the whole ``gradprobe inspect`` command within 1.3x of a plain script doing the same work.

Timings on a shared machine are noisy: variants alternate, torch uses one thread, and the figure compared is
the median (in process) or the best of several runs (whole processes).  ``benchmarks/run.py`` reports the
same figures with more repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from gradprobe import zoo
from gradprobe.api import probe

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _alternate(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@pytest.mark.parametrize("factory", [zoo.resnet50, zoo.gpt2_small], ids=["resnet50", "gpt2_small"])
def test_inspect_run_costs_at_most_1_5x_a_plain_forward_backward(factory: Callable[[], nn.Module],
                                                                 one_thread: None) -> None:
    torch.manual_seed(0)
    model = factory()
    x = model.example_input_array

    def plain() -> None:
        model(x).float().sum().backward()
        for p in model.parameters():
            p.grad = None

    times = _alternate({"plain": plain, "inspect": lambda: probe(model, x)}, repeats=5)
    assert times["inspect"] / times["plain"] <= 1.5, times


PLAIN = textwrap.dedent("""
    import torch
    from gradprobe import zoo
    model = zoo.resnet50()
    model(model.example_input_array).float().sum().backward()
""")


def test_whole_command_costs_at_most_1_3x_a_plain_script() -> None:
    from conftest import gradprobe_command

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    commands = {"plain": [sys.executable, "-c", PLAIN],
                "gradprobe": [*gradprobe_command(), "inspect", "gradprobe.zoo:resnet50"]}
    best = {name: float("inf") for name in commands}
    for _ in range(3):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            best[name] = min(best[name], time.perf_counter() - start)
    assert best["gradprobe"] / best["plain"] <= 1.3, best


def test_switched_off_trackers_are_reported(run_cli) -> None:
    result = run_cli("inspect", "gradprobe.zoo:tiny_gpt", "--no-memory", "--no-tensors", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["memory"] is None and doc["tensors"] == []
    assert any("--no-memory" in s for s in doc["skipped"]) and any("--no-tensors" in s for s in doc["skipped"])
    table = run_cli("inspect", "gradprobe.zoo:tiny_gpt", "--no-memory", "--no-tensors")
    assert "skipped" in table.out and "--no-memory" in table.out and "--no-tensors" in table.out
