"""Where a probe run spends its time, for ``benchmarks/run.py --breakdown`` (issue 16).

Off by default and then nearly free: :func:`clock` returns 0.0 and :func:`lap` returns at once.
:func:`recording` switches it on for the runs inside it and collects seconds per component.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["clock", "lap", "recording"]

_laps: dict[str, float] | None = None


def clock() -> float:
    """Now, when recording; 0.0 otherwise."""
    return time.perf_counter() if _laps is not None else 0.0


def lap(name: str, start: float) -> float:
    """Add the time since ``start`` to ``name``; returns now (the next lap's start)."""
    if _laps is None:
        return 0.0
    now = time.perf_counter()
    _laps[name] = _laps.get(name, 0.0) + now - start
    return now


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Record the components of every run inside; the dict fills in as they run."""
    global _laps
    previous, _laps = _laps, {}
    try:
        yield _laps
    finally:
        _laps = previous
