"""``gradprobe compare-modes`` under torchrun: rank 0's comparison plus where other ranks concluded otherwise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from gradprobe.api_distributed.observe import run_with_collector
from gradprobe.api_distributed.rank import DistOptions, LoadSpec, load_rank
from gradprobe.facts.distributed import rename_strings, wrapper_text_cleaner
from gradprobe.run.distributed.collect import RankCollector
from gradprobe.run.distributed.session import DistSession, hostname


@dataclass(frozen=True)
class RankCompare:
    rank: int
    findings: tuple[tuple[str, str], ...]  # (code, subject): what this rank's comparison concluded
    failed: tuple[str, ...]  # mode:grad_mode combinations whose forward raised


def compare_rank(s: DistSession, spec: LoadSpec, options: DistOptions, *, modes: Any = None, repeat: int = 5,
                 backward: bool = False, memory_detail: bool = False) -> Any:
    """``gradprobe compare-modes`` on every rank through the wrapper (same inputs everywhere: the wrappers'
    collectives need every rank to run the same forwards); rank 0's report plus where ranks disagree."""
    from gradprobe.api import compare_modes

    spec = dataclasses.replace(spec, per_rank_inputs=False)
    rm = load_rank(s, spec, options)
    w = rm.wrapped
    collector = RankCollector(w, s.rank, hostname(), compare_values=False)
    report = run_with_collector(s, rm, collector, lambda: compare_modes(
        w.model, rm.example, modes=modes, repeat=repeat, backward=backward, seed=spec.seed, target=spec.target,
        loaded=rm.loaded, memory_detail=memory_detail))
    s.checkpoint("ran")
    clean = wrapper_text_cleaner(w.kind)
    report = rename_strings(report, clean)
    mine = RankCompare(s.rank, tuple((f.code, f.subject) for f in report.findings),
                       tuple(f"{r.mode}:{r.grad_mode}" for r in report.rows if not r.ok))
    gathered = s.gather(mine)
    if gathered is None:
        return None
    notes = [f"distributed: {s.world_size} rank(s), wrapper: {w.kind}; the measurements shown are rank 0's"]
    ranks = sorted(gathered, key=lambda r: r.rank)
    for r in ranks[1:]:
        if r.failed != ranks[0].failed:
            notes.append(f"rank {r.rank}: failing combinations differ from rank 0's: "
                         f"{', '.join(r.failed) or 'none'}")
        extra = sorted(set(r.findings) - set(ranks[0].findings))
        missing = sorted(set(ranks[0].findings) - set(r.findings))
        if extra or missing:
            parts = [f"also {', '.join(f'{c} ({s_})' for c, s_ in extra)}" if extra else "",
                     f"not {', '.join(f'{c} ({s_})' for c, s_ in missing)}" if missing else ""]
            notes.append(f"rank {r.rank}'s findings differ from rank 0's: {'; '.join(p for p in parts if p)}")
    if any(f.name == "notes" for f in dataclasses.fields(report)):  # the notes shown under the table
        return replace(report, notes=tuple(notes) + tuple(report.notes))
    return replace(report, comparison=replace(report.comparison, notes=tuple(notes) + report.comparison.notes))
