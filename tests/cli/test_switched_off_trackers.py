"""Trackers can be switched off, and the report says what was skipped (issue 5 §4).

The overhead itself (inspect's run against a plain forward+backward, the whole command against a plain
script) is measured by ``benchmarks/run.py``, not asserted in timed tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

pytestmark = pytest.mark.slow  # the installed command, twice: seconds


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_switched_off_trackers_are_reported(run_cli) -> None:
    result = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--no-memory", "--no-tensors", "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["memory"] is None and doc["tensors"] == []
    assert any("--no-memory" in s for s in doc["skipped"]) and any("--no-tensors" in s for s in doc["skipped"])
    table = run_cli("inspect", "tests.fixtures.zoo:tiny_gpt", "--no-memory", "--no-tensors")
    assert "skipped" in table.out and "--no-memory" in table.out and "--no-tensors" in table.out
