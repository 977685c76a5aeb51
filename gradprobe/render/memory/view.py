"""The memory detail (issue 14) as one block per output format: peak anatomy and the timeline.

Shown only when the run recorded the memory event log (``--memory-detail``, ``--format html``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gradprobe.facts.memory import EventLog
from gradprobe.facts.run import MemoryFact
from gradprobe.judges.anatomy import anatomies, replay
from gradprobe.render.memory.anatomy import anatomy_json, anatomy_markdown, anatomy_table
from gradprobe.render.memory.series import timeline
from gradprobe.render.memory.timeline import chart_width, timeline_text


def memory_detail_view(memory: MemoryFact | None, top: int | None = 5, width: int = 80) -> RenderableType | None:
    """The anatomy tables and the character timeline, for the terminal."""
    log = memory.events if memory is not None else None
    if log is None:
        return None
    table = anatomy_table(anatomies(log, top=max(top or 5, 1)), top=min(top or 5, 10))
    lines = timeline_text(timeline(log, chart_width(width)), width)
    parts: list[RenderableType] = [table] if table is not None else []
    if lines:
        parts += [Text(lines[0], style="bold"), Text("\n".join(lines[1:]))]
    parts.append(Text(log_cost(log), style="dim"))
    return Group(*parts)


def log_cost(log: EventLog) -> str:
    return (f"event log: {log.ops} ops, {log.events} events, {log.storages} tensors, "
            f"{log.nbytes / max(log.ops, 1):.0f} bytes per op")


def memory_detail_markdown(memory: MemoryFact | None, top: int = 5) -> str:
    """The anatomy tables and the character timeline (in a code block), for Markdown."""
    log = memory.events if memory is not None else None
    if log is None:
        return ""
    lines = timeline_text(timeline(log, chart_width(80)), 80)
    out = anatomy_markdown(anatomies(log, top=top), top)
    if lines:
        out += "\n\n" + "\n".join(["```text", *lines, "```"])
    return out


def memory_detail_json(memory: MemoryFact | None) -> dict[str, Any]:
    """``memory.anatomy`` and ``memory.event_log`` (null without the event log)."""
    log = memory.events if memory is not None else None
    if log is None:
        return {"anatomy": None, "event_log": None}
    r = replay(log)
    return {
        "anatomy": anatomy_json(anatomies(log, top=10)),
        "event_log": {"ops": log.ops, "events": log.events, "tensors": log.storages, "bytes": log.nbytes,
                      "estimate": log.estimate, "max_live_bytes": max(r.live, default=0)},
    }
