"""The commands under torchrun: what each rank runs, and the merged report rank 0 gets back.

Every function here runs on every rank inside a ``DistSession`` (gradprobe.run.distributed.session) and
returns the merged result on rank 0 (None elsewhere).  Phases: load (import → process group → build →
``--wrap``) → run (through the wrapper, observed by ``RankCollector``) → [DDP's second iteration] →
gather (``dist.gather_object`` on gradprobe's own gloo group) → rank 0 merges and judges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from gradprobe.errors import GradprobeError, RunError, TargetError, UsageError
from gradprobe.facts.distributed import (
    NO_SHARD,
    DistFacts,
    DistInspectReport,
    RankFacts,
    merge_run_facts,
    rename_run_facts,
    rename_strings,
    wrapper_text_cleaner,
)
from gradprobe.facts.run import InspectReport, ParamFact, RunFacts
from gradprobe.judges.distributed import judge_distributed, names_text, ranks_text
from gradprobe.load.inputs import ExampleInputs, make_inputs
from gradprobe.load.model import LoadedModel, resolve_device
from gradprobe.load.user_code import load_object, search_paths
from gradprobe.run.distributed.collect import RankCollector, param_digests
from gradprobe.run.distributed.env import LaunchEnv
from gradprobe.run.distributed.session import DistSession, hostname, phase
from gradprobe.run.distributed.wrap import explain_fsdp1_error, wrap
from gradprobe.run.distributed.wrappers import Wrapped, describe, kind_of


@dataclass(frozen=True)
class DistOptions:
    """The distributed options every command shares."""

    timeout_s: float = 30.0
    wrap: str | None = None
    shard: tuple[str, ...] = ()
    use_orig_params: bool = False
    debug: bool = False


@dataclass
class LoadSpec:
    """What ``gradprobe.api.load`` takes."""

    target: str
    init: str | dict[str, Any] | None = None
    weights: str | None = None
    device: str | None = None
    inputs: str | None = None
    shapes: list[str] | None = None
    dtype: str = "float32"
    high: int = 2
    seed: int | None = 0
    per_rank_inputs: bool = True  # --shape inputs drawn with seed + rank, as a data-parallel loader would
    path: list[str] = field(default_factory=list)  # import directories (--path, the config's folder)


@dataclass
class RankModel:
    """One rank's loaded (and wrapped) model."""

    wrapped: Wrapped
    example: ExampleInputs
    loaded: LoadedModel
    pre_wrap: list[tuple[str, str]] = field(default_factory=list)
    inputs_per_rank: bool = False


@contextlib.contextmanager
def session(env: LaunchEnv, options: DistOptions) -> Iterator[DistSession]:
    """The rank's session; non-zero ranks ignore Python warnings (rank 0 speaks for all)."""
    import warnings

    with DistSession(env, options.timeout_s, debug=options.debug) as s, warnings.catch_warnings():
        if env.rank != 0:
            warnings.simplefilter("ignore")
        yield s


def rank_device(device: str | None, env: LaunchEnv) -> torch.device:
    """``--device cuda`` means each rank's own GPU (``cuda:LOCAL_RANK``)."""
    torch_device = resolve_device(device)
    if torch_device.type == "meta":
        raise UsageError("--device meta under torchrun: a meta run has no values to exchange between ranks; run "
                         "the meta estimate in one process (without torchrun/--nproc)")
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return torch_device


def load_rank(s: DistSession, spec: LoadSpec, options: DistOptions) -> RankModel:
    """Import, make sure a process group exists, build, make this rank's inputs, wrap."""
    from gradprobe.api import load
    from gradprobe.load.hf import is_hf_folder

    with phase(s, "load"), search_paths(spec.path):
        device = rank_device(spec.device, s.env)
        if not is_hf_folder(spec.target):
            load_object(spec.target)  # the user's module-level code runs first: it may create the process group
        s.ensure_default_group(device)
        kwargs = dict(init=spec.init, weights=spec.weights, device=str(device), inputs=spec.inputs,
                      shapes=spec.shapes, dtype=spec.dtype, high=spec.high, seed=spec.seed, keep_distributed=True)
        try:
            loaded, example = load(spec.target, **kwargs)
        except TargetError as exc:
            if "process group twice" in str(exc) and s.owns_default_group:
                s.release_default_group()  # the factory initialises its own: let it
                loaded, example = load(spec.target, **kwargs)
            else:
                explained = explain_fsdp1_error(exc)
                if explained is not None:
                    raise TargetError(f"building '{spec.target}': {explained}") from exc
                raise
        per_rank = False
        if spec.shapes and not spec.inputs and spec.per_rank_inputs and s.world_size > 1:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((spec.seed or 0) + s.rank)
                example = make_inputs(loaded.model, shapes=spec.shapes, dtype=spec.dtype, high=spec.high,
                                      device=device, target=spec.target)
            per_rank = True
        model = loaded.model
        pre: list[tuple[str, str]] = []
        if options.wrap:
            found = kind_of(model)
            if found != "none":
                raise UsageError(f"--wrap {options.wrap}: the target is already wrapped ({found}); drop --wrap")
            pre = param_digests(model)
            model = wrap(model, options.wrap, options.shard, options.use_orig_params, device)
            loaded.model = model
        elif options.shard or options.use_orig_params:
            raise UsageError("--shard and --use-orig-params apply to --wrap fsdp/fsdp1")
        wrapped = describe(model, "--wrap" if options.wrap else "target")
    s.checkpoint("loaded")
    with phase(s, "setup"):
        s.make_group()
    return RankModel(wrapped, example, loaded, pre, per_rank)


def _dist_facts(s: DistSession, rm: RankModel, gathered: Sequence[RankFacts]) -> DistFacts:
    return DistFacts(
        world_size=s.world_size, backend=s.backend, group_owner="gradprobe" if s.owns_default_group else "target",
        wrapper=rm.wrapped.info, ranks=tuple(sorted(gathered, key=lambda r: r.rank)),
        inputs_per_rank=rm.inputs_per_rank,
    )


def _post_usage(s: DistSession, collector: RankCollector) -> None:
    with contextlib.suppress(Exception):
        s.store.set(f"usage/{s.rank}", json.dumps(collector.usage()))


def _usage_of(s: DistSession, rank: int) -> dict[str, bool]:
    text = s.get_text(f"usage/{rank}")
    if not text:
        return {}
    with contextlib.suppress(Exception):
        return dict(json.loads(text))
    return {}


def usage_cause(s: DistSession) -> str:
    """For a failed run: trainable parameters that got a local gradient on some ranks and not on others."""
    usage = {r: u for r in range(s.world_size) if (u := _usage_of(s, r))}
    if len(usage) < 2:
        return ""
    names = list(dict.fromkeys(n for u in usage.values() for n in u))  # registration order
    differing = []
    for name in names:
        flags = {r: u.get(name) for r, u in usage.items() if name in u}
        if len(set(flags.values())) > 1:
            differing.append((name, [r for r, f in flags.items() if f], [r for r, f in flags.items() if not f]))
    if not differing:
        return ""
    _, used, unused = differing[0]
    same = [name for name, u, n in differing if (u, n) == (used, unused)]
    return (f"cause: {names_text(same)} got a gradient on {ranks_text(used)} but none on {ranks_text(unused)}, so "
            f"the ranks disagree about what to reduce (a data-dependent branch?)")


def _run_with_collector(s: DistSession, rm: RankModel, collector: RankCollector, run: Any) -> Any:
    s.hint_source = lambda: usage_cause(s)
    with phase(s, "run"):
        try:
            with collector:
                return run()
        finally:
            _post_usage(s, collector)


def _second_iteration(s: DistSession, rm: RankModel, collector: RankCollector,
                      did_backward: bool) -> tuple[bool, str | None]:
    """DDP with find_unused_parameters=False and parameters without gradient on every rank: prove the failure."""
    w = rm.wrapped
    if w.kind != "ddp" or w.info.find_unused_parameters or w.info.static_graph:
        return False, None
    if not did_backward:
        return False, None
    # every rank posted its usage before the "ran" checkpoint: all ranks decide alike without a collective
    everyone = [_usage_of(s, r) for r in range(s.world_size)]
    unused = [{n for n, used in u.items() if not used} for u in everyone]
    if not unused[0] or any(u != unused[0] for u in unused):
        return False, None  # nothing unused, or ranks differ (that case hangs instead; reported as such)
    from gradprobe.run.distributed.ddp import second_iteration

    with phase(s, "second iteration"):
        return True, second_iteration(w.model, rm.example.args, rm.example.kwargs)
    return False, None  # pragma: no cover - phase() raises on failure


def _synthesized(facts: RunFacts, dist: DistFacts) -> RunFacts:
    """FSDP1 with use_orig_params=False registers only flat parameters: stand in the original ones."""
    if dist.wrapper.kind != "fsdp1" or dist.wrapper.use_orig_params:
        return facts
    training = {m.name: m.training for m in facts.modules}
    params = []
    for name, ranks in dist.per_param().items():
        p = next(r for r in ranks if r is not None)
        size = max(1, p.local_bytes // max(1, _numel(p.local_shape))) if _numel(p.local_shape) else 4
        module = name.rpartition(".")[0]
        params.append(ParamFact(name=name, aliases=(), shape=p.global_shape, dtype=p.dtype,
                                requires_grad=p.requires_grad, grad=None, grad_norm=None, module=module,
                                module_training=training.get(module, True), numel=_numel(p.global_shape),
                                nbytes=_numel(p.global_shape) * size))
    return replace(facts, parameters=tuple(params),
                   notes=(*facts.notes, "FSDP1 (use_orig_params=False) registers flat parameters only: "
                                        "parameters are shown by their original names, gradients read from each "
                                        "rank's slice of the flat gradient"))


def _rank0_memory(facts: RunFacts, dist: DistFacts) -> Any:
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


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _notes(rm: RankModel, dist: DistFacts) -> tuple[str, ...]:
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


# --------------------------------------------------------------------------- inspect


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
    report: InspectReport = _run_with_collector(
        s, rm, collector, lambda: probe(w.model, rm.example, target=target, loaded=rm.loaded, **probe_kwargs))
    s.checkpoint("ran")
    second = _second_iteration(s, rm, collector, report.facts.backward)
    with phase(s, "facts"):
        facts = rename_run_facts(report.facts, w.names)
        mine = collector.facts(facts, rm.pre_wrap, second)
    gathered = s.gather(mine)
    if gathered is None:
        return None
    with phase(s, "merge"):
        dist = _dist_facts(s, rm, gathered)
        dist = replace(dist, notes=_notes(rm, dist))
        merged = merge_run_facts(_synthesized(facts, dist), dist)
        merged = replace(merged, notes=dist.notes + merged.notes, memory=_rank0_memory(merged, dist))
        cross = tuple(judge_distributed(dist, merged))
        base = judge_inspect(merged)
        merged_report = replace(base, findings=tuple(base.findings) + cross)
        return DistInspectReport(merged_report, dist, cross)
    return None  # pragma: no cover


# --------------------------------------------------------------------------- freeze-check


def _rename_freeze_facts(facts: Any, w: Wrapped) -> Any:
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
                loss: Any = "sum", config: Any = None) -> Any:
    """``gradprobe freeze-check`` on this rank (every rank checks its own freeze); the merged report on rank 0."""
    from pathlib import Path

    from gradprobe.api import NOTHING_TO_CHECK
    from gradprobe.judges.freeze import FreezeReport, judge
    from gradprobe.judges.freeze_spec import FreezeSpec
    from gradprobe.load.baseline import resolve_baseline
    from gradprobe.load.baseline import write_baseline as save_baseline
    from gradprobe.load.loss import resolve_loss
    from gradprobe.run.freeze import run_freeze

    rm = load_rank(s, spec, options)
    w = rm.wrapped
    with phase(s, "check"):
        flags = [([name], info.requires_grad) for name, info in w.shards.items()]
        expected: dict[str, bool] | None = None
        if write_baseline is not None:  # rank 0's flags are the baseline every rank is checked against
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
        opt_label = optimizer if isinstance(optimizer, str) else "optimizer"
        opt = load_object(optimizer, "--optimizer") if isinstance(optimizer, str) else optimizer
    collector = RankCollector(w, s.rank, hostname(), compare_values=False)

    def run() -> Any:
        try:
            return run_freeze(w.model, rm.example, optimizer=opt, optimizer_label=opt_label,
                              loss=resolve_loss(loss) if isinstance(loss, str) else loss, seed=spec.seed,
                              target=spec.target)
        except RunError as exc:
            raise RunError(f"the freeze could not be verified: {exc}") from exc

    facts = _run_with_collector(s, rm, collector, run)
    s.checkpoint("ran")
    with phase(s, "check"):
        facts = _rename_freeze_facts(facts, w)
        verdict = judge(fspec, facts)
        notes = list(rm.loaded.notes)
        if not facts.run.backward:
            notes.append(f"no backward: {facts.run.backward_skipped_reason}")
        if facts.optimizer is not None and facts.optimizer.steps_skipped:
            notes.append(f"optimizer steps skipped: {facts.optimizer.steps_skipped}")
        notes += list(getattr(verdict, "notes", ()))
        report = FreezeReport(
            target=spec.target, frozen=fspec.frozen, trainable=fspec.trainable, unlisted=fspec.unlisted,
            parameters=verdict.parameters, violations=verdict.violations, warnings=verdict.warnings,
            facts=dataclasses.replace(facts, run=dataclasses.replace(facts.run, tensors=(), modules=())),
            allow_buffer_updates=allow_buffer_updates, baseline=baseline,
            config=str(Path(config)) if config is not None else None, notes=tuple(notes),
            ddp_unused=verdict.ddp_unused)
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


def _on_ranks(issue: Any, where: str) -> Any:
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
                issue = _on_ranks(issue, "every rank" if len(on) == world_size else ranks_text(on))
            out.append(issue)
        return tuple(out)

    return replace(base, violations=merged("violations"), warnings=merged("warnings"))


# --------------------------------------------------------------------------- compare-modes


@dataclass(frozen=True)
class RankCompare:
    rank: int
    findings: tuple[tuple[str, str], ...]  # (code, subject): what this rank's comparison concluded
    failed: tuple[str, ...]  # mode:grad_mode combinations whose forward raised


def compare_rank(s: DistSession, spec: LoadSpec, options: DistOptions, *, modes: Any = None, repeat: int = 5,
                 backward: bool = False) -> Any:
    """``gradprobe compare-modes`` on every rank through the wrapper (same inputs everywhere: the wrappers'
    collectives need every rank to run the same forwards); rank 0's report plus where ranks disagree."""
    from gradprobe.api import compare_modes

    spec = dataclasses.replace(spec, per_rank_inputs=False)
    rm = load_rank(s, spec, options)
    w = rm.wrapped
    collector = RankCollector(w, s.rank, hostname(), compare_values=False)
    report = _run_with_collector(s, rm, collector, lambda: compare_modes(
        w.model, rm.example, modes=modes, repeat=repeat, backward=backward, seed=spec.seed, target=spec.target,
        loaded=rm.loaded))
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


def describe_dist_error(exc: BaseException) -> GradprobeError:
    """Any exception as a one-line GradprobeError (for errors outside a phase)."""
    if isinstance(exc, GradprobeError):
        return exc
    first = (str(exc).strip().splitlines() or [""])[0]
    return GradprobeError(f"{type(exc).__name__}: {first}")


__all__ = ["NO_SHARD", "DistOptions", "LoadSpec", "compare_rank", "freeze_rank", "inspect_rank", "session"]
