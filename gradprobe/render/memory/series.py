"""The memory timeline as columns: live bytes over the run, compressed to a width, the peak kept exactly.

Each column covers a run of consecutive events of one phase and holds the most bytes alive after any of
them (and, for the first column, when the phase began), so the tallest column of a phase is exactly that
phase's peak whatever the width.  Each column also names the op and module call where its maximum was
reached, and the outermost module call below the model (``transformer.h.3``) for the module marks.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradprobe.facts.memory import EventLog
from gradprobe.judges.anatomy import Replay, replay


@dataclass(frozen=True)
class Column:
    """One column of the chart."""

    high: int  # most bytes alive after any event of the column
    low: int  # fewest
    event: int  # where ``high`` was reached (-1: when the phase began)
    op: int
    op_name: str
    module: str | None  # module call running at ``op`` (None: outside every call)
    call: int
    section: str | None  # the outermost module call below the model at the column's first event


@dataclass(frozen=True)
class PhaseSeries:
    phase: str
    columns: tuple[Column, ...]
    peak: int
    peak_column: int
    first_op: int
    end_op: int


def _top_calls(log: EventLog) -> list[int]:
    """For each call, its outermost ancestor below the model's own call (itself when it is that high)."""
    parents = log.column("call_parent")
    top = list(range(len(log.calls)))
    for c in range(len(log.calls)):  # parents are interned before their children: one pass suffices
        p = parents[c]
        if p >= 0 and parents[p] >= 0:
            top[c] = top[p]
    return top


def _section(log: EventLog, top: list[int], op: int) -> str | None:
    if not 0 <= op < log.ops:
        return None
    c = log.column("op_call")[op]
    if c < 0:
        return None
    name, call = log.calls[top[c]]
    return (name or "(model)") + (f" #{call}" if call else "")


def phase_series(r: Replay, phase: str, width: int, top: list[int] | None = None) -> PhaseSeries | None:
    """``phase`` in at most ``width`` columns (``None`` when the phase did not run)."""
    log = r.log
    span = log.span(phase)
    if span is None:
        return None
    top = top if top is not None else _top_calls(log)
    op_call, event_op = log.column("op_call"), log.column("event_op")
    n = span.end_event - span.first_event
    width = max(1, width)
    columns: list[Column] = []
    if n == 0:
        op = span.first_op
        return PhaseSeries(phase, (Column(span.start_bytes, span.start_bytes, -1, op, log.op_name(op), None, 0,
                                          None),), span.start_bytes, 0, span.first_op, span.end_op)
    count = min(width, n)
    for i in range(count):
        a = span.first_event + i * n // count
        b = span.first_event + (i + 1) * n // count
        segment = r.live[a:b]
        high = max(segment)
        event = a + segment.index(high)
        low = min(segment)
        if i == 0 and span.start_bytes > high:
            high, event = span.start_bytes, -1
        op = event_op[event] if event >= 0 else span.first_op
        c = op_call[op] if 0 <= op < log.ops else -1
        module, call = log.calls[c] if c >= 0 else (None, 0)
        columns.append(Column(high, min(low, high), event, op, log.op_name(op), module, call,
                              _section(log, top, event_op[a])))
    peak_column = max(range(len(columns)), key=lambda i: (columns[i].high, -i))
    return PhaseSeries(phase, tuple(columns), columns[peak_column].high, peak_column, span.first_op, span.end_op)


def timeline(log: EventLog, width: int, r: Replay | None = None) -> list[PhaseSeries]:
    """The forward and the backward, each in at most ``width`` columns."""
    r = r or replay(log)
    top = _top_calls(log)
    found = (phase_series(r, phase, width, top) for phase in ("forward", "backward"))
    return [s for s in found if s is not None]
