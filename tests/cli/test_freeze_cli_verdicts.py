"""freeze-check verdicts through the installed command, in subprocesses, with and without ``--strict``.

The expected subjects come from plain PyTorch (the fixtures' ``plain_loop`` and ``named_parameters``),
never from gradprobe's output.  Exit codes: 0 the freeze holds, 1 violations (with ``--strict``:
warnings too), 2 it could not be verified.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures import freeze_patterns as fp

FIXTURES = Path(fp.__file__).resolve()
SPEC = ["--frozen", "backbone", "--trainable", "stem", "--trainable", "head"]


def check(run_cli: Callable[..., Any], optimizer: str, *extra: str, target: str = "Net") -> Any:
    return run_cli("freeze-check", f"{FIXTURES}:{target}", *SPEC, "--optimizer", f"{FIXTURES}:{optimizer}", *extra)


def by_check(issues: list[dict[str, Any]], name: str) -> set[str]:
    return {i["subject"] for i in issues if i["check"] == name}


@pytest.fixture(autouse=True)
def _not_on_github(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.mark.slow
def test_adamw_over_every_parameter_passes_and_strict_fails_on_the_warnings(run_cli: Callable[..., Any]) -> None:
    plain, _, moved = fp.plain_loop(fp.adamw_all)
    frozen = fp.frozen_names(plain)
    assert not moved & frozen
    strict = check(run_cli, "adamw_all", "--strict", "-f", "json")
    assert strict.code == 1, strict.err  # --strict: the warnings fail
    doc = json.loads(strict.out)
    assert doc["passed"] is True and doc["violations"] == []  # the verdict itself: the freeze holds
    table = check(run_cli, "adamw_all", "--strict")
    assert table.code == 1 and table.out.strip().splitlines()[-1].startswith("PASS: the freeze holds")
    # the report says PASS and the exit code is 1: one line on stderr says why
    assert f"exit 1: --strict fails on the {len(doc['warnings'])} warning(s)" in table.err, table.err
    assert by_check(doc["warnings"], "optimizer") == frozen
    fixed = check(run_cli, "adamw_trainable", "--strict")
    assert fixed.code == 0, fixed.err  # the fix: no warning left
    assert fixed.out.strip().splitlines()[-1].startswith("PASS: the freeze holds")


@pytest.mark.slow
def test_frozen_parameters_that_move_fail(run_cli: Callable[..., Any]) -> None:
    """Adam state resumed with zero .grad tensors (the other mechanisms: tests/run, through the API)."""
    plain, _, moved = fp.plain_loop(fp.adam_resumed_zero_grads)
    mechanism = "adam-state"
    res = check(run_cli, "adam_resumed_zero_grads", "-f", "json")
    assert res.code == 1, res.err
    doc = json.loads(res.out)
    assert by_check(doc["violations"], "step") == moved & fp.frozen_names(plain) != set()
    for v in (v for v in doc["violations"] if v["check"] == "step"):
        assert mechanism in v["mechanism"] and v["message"].endswith(v["fix"])


@pytest.mark.slow
def test_resumed_state_and_two_groups_fail_and_the_views_print_names(run_cli: Callable[..., Any],
                                                                     tmp_path: Path) -> None:
    plain, plain_opt, _ = fp.plain_loop(fp.sgd_momentum_resumed)
    with_state = {n for n, p in plain.named_parameters() if not p.requires_grad and p in plain_opt.state}
    junit = tmp_path / "freeze.xml"
    res = check(run_cli, "sgd_momentum_resumed", "--junit", str(junit), "-f", "markdown")
    assert res.code == 1, res.err
    assert "<name>" not in res.out and "<module>" not in res.out
    assert "already holds optimizer state" in res.out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    failing = {c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None}
    assert failing == {"optimizer: frozen backbone"}
    text = next(c for c in suite.findall("testcase") if c.get("name") == "optimizer: frozen backbone")
    assert all(n in (text.find("failure").text or "") for n in with_state)  # type: ignore[union-attr]

    table = check(run_cli, "two_groups")
    assert table.code == 1
    assert "<name>" not in table.out and "stem.weight" in table.out and "in param groups 0, 1" in table.out


@pytest.mark.slow
def test_trainable_parameter_without_gradient_fails(run_cli: Callable[..., Any]) -> None:
    model = fp.MissingGrads()
    m = copy.deepcopy(model).train()
    m(m.example_input_array).sum().backward()
    missing = {n for n, p in m.named_parameters() if p.grad is None}
    res = run_cli("freeze-check", f"{FIXTURES}:MissingGrads", "--trainable", "*", "--strict", "-f", "json")
    assert res.code == 1, res.err
    doc = json.loads(res.out)
    assert by_check(doc["violations"], "gradient") == missing != set()
    assert doc["ddp_unused_parameters"] == sorted(missing, key=[n for n, _ in model.named_parameters()].index)
