"""``inspect --memory-detail``: the anatomy and timeline through the real command."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import CliResult

TARGET = "tests.fixtures.zoo:tiny_gpt"


def test_table_shows_anatomy_and_timeline(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("inspect", TARGET, "--memory-detail", env={"COLUMNS": "80"})
    assert result.code == 0, result.err
    out = result.out
    assert "Peak anatomy" in out and "saved for backward" in out and "Largest tensors alive at the forward" in out
    assert "Memory timeline" in out and "^ peak" in out
    timeline = out[out.index("Memory timeline"):].splitlines()
    assert all(len(line) <= 80 for line in timeline)
    assert "peak-saved-activations" in out


def test_json_has_the_anatomy_only_when_asked(run_cli: Callable[..., CliResult]) -> None:
    plain = json.loads(run_cli("inspect", TARGET, "--format", "json").out)
    assert plain["memory"]["anatomy"] is None and plain["memory"]["event_log"] is None
    doc = json.loads(run_cli("inspect", TARGET, "--format", "json", "--memory-detail").out)
    memory = doc["memory"]
    forward, backward = memory["anatomy"]
    assert forward["peak_bytes"] == memory["forward_peak_bytes"]
    assert backward["peak_bytes"] == memory["backward_peak_bytes"]
    assert sum(forward["categories"].values()) == forward["peak_bytes"]
    assert forward["held"]["parameters"] == memory["parameter_bytes"]
    assert memory["event_log"]["ops"] > 0 and memory["event_log"]["max_live_bytes"] == backward["peak_bytes"]


def test_meta_and_markdown(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("inspect", TARGET, "--device", "meta", "--format", "markdown", "--memory-detail")
    assert result.code == 0, result.err
    assert "### Peak anatomy (estimate: meta device)" in result.out and "```text" in result.out


def test_memory_detail_needs_memory(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("inspect", TARGET, "--memory-detail", "--no-memory")
    assert result.code == 2 and result.err_lines == [
        "gradprobe: usage error: --memory-detail needs the memory trackers: drop --no-memory"]
