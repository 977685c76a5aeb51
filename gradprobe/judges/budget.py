"""``--budget 80GiB``: does the predicted per-rank peak fit, what takes it, and the cheapest lever that fits.

Pure functions of facts.  Every lever's figure is a peak measured by running the step again with that lever
applied (gradprobe.api_fit); this module only reads those runs: it never scales a figure by hand.  Levers are
tried from the cheapest to the dearest: reshard_after_forward (costs all-gathers again in backward), activation
checkpointing (one more forward of the checkpointed units), more ranks (more GPUs), a smaller local batch
(changes the training recipe, or needs gradient accumulation to keep it).
"""

from __future__ import annotations

import re

from gradprobe.errors import UsageError
from gradprobe.facts.fit import LABEL, BudgetVerdict, Lever, RankFit
from gradprobe.units import human_bytes

LEVER_ORDER = ("reshard_after_forward", "checkpoint", "world_size", "batch")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_budget(text: str) -> int:
    """``80GiB`` / ``80 GB`` / ``512MiB`` / ``1.5TiB`` / a number of bytes → bytes."""
    match = _SIZE.match(text or "")
    unit = match.group(2).lower() if match else None
    size = int(float(match.group(1)) * _UNITS[unit]) if match is not None and unit in _UNITS else 0
    if size < 1:  # a fraction of a byte ('0.5') would be a budget of 0 B that every step exceeds
        raise UsageError(f"--budget '{text}' is not a size: use a positive size like 80GiB, 40GB or 512MiB "
                         f"(GiB = 2**30 bytes, GB = 10**9; a bare number is bytes)")
    return size


def judged_row(rows: tuple[RankFit, ...] | list[RankFit], budget: int) -> RankFit:
    """The row the verdict is about: the first world size over budget, else the one with the highest peak."""
    over = [r for r in rows if r.peak > budget]
    return over[0] if over else max(rows, key=lambda r: r.peak)


def verdict(row: RankFit, budget: int, levers: tuple[Lever, ...] = ()) -> BudgetVerdict:
    """Fits or not; the dominant category at the step's peak; the cheapest lever that fits (LEVER_ORDER)."""
    step = row.step
    dominant = step.dominant()
    ordered = sorted(levers, key=lambda lv: LEVER_ORDER.index(lv.kind) if lv.kind in LEVER_ORDER else 99)
    chosen = next((lv for lv in ordered if lv.fits), None)
    return BudgetVerdict(budget=budget, world_size=row.world_size, peak=row.peak, fits=row.peak <= budget,
                         dominant=dominant, dominant_bytes=step.get(dominant), levers=tuple(ordered),
                         chosen=chosen, method=row.method)


def verdict_text(v: BudgetVerdict) -> str:
    """One sentence: the verdict, what dominates, and the lever."""
    where = f"at {v.world_size} rank(s)"
    peak = f"{v.method} peak" if v.method else "peak"  # a figure of one simulated or estimated step, not of a job
    if v.fits:
        return (f"fits: {peak} {human_bytes(v.peak)} per rank {where} is within the budget of "
                f"{human_bytes(v.budget)} ({human_bytes(v.budget - v.peak)} to spare)")
    text = (f"does not fit: {peak} {human_bytes(v.peak)} per rank {where} exceeds the budget of "
            f"{human_bytes(v.budget)} by {human_bytes(v.peak - v.budget)}; the largest category is "
            f"{LABEL.get(v.dominant, v.dominant)} ({human_bytes(v.dominant_bytes)})")
    if v.chosen is not None:
        return f"{text}; cheapest lever that fits: {v.chosen.text} → peak {human_bytes(v.chosen.peak)}"
    tried = [lv for lv in v.levers if lv.peak is not None]
    return text + ("; no single lever tried fits" if tried else "; no lever could be tried")


def lever_line(lever: Lever) -> str:
    if lever.peak is None:
        return f"{lever.text}: {lever.detail or 'not applicable'}"
    mark = "fits" if lever.fits else "still over"
    return f"{lever.text}: peak {human_bytes(lever.peak)} ({mark}){'; ' + lever.detail if lever.detail else ''}"
