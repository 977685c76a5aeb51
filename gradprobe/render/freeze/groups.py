"""Group freeze-check issues that share a check, a module and a cause, so big models print a few entries.

No torch here, and display only: the JSON report keeps one entry per issue.  A parameter or buffer name
is ``module.leaf`` (torch forbids dots in the leaf), so the owning module is the name minus its last part.
Issues first group per module; modules then roll up to their outermost ancestor (below the model) when
every group of that check under it has the same cause.  The message is kept once, with the subject
(and, for a roll-up, the module) replaced by a ``<name>`` / ``<module>`` placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gradprobe.facts.freeze import FreezeIssue

NAME = "<name>"
MODULE = "<module>"
# a number that is a whole token (not the 32 of float32): step deltas differ per parameter, the cause does not
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
_UP_TO_NUMBER = re.compile(r"(up to )?" + _NUMBER.pattern)  # the same numbers, with a bound word before them
# where a rule message turns from the cause to the remedy: "...; call requires_grad_(False) on it"
_FIX = re.compile(r"[;:] (?=(?:call|put|build|add|keep|untie|make|review|fix|use|remove|move|wrap|set) )")


@dataclass(frozen=True)
class IssueGroup:
    """One entry of the terminal / Markdown view: a single issue, a module's issues, or a roll-up."""

    check: str
    where: str  # the subject of a single issue, else the module ("" is the model itself)
    issues: tuple[FreezeIssue, ...]
    modules: tuple[tuple[str, tuple[str, ...]], ...]  # (module, leaf names) in report order; () for a single issue
    expected: str
    found: str
    message: str  # without the fix; placeholders when grouped
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


def split_fix(message: str) -> tuple[str, str | None]:
    """``cause; call x`` → (``cause``, ``call x``): the remedy goes on its own dimmed ``fix:`` line."""
    m = _FIX.search(message)
    if m is None:
        return message, None
    return message[: m.start()], message[m.end():]


def _owner(issue: FreezeIssue) -> tuple[str, str] | None:
    """(module, leaf) of a parameter or buffer subject; None for module-level or synthetic subjects."""
    if issue.check == "unlisted" or issue.subject.startswith("("):
        return None  # unlisted issues are already grouped by module in the rules; "(optimizer)" has no module
    module, _, leaf = issue.subject.rpartition(".")
    return module, leaf


def _mask(text: str, issue: FreezeIssue, module: str | None = None) -> str:
    text = text.replace(f"'{issue.subject}'", NAME)
    if module:
        text = text.replace(f"'{module}'", MODULE)
    return text


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


def _key(issue: FreezeIssue, module: str | None) -> tuple[str, ...]:
    return (issue.check, *issue.groups, "|", _mask(issue.expected, issue, module),
            _template(_mask(issue.found, issue, module)), _mask(issue.message, issue, module))


def _in_subtree(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b", "a.b.c"]``: outermost first, never the model itself."""
    parts = module.split(".") if module else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _build(check: str, where: str, issues: list[FreezeIssue], roll: bool) -> IssueGroup:
    first = issues[0]
    if len(issues) == 1 and not roll:
        message, fix = split_fix(first.message)
        return IssueGroup(check, first.subject, (first,), (), first.expected, first.found, message, fix)
    owners = [_owner(i) for i in issues]
    modules: dict[str, list[str]] = {}
    for owner in owners:
        assert owner is not None
        modules.setdefault(owner[0], []).append(owner[1])

    def masked(i: FreezeIssue, text: str) -> str:
        owner = _owner(i)
        return _mask(text, i, owner[0] if roll and owner else None)

    message, fix = split_fix(masked(first, first.message))
    found = _merge_numbers([masked(i, i.found) for i in issues])
    return IssueGroup(check, where, tuple(issues), tuple((m, tuple(leaves)) for m, leaves in modules.items()),
                      masked(first, first.expected), found, message, fix)


def group_issues(issues: Sequence[FreezeIssue]) -> list[IssueGroup]:
    """Entries in report order: per (check, module, cause), then rolled up to the outermost common module."""
    # 1. per module: same check, same module, same cause (the message and expectation with the name masked)
    buckets: dict[tuple[str, ...], list[FreezeIssue]] = {}
    order: list[tuple[str, tuple[str, ...]]] = []  # ("single", (index,)) or ("module", key)
    for n, issue in enumerate(issues):
        owner = _owner(issue)
        if owner is None:
            order.append(("single", (str(n),)))
            continue
        key = (owner[0], *_key(issue, None))
        if key not in buckets:
            buckets[key] = []
            order.append(("module", key))
        buckets[key].append(issue)
    # 2. roll-up: the outermost module under which every module group of this check has one cause
    groups = [key for kind, key in order if kind == "module"]
    cause: dict[tuple[str, ...], tuple[str, ...]] = {}
    under: dict[tuple[str, str], list[tuple[str, ...]]] = {}  # (check, ancestor) -> module groups below it
    causes_under: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for key in groups:
        first = buckets[key][0]
        cause[key] = _key(first, key[0])
        for a in _ancestors(key[0]):
            under.setdefault((first.check, a), []).append(key)
            causes_under.setdefault((first.check, a), set()).add(cause[key])
    target: dict[tuple[str, ...], str] = {}
    for key in groups:
        if key in target:
            continue
        check = buckets[key][0].check
        for a in _ancestors(key[0]):
            members = under[(check, a)]
            if len(members) > 1 and len(causes_under[(check, a)]) == 1 and not any(m in target for m in members):
                target.update({m: a for m in members})
                break
    out: list[IssueGroup] = []
    emitted: set[str] = set()
    for kind, key in order:
        if kind == "single":
            issue = issues[int(key[0])]
            out.append(_build(issue.check, issue.subject, [issue], roll=False))
        elif key in target:
            check = buckets[key][0].check
            a = target[key]
            if (check + "\0" + a) in emitted:
                continue
            emitted.add(check + "\0" + a)
            members = [i for m in under[(check, a)] for i in buckets[m]]
            out.append(_build(check, a, members, roll=True))
        else:
            out.append(_build(buckets[key][0].check, key[0], buckets[key], roll=False))
    return out
