"""``gradprobe freeze-check`` under torchrun: every rank checks its own freeze; rank 0 merges the verdicts,
naming the rank(s) each issue was found on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gradprobe.api_distributed.observe import run_with_collector
from gradprobe.api_distributed.rank import DistOptions, LoadSpec, RankModel, load_rank
from gradprobe.errors import RunError, UsageError
from gradprobe.facts.distributed import rename_run_facts
from gradprobe.judges.distributed.text import ranks_text
from gradprobe.load.user_code import load_object
from gradprobe.run.distributed.collect import RankCollector
from gradprobe.run.distributed.session import DistSession, hostname, phase
from gradprobe.run.distributed.wrappers import Wrapped


def rename_freeze_facts(facts: Any, w: Wrapped) -> Any:
    from gradprobe.facts.freeze import FreezeFacts

    names = w.names
    run = rename_run_facts(facts.run, names)
    opt = facts.optimizer
    if opt is not None:
        opt = replace(opt, params=tuple(replace(p, name=names.param(p.name)) for p in opt.params))
    return FreezeFacts(
        run=run, optimizer=opt,
        flags_after={names.param(k): v for k, v in facts.flags_after.items()},
        buffer_aliases={names.buffer(k): tuple(names.buffer(a) for a in v) for k, v in facts.buffer_aliases.items()},
    )


@dataclass(frozen=True)
class RankFreeze:
    """One rank's freeze verdict, sent to rank 0."""

    rank: int
    report: Any  # FreezeReport
    empty_shards: tuple[str, ...] = ()


def freeze_rank(s: DistSession, spec: LoadSpec, options: DistOptions, *, frozen: Sequence[str] = (),
                trainable: Sequence[str] = (), optimizer: Any = None, unlisted: str = "warn",
                allow_buffer_updates: bool = False, baseline: str | None = None, write_baseline: Any = None,
                loss: Any = "sum", config: Any = None, memory_detail: bool = False) -> Any:
    """``gradprobe freeze-check`` on this rank (every rank checks its own freeze); the merged report on rank 0."""
    from gradprobe.load.loss import resolve_loss
    from gradprobe.run.freeze import run_freeze

    rm = load_rank(s, spec, options)
    w = rm.wrapped
    with phase(s, "check"):
        fspec = _freeze_spec(s, spec, w, frozen, trainable, unlisted, allow_buffer_updates, baseline, write_baseline)
        opt_label = optimizer if isinstance(optimizer, str) else "optimizer"
        opt = load_object(optimizer, "--optimizer") if isinstance(optimizer, str) else optimizer
    collector = RankCollector(w, s.rank, hostname(), compare_values=False)

    def run() -> Any:
        try:
            return run_freeze(w.model, rm.example, optimizer=opt, optimizer_label=opt_label,
                              loss=resolve_loss(loss) if isinstance(loss, str) else loss, seed=spec.seed,
                              target=spec.target, memory_detail=memory_detail)
        except RunError as exc:
            raise RunError(f"the freeze could not be verified: {exc}", module=exc.module) from exc

    facts = run_with_collector(s, rm, collector, run)
    s.checkpoint("ran")
    with phase(s, "check"):
        report = _rank_report(spec.target, rm, fspec, rename_freeze_facts(facts, w), config)
        empty = tuple(name for name, info in w.shards.items() if info.empty)
    gathered = s.gather(RankFreeze(s.rank, report, empty))
    if gathered is None:
        return None
    with phase(s, "merge"):
        merged = merge_freeze(sorted(gathered, key=lambda r: r.rank), s.world_size)
        dist_note = (f"distributed: {s.world_size} rank(s), wrapper: {w.kind}"
                     f"{' (--wrap)' if w.info.source == '--wrap' else ''}; every rank checked its own freeze")
        return replace(merged, notes=(dist_note, *merged.notes))
    return None  # pragma: no cover


def _freeze_spec(s: DistSession, spec: LoadSpec, w: Wrapped, frozen: Sequence[str], trainable: Sequence[str],
                 unlisted: str, allow_buffer_updates: bool, baseline: str | None, write_baseline: Any) -> Any:
    """The freeze to check on this rank; with ``--write-baseline`` rank 0's flags are every rank's baseline."""
    from gradprobe.api import NOTHING_TO_CHECK
    from gradprobe.judges.freeze_spec import FreezeSpec
    from gradprobe.load.baseline import resolve_baseline
    from gradprobe.load.baseline import write_baseline as save_baseline

    flags = [([name], info.requires_grad) for name, info in w.shards.items()]
    expected: dict[str, bool] | None = None
    if write_baseline is not None:
        everyone = s.all_gather(flags)
        if s.rank == 0:
            save_baseline(write_baseline, flags, spec.target)
        expected = {names[0]: flag for names, flag in everyone[0]}
        baseline = str(write_baseline)
    elif baseline is not None:
        expected, baseline = resolve_baseline(baseline, None, flags, spec.target)
    fspec = FreezeSpec.make(frozen, trainable, unlisted=unlisted, allow_buffer_updates=allow_buffer_updates,
                            baseline=expected, baseline_path=baseline)
    if fspec.empty:
        raise UsageError(NOTHING_TO_CHECK)
    fspec.check_patterns(list(w.shards), [w.names.buffer(n) for n, _ in w.model.named_buffers()])
    return fspec


def _rank_report(target: str, rm: RankModel, fspec: Any, facts: Any, config: Any) -> Any:
    """This rank's ``FreezeReport``: the judged freeze, with the notes of loading and of the run."""
    from pathlib import Path

    from gradprobe.judges.freeze import FreezeReport, judge

    verdict = judge(fspec, facts)
    notes = list(rm.loaded.notes)
    if not facts.run.backward:
        notes.append(f"no backward: {facts.run.backward_skipped_reason}")
    if facts.optimizer is not None and facts.optimizer.steps_skipped:
        notes.append(f"optimizer steps skipped: {facts.optimizer.steps_skipped}")
    notes += list(getattr(verdict, "notes", ()))
    return FreezeReport(
        target=target, frozen=fspec.frozen, trainable=fspec.trainable, unlisted=fspec.unlisted,
        parameters=verdict.parameters, violations=verdict.violations, warnings=verdict.warnings,
        facts=dataclasses.replace(facts, run=dataclasses.replace(facts.run, tensors=(), modules=())),
        allow_buffer_updates=fspec.allow_buffer_updates, baseline=fspec.baseline_path,
        config=str(Path(config)) if config is not None else None, notes=tuple(notes),
        ddp_unused=verdict.ddp_unused)


def on_ranks(issue: Any, where: str) -> Any:
    """The issue saying where it was found: its cause (what grouped views show) and its message gain '(on ...)'."""
    suffix = f" (on {where})"
    cause = getattr(issue, "cause", "")
    if cause and cause in issue.message:
        return replace(issue, cause=cause + suffix, message=issue.message.replace(cause, cause + suffix, 1))
    changes: dict[str, Any] = {"message": issue.message + suffix}
    if cause:
        changes["cause"] = cause + suffix
    return replace(issue, **changes)


def merge_freeze(ranks: Sequence[RankFreeze], world_size: int) -> Any:
    """Rank 0's report with every rank's violations and warnings, each naming the rank(s) it was found on.

    A gradient finding on a rank that holds an empty shard of the parameter is dropped: no gradient there is by
    design (FSDP), not a broken freeze.
    """
    base = ranks[0].report

    def merged(kind: str) -> tuple[Any, ...]:
        found: dict[tuple[str, str, str, str], tuple[Any, list[int]]] = {}
        for r in ranks:
            for issue in getattr(r.report, kind):
                if issue.check == "gradient" and issue.subject in r.empty_shards:
                    continue
                key = (issue.check, issue.subject, issue.expected, issue.found)
                found.setdefault(key, (issue, []))[1].append(r.rank)
        out = []
        for issue, on in found.values():
            if world_size > 1:
                issue = on_ranks(issue, "every rank" if len(on) == world_size else ranks_text(on))
            out.append(issue)
        return tuple(out)

    return replace(base, violations=merged("violations"), warnings=merged("warnings"))
