"""``gradprobe inspect`` under torchrun: run, gather every rank's facts, and on rank 0 merge and judge them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gradprobe.api_distributed.observe import run_second_iteration, run_with_collector
from gradprobe.api_distributed.rank import DistOptions, LoadSpec, RankModel, load_rank
from gradprobe.facts.distributed import (
    DistFacts,
    DistInspectReport,
    RankFacts,
    merge_run_facts,
    rename_run_facts,
    zero_factors_from_shards,
)
from gradprobe.facts.run import InspectReport, ParamFact, RunFacts
from gradprobe.judges.distributed import judge_distributed
from gradprobe.run.distributed.collect import RankCollector
from gradprobe.run.distributed.session import DistSession, hostname, phase


def dist_facts(s: DistSession, rm: RankModel, gathered: Sequence[RankFacts]) -> DistFacts:
    return DistFacts(
        world_size=s.world_size, backend=s.backend, group_owner="gradprobe" if s.owns_default_group else "target",
        wrapper=rm.wrapped.info, ranks=tuple(sorted(gathered, key=lambda r: r.rank)),
        inputs_per_rank=rm.inputs_per_rank,
    )


def synthesized(facts: RunFacts, dist: DistFacts) -> RunFacts:
    """FSDP1 with use_orig_params=False registers only flat parameters: stand in the original ones."""
    if dist.wrapper.kind != "fsdp1" or dist.wrapper.use_orig_params:
        return facts
    training = {m.name: m.training for m in facts.modules}
    params = []
    for name, ranks in dist.per_param().items():
        p = next(r for r in ranks if r is not None)
        size = max(1, p.local_bytes // max(1, numel(p.local_shape))) if numel(p.local_shape) else 4
        module = name.rpartition(".")[0]
        params.append(ParamFact(name=name, aliases=(), shape=p.global_shape, dtype=p.dtype,
                                requires_grad=p.requires_grad, grad=None, grad_norm=None, module=module,
                                module_training=training.get(module, True), numel=numel(p.global_shape),
                                nbytes=numel(p.global_shape) * size))
    return replace(facts, parameters=tuple(params),
                   notes=(*facts.notes, "FSDP1 (use_orig_params=False) registers flat parameters only: "
                                        "parameters are shown by their original names, gradients read from each "
                                        "rank's slice of the flat gradient"))


def rank0_memory(facts: RunFacts, dist: DistFacts) -> Any:
    """The memory section is rank 0's: parameters and gradients as rank 0 holds them (its shards), not global."""
    m = facts.memory
    mine = dist.ranks[0].memory if dist.ranks else None
    if m is None or mine is None:
        return m
    method = m.method + "; rank 0's figures (every rank in 'Memory by rank')"
    if dist.wrapper.kind in ("fsdp", "fsdp1"):
        method += ("; FSDP's unsharded parameters live in storages it resizes, which this tracker does not see: "
                   "the all-gather buffers are counted, the copies into the unsharded parameters are not")
    return replace(m, parameter_bytes=mine.parameter_bytes, gradient_bytes=mine.gradient_bytes, method=method)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def notes(rm: RankModel, dist: DistFacts) -> tuple[str, ...]:
    w = dist.wrapper
    notes = [f"distributed: {dist.world_size} rank(s), {dist.backend} process group "
             f"({'created by gradprobe' if dist.group_owner == 'gradprobe' else 'created by the target'}), "
             f"wrapper: {w.kind}{' (--wrap)' if w.source == '--wrap' else ''}"]
    if rm.inputs_per_rank:
        notes.append("--shape inputs drawn per rank (seed + rank), as a data-parallel loader gives each rank its "
                     "own batch")
    hosts = {r.host for r in dist.ranks}
    if len(hosts) > 1:
        notes.append(f"hosts: {', '.join(sorted(hosts))}")
    return tuple(notes)


def inspect_rank(s: DistSession, spec: LoadSpec, options: DistOptions, **probe_kwargs: Any) -> DistInspectReport | None:
    """``gradprobe inspect`` on this rank; the merged report on rank 0."""
    return inspect_loaded(s, load_rank(s, spec, options), spec.target, **probe_kwargs)


def inspect_loaded(s: DistSession, rm: RankModel, target: str, **probe_kwargs: Any) -> DistInspectReport | None:
    """The run, the gathering and (on rank 0) the merge and judges of ``inspect``, on a model already loaded."""
    from gradprobe.api import probe
    from gradprobe.judges.inspect import judge_inspect

    w = rm.wrapped
    compare_values = w.kind == "none" or (w.kind == "ddp" and w.info.init_sync is False)
    collector = RankCollector(w, s.rank, hostname(), compare_values=compare_values)
    report: InspectReport = run_with_collector(  # facts only: rank 0 judges the facts merged over every rank
        s, rm, collector,
        lambda: probe(w.model, rm.example, target=target, loaded=rm.loaded, judge=False, **probe_kwargs))
    s.checkpoint("ran")
    second = run_second_iteration(s, rm, collector, report.facts.backward)
    with phase(s, "facts"):
        mine = collector.facts(report.facts, rm.pre_wrap, second)
    gathered = s.gather(mine)
    if gathered is None:
        return None
    with phase(s, "merge"):
        facts = rename_run_facts(report.facts, w.names)  # only rank 0 reports: the others rename nothing
        dist = dist_facts(s, rm, gathered)
        dist = replace(dist, notes=notes(rm, dist))
        merged = zero_factors_from_shards(merge_run_facts(synthesized(facts, dist), dist), dist)
        merged = replace(merged, notes=dist.notes + merged.notes, memory=rank0_memory(merged, dist))
        cross = tuple(judge_distributed(dist, merged))
        base = judge_inspect(merged)
        merged_report = replace(base, findings=tuple(base.findings) + cross)
        return DistInspectReport(merged_report, dist, cross)
    return None  # pragma: no cover
