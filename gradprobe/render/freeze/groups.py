"""Group freeze-check issues that share a check, a module and a cause, so big models print a few entries.

No torch here, and display only: the JSON report keeps one entry per issue.  Grouping reads the issue's
structured parts, never its message: issues group when their check, spec groups, expectation, ``kind``,
``cause`` and ``fix`` agree (the rules write ``cause`` without the subject's name).  A parameter or buffer
name is ``module.leaf`` (torch forbids dots in the leaf), so the owning module is the name minus its last
part.  Issues first group per module; modules then roll up to their outermost ancestor (below the model)
when every group of that check under it has the same cause.  A group's text is its cause said of each
subject ("each trainable parameter received no gradient: ..."); its subjects are listed by module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gradprobe.facts.freeze import FreezeIssue

# a number that is a whole token (not the 32 of float32): measured amounts in ``found`` differ per parameter
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
_UP_TO_NUMBER = re.compile(r"(up to )?" + _NUMBER.pattern)  # the same numbers, with a bound word before them

Key = tuple[str, ...]


@dataclass(frozen=True)
class IssueGroup:
    """One entry of the terminal / Markdown view: a single issue, a module's issues, or a roll-up."""

    check: str
    where: str  # the subject of a single issue, else the module ("" is the model itself)
    issues: tuple[FreezeIssue, ...]
    modules: tuple[tuple[str, tuple[str, ...]], ...]  # (module, leaf names) in report order; () for a single issue
    expected: str
    found: str
    message: str  # the cause, without the fix; said of each subject when grouped
    fix: str | None

    @property
    def single(self) -> bool:
        return not self.modules

    @property
    def rolled_up(self) -> bool:
        """Spans several modules (their names and leaves are listed one module a line)."""
        return len(self.modules) > 1

    @property
    def noun(self) -> str:
        return "buffers" if self.check == "buffer" else "parameters"


def module_label(module: str) -> str:
    return module or "(model)"


def statement(issue: FreezeIssue) -> str:
    """What is wrong with one subject, without the fix: the message when the rule gave no parts."""
    if issue.kind and issue.cause:
        return f"{issue.kind} '{issue.subject}' {issue.cause}"
    return issue.cause or issue.message


def _owner(issue: FreezeIssue) -> tuple[str, str] | None:
    """(module, leaf) of a groupable parameter or buffer subject; None for issues shown alone."""
    if not (issue.kind and issue.cause) or issue.check == "unlisted" or issue.subject.startswith("("):
        return None  # unlisted issues are already grouped by module in the rules; "(optimizer)" has no module
    module, _, leaf = issue.subject.rpartition(".")
    return module, leaf


def _template(text: str) -> str:
    return _NUMBER.sub("#", text)


def _merge_numbers(texts: Sequence[str]) -> str:
    """Texts that differ only in numbers → one text with ``min–max`` where they differ.

    A range drops an ``up to`` in front of it: "moved by up to 1e-06–1e-05" reads as a bound of a range.
    """
    first = texts[0]
    columns = list(zip(*(_NUMBER.findall(t) for t in texts), strict=True))
    if not columns:
        return first
    values = iter(columns)

    def span(m: re.Match[str]) -> str:
        column = next(values)
        low, high = min(column, key=float), max(column, key=float)
        return (m.group(1) or "") + low if float(low) == float(high) else f"{low}–{high}"

    return _UP_TO_NUMBER.sub(span, first)


def _cause_key(issue: FreezeIssue) -> Key:
    return (issue.check, *issue.groups, "|", issue.expected, _template(issue.found), issue.kind, issue.cause,
            issue.fix or "")


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b", "a.b.c"]``: outermost first, never the model itself."""
    parts = module.split(".") if module else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _build(check: str, where: str, issues: list[FreezeIssue], roll: bool) -> IssueGroup:
    first = issues[0]
    if len(issues) == 1 and not roll:
        return IssueGroup(check, first.subject, (first,), (), first.expected, first.found, statement(first),
                          first.fix)
    modules: dict[str, list[str]] = {}
    for issue in issues:
        owner = _owner(issue)
        assert owner is not None
        modules.setdefault(owner[0], []).append(owner[1])
    return IssueGroup(check, where, tuple(issues), tuple((m, tuple(leaves)) for m, leaves in modules.items()),
                      first.expected, _merge_numbers([i.found for i in issues]), f"each {first.kind} {first.cause}",
                      first.fix)


def _roll_up_targets(groups: list[Key], buckets: dict[Key, list[FreezeIssue]]) -> tuple[dict[Key, str],
                                                                                        dict[tuple[str, str],
                                                                                             list[Key]]]:
    """Per module group, the outermost ancestor under which every module group of its check has one cause."""
    under: dict[tuple[str, str], list[Key]] = {}  # (check, ancestor) -> module groups below it
    causes_under: dict[tuple[str, str], set[Key]] = {}
    for key in groups:
        first = buckets[key][0]
        for a in _ancestors(key[0]):
            under.setdefault((first.check, a), []).append(key)
            causes_under.setdefault((first.check, a), set()).add(key[1:])
    target: dict[Key, str] = {}
    for key in groups:
        if key in target:
            continue
        check = buckets[key][0].check
        for a in _ancestors(key[0]):
            members = under[(check, a)]
            if len(members) > 1 and len(causes_under[(check, a)]) == 1 and not any(m in target for m in members):
                target.update({m: a for m in members})
                break
    return target, under


def group_issues(issues: Sequence[FreezeIssue]) -> list[IssueGroup]:
    """Entries in report order: per (check, module, cause), then rolled up to the outermost common module."""
    buckets: dict[Key, list[FreezeIssue]] = {}
    order: list[tuple[str, Key]] = []  # ("single", (index,)) or ("module", key)
    for n, issue in enumerate(issues):
        owner = _owner(issue)
        if owner is None:
            order.append(("single", (str(n),)))
            continue
        key = (owner[0], *_cause_key(issue))
        if key not in buckets:
            buckets[key] = []
            order.append(("module", key))
        buckets[key].append(issue)
    target, under = _roll_up_targets([key for kind, key in order if kind == "module"], buckets)
    out: list[IssueGroup] = []
    emitted: set[tuple[str, str]] = set()
    for kind, key in order:
        if kind == "single":
            issue = issues[int(key[0])]
            out.append(_build(issue.check, issue.subject, [issue], roll=False))
        elif key in target:
            check, a = buckets[key][0].check, target[key]
            if (check, a) not in emitted:
                emitted.add((check, a))
                out.append(_build(check, a, [i for m in under[(check, a)] for i in buckets[m]], roll=True))
        else:
            out.append(_build(buckets[key][0].check, key[0], buckets[key], roll=False))
    return out
