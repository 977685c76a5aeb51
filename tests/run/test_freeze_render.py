"""freeze-check's terminal and Markdown views: grouped, readable at 80 columns, bounded for big models.

Expected names come from plain PyTorch (``named_modules``, ``named_buffers``, a train-mode forward),
never from gradprobe's output; the hand-built issues check the grouping rules themselves.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import gradprobe
from gradprobe.examples import FineTuneNet
from gradprobe.facts.freeze import FreezeIssue
from gradprobe.judges.freeze.text import issue
from gradprobe.render.freeze.groups import group_issues
from gradprobe.render.freeze.view import DEFAULT_TOP, freeze_json, freeze_markdown, issues_list, render_freeze

SPEC: dict[str, Any] = {"frozen": ["backbone"], "trainable": ["head", "aux_head"]}


def text_of(draw: Callable[[Console], None], width: int = 80) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    draw(console)
    return console.export_text().rstrip("\n").splitlines()


def drifting_buffers(model: nn.Module, prefix: str) -> dict[str, list[str]]:
    """Module → leaf names of the buffers under ``prefix`` that one train-mode forward changes (plain PyTorch)."""
    twin = copy.deepcopy(model).train()
    before = {n: b.clone() for n, b in twin.named_buffers()}
    with torch.no_grad():
        twin(model.example_input_array)
    out: dict[str, list[str]] = {}
    for name, buf in twin.named_buffers():
        if name.startswith(prefix + ".") and not torch.equal(before[name], buf):
            module, _, leaf = name.rpartition(".")
            out.setdefault(module, []).append(leaf)
    return out


def entries(lines: list[str], check: str) -> list[str]:
    """Entry heads: a line that starts with the check name in the first column."""
    return [line for line in lines if re.match(rf"{check}\s{{2,}}\S", line)]


def test_buffers_of_two_modules_become_one_entry_at_80_columns() -> None:
    model = FineTuneNet()
    drift = drifting_buffers(model, "backbone")
    assert len(drift) == 2 and sum(map(len, drift.values())) == 6  # 2 BatchNorms x 3 buffers, per plain torch
    report = gradprobe.freeze_check(model, **SPEC)
    assert len(report.violations) == 8  # the JSON keeps one entry per buffer/parameter
    lines = text_of(lambda c: render_freeze(report, c))
    assert lines[-1] == report.summary()  # the verdict stays last, one line, unchanged
    assert all(len(line) <= 80 for line in lines[:-1]), "\n".join(x for x in lines if len(x) > 80)
    buffer_entries = entries(lines, "buffer")
    assert 1 <= len(buffer_entries) <= 2, lines
    text = " ".join(" ".join(lines).split())  # wrapped lines read as one text
    for module, leaves in drift.items():  # every subject: its module and leaf names on one line
        line = next(x for x in lines if module + ":" in x)
        assert all(leaf in line for leaf in leaves), line
    # the long message appears once, not once per buffer
    assert text.count("running statistics drift") == 1
    assert text.count("fix: put those modules in eval mode") == 1
    # the two never-called aux_head parameters: one entry naming both
    aux = [n for n, _ in model.aux_head.named_parameters()]
    (gradient,) = entries(lines, "gradient")
    assert "aux_head" in gradient and all(leaf in gradient for leaf in aux)
    assert text.count("is never called in forward") == 1
    assert len(lines) < 30


def test_json_and_markdown_keep_every_violation() -> None:
    model = FineTuneNet()
    report = gradprobe.freeze_check(model, **SPEC)
    drift = drifting_buffers(model, "backbone")
    names = {f"{m}.{leaf}" for m, leaves in drift.items() for leaf in leaves}
    names |= {f"aux_head.{n}" for n, _ in model.aux_head.named_parameters()}
    doc = freeze_json(report)
    assert {v["subject"] for v in doc["violations"]} == names
    md = freeze_markdown(report)
    assert "### Violations (8 in 2 entries)" in md
    for name in names:  # the collapsed table keeps a row per violation
        assert f"| `{name}` |" in md
    assert "<name>" not in md and "<module>" not in md  # no template placeholder is ever printed


def _never_called(module: str, leaf: str = "weight", culprit: str | None = None) -> FreezeIssue:
    return issue("gradient", f"{module}.{leaf}", "a gradient", ".grad is None",
                 f"received no gradient: module '{culprit or module}' is never called in forward; it is cut off "
                 f"from the loss", kind="trainable parameter", groups=("trainable aux",))


def test_row_limit_counts_entries_and_points_to_json() -> None:
    issues = [_never_called(f"aux{i}", leaf) for i in range(DEFAULT_TOP + 5) for leaf in ("weight", "bias")]
    assert len(group_issues(issues)) == DEFAULT_TOP + 5  # top-level modules never roll up into the model
    lines = text_of(lambda c: c.print(issues_list("Violations", issues, "bold red")))
    assert len(entries(lines, "gradient")) == DEFAULT_TOP
    assert lines[-1] == "5 more entries (10 violations; --format json for all)"
    assert all(len(line) <= 80 for line in lines)
    everything = text_of(lambda c: c.print(issues_list("Violations", issues, "bold red", top=None)))
    assert len(entries(everything, "gradient")) == DEFAULT_TOP + 5


def test_roll_up_only_when_every_module_below_has_the_same_cause() -> None:
    same = [_never_called(f"aux.{i}", leaf, culprit="aux") for i in range(3) for leaf in ("weight", "bias")]
    (group,) = group_issues(same)
    assert group.where == "aux" and group.rolled_up and len(group.issues) == 6
    assert [m for m, _ in group.modules] == ["aux.0", "aux.1", "aux.2"]
    assert group.message == "each trainable parameter " + same[0].cause  # said of each subject, no placeholder
    other = issue("gradient", "aux.3.weight", "a gradient", ".grad is None", "received no gradient: detached",
                  kind="trainable parameter", groups=("trainable aux",))
    groups = group_issues([*same, other])  # a different cause under 'aux': no roll-up, one entry per module
    assert [g.where for g in groups] == ["aux.0", "aux.1", "aux.2", "aux.3.weight"]
    # a cause naming each module (aux.i itself never called) never rolls up: the causes differ
    own = [_never_called(f"aux.{i}", leaf) for i in range(3) for leaf in ("weight", "bias")]
    assert [g.where for g in group_issues(own)] == ["aux.0", "aux.1", "aux.2"]
    # another check or another spec group never merges
    flag = FreezeIssue("flag", "aux.0.weight", "requires_grad=True", "requires_grad=False", "x", ())
    assert len(group_issues([*same, flag])) == 2
    regrouped = FreezeIssue(**{**vars(same[0]), "subject": "aux.9.weight", "groups": ("trainable other",)})
    assert [g.where for g in group_issues([*same, regrouped])] == ["aux.0", "aux.1", "aux.2", "aux.9.weight"]


def _moved(subject: str, found: str) -> FreezeIssue:
    return issue("step", subject, "unchanged", found, "still moves", kind="frozen parameter",
                 fix="keep frozen parameters out of it")


def test_numbers_that_differ_per_parameter_become_a_range() -> None:
    deltas = ["0.05", "0.224", "1e-05"]
    issues = [_moved(f"b.{i}.weight", f"moved by up to {d} with momentum=0.9") for i, d in enumerate(deltas)]
    (group,) = group_issues(issues)
    assert group.found == "moved by 1e-05–0.224 with momentum=0.9"  # a range: no "up to" in front of it
    same = [FreezeIssue(**{**vars(i), "found": "moved by up to 0.5 with momentum=0.9"}) for i in issues]
    assert group_issues(same)[0].found == "moved by up to 0.5 with momentum=0.9"  # one value: the bound stays
    assert group.fix == "keep frozen parameters out of it"
    assert group.message == "each frozen parameter still moves"


def test_grouping_reads_parts_not_messages() -> None:
    """The fix is the rule's own field; an issue without parts is shown alone, message as written."""
    one = _moved("b.0.weight", "moved")
    assert one.message == "frozen parameter 'b.0.weight' still moves; keep frozen parameters out of it"
    (single,) = group_issues([one])
    assert single.message == "frozen parameter 'b.0.weight' still moves" and single.fix == one.fix
    bare = [FreezeIssue("step", f"b.{i}.weight", "unchanged", "moved", f"'b.{i}.weight' moved; call x", ())
            for i in range(2)]
    assert [(g.where, g.message, g.fix) for g in group_issues(bare)] == [
        (i.subject, i.message, None) for i in bare]


@pytest.mark.slow
def test_real_cli_at_80_columns(run_cli: Callable[..., Any]) -> None:
    res = run_cli("freeze-check", "gradprobe.examples:FineTuneNet", "--frozen", "backbone", "--trainable", "head",
                  "--trainable", "aux_head", env={"COLUMNS": "80"})
    assert res.code == 1, res.err
    lines = res.out.rstrip("\n").splitlines()
    assert lines[-1].startswith("FAIL: the freeze does not hold") and "8 violation(s)" in lines[-1]
    assert all(len(line) <= 80 for line in lines[:-1])
    assert len(entries(lines, "buffer")) == 1 and len(entries(lines, "gradient")) == 1


def test_one_entry_is_singular() -> None:
    issues = [_moved(f"b.{i}.weight", f"moved by up to {d}") for i, d in enumerate(["1.76e-06", "1e-05"])]
    lines = text_of(lambda c: c.print(issues_list("Violations", issues, "red")))
    assert lines[0] == "Violations (2 in 1 entry)"
    assert "moved by 1.76e-06–1e-05" in " ".join(lines) and "up to" not in " ".join(lines)
    more = [*issues, _never_called("aux"), _never_called("other")]  # 3 entries, 2 shown: one more entry
    assert text_of(lambda c: c.print(issues_list("Violations", more, "red", top=2)))[-1].startswith("1 more entry (")
