"""Shared wording for the freeze rules: module paths, short lists, numbers, and the issue builder.

No torch here.  Every rule builds its issue through ``issue``, which writes the one-subject message from
the parts the grouped views need (kind, cause, fix), so no renderer ever has to take a message apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from gradprobe.facts.freeze import FreezeIssue
from gradprobe.units import shorten

DDP_NOTE = "under DistributedDataParallel it would need find_unused_parameters=True"


def in_subtree(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


def ancestors(module: str) -> list[str]:
    """``"a.b.c"`` → ``["", "a", "a.b", "a.b.c"]``: outermost first."""
    parts = module.split(".") if module else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def label(module: str) -> str:
    return f"'{module}'" if module else "the model"


def short(names: Iterable[str], limit: int = 3) -> str:
    return shorten(names, limit, quote=True)


def num(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


def issue(check: str, subject: str, expected: str, found: str, cause: str, *, kind: str = "",
          fix: str | None = None, groups: tuple[str, ...] = (), sep: str = "; ",
          mechanism: tuple[str, ...] = (), delta: float | None = None) -> FreezeIssue:
    """An issue whose message reads ``{kind} '{subject}' {cause}{sep}{fix}`` (without kind: ``{cause}...``).

    ``cause`` must not name the subject when ``kind`` is given: issues sharing kind and cause are shown as
    one entry listing their subjects.
    """
    head = f"{kind} '{subject}' {cause}" if kind else cause
    message = head if fix is None else f"{head}{sep}{fix}"
    return FreezeIssue(check, subject, expected, found, message, groups, fix=fix, kind=kind, cause=cause,
                       mechanism=mechanism, delta=delta)
