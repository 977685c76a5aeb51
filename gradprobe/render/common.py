"""What every command's views share: findings as a rich list, a Markdown table and a JSON object, Markdown
table cells, and strict JSON text.  No torch; rich is imported only by the function that draws with it, so the
JSON and Markdown paths stay light."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gradprobe.facts.run import Finding

if TYPE_CHECKING:
    from rich.console import RenderableType

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
MORE_FINDINGS = "more findings (--top to change, --format json for all)"


def dumps(doc: dict[str, Any]) -> str:
    """Stable, strict JSON text (no NaN literals)."""
    return json.dumps(doc, indent=2, allow_nan=False)


def finding_json(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "severity": f.severity, "subject": f.subject, "message": f.message, "hint": f.hint}


def md_escape(text: str) -> str:
    """Keep table cells intact."""
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape("" if c is None else str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def findings_md(findings: Sequence[Finding]) -> str:
    if not findings:
        return "No findings."
    return md_table(["severity", "code", "subject", "message", "fix"],
                    [(f.severity, f"`{f.code}`", f"`{f.subject}`" if f.subject else "", f.message, f.hint)
                     for f in findings])


def findings_table(findings: Sequence[Finding], top: int | None = None,
                   empty: str = "No findings: autograd sees what a training run expects.") -> RenderableType:
    """Findings as a list: ``error  grad-none  aux_head`` and the message and fix indented below, full width."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    if not findings:
        return Text(empty, style="green")
    parts: list[RenderableType] = [Text(f"Findings ({len(findings)})", style="bold")]
    width = max(len(x.severity) for x in findings)
    # a huge model can have thousands (one per zero gradient)
    shown = list(findings) if top is None or top <= 0 else list(findings)[:top]
    for x in shown:
        head = Text.assemble((x.severity.ljust(width), SEVERITY_STYLE[x.severity]), "  ", (x.code, "bold"))
        if x.subject:
            head.append(f"  {x.subject}", style="cyan")
        body = Text(x.message)
        if x.hint:
            body.append(f"\nfix: {x.hint}", style="dim")
        parts += [head, Padding(body, (0, 0, 0, width + 2), expand=False)]
    if len(shown) < len(findings):
        parts.append(Text(f"{len(findings) - len(shown)} {MORE_FINDINGS}", style="dim"))
    return Group(*parts)


def light_table() -> Any:
    """A rich table without vertical rules, so names get the width on an 80-column terminal."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))


def titled(title: str, table: Any, caption: str | None = None) -> Any:
    """Title and caption outside the table, so a narrow table does not wrap them."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [Text(title, style="bold"), table]
    if caption:
        parts.append(Text(caption, style="dim"))
    return Group(*parts)
