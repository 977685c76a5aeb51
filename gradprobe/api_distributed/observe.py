"""The run on every rank under the ``RankCollector``: which parameters got a local gradient where (posted to
the store, so a failed run can name the cause), and the DDP second iteration that proves unused parameters."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

from gradprobe.api_distributed.rank import RankModel
from gradprobe.errors import GradprobeError, RunError
from gradprobe.facts.distributed import NameMap
from gradprobe.judges.distributed.text import names_text, ranks_text
from gradprobe.run.distributed.collect import RankCollector
from gradprobe.run.distributed.session import DistSession, phase
from gradprobe.run.probe import module_phrase


def post_usage(s: DistSession, collector: RankCollector) -> None:
    with contextlib.suppress(Exception):
        s.store.set(f"usage/{s.rank}", json.dumps(collector.usage()))


def usage_of(s: DistSession, rank: int) -> dict[str, bool]:
    text = s.get_text(f"usage/{rank}")
    if not text:
        return {}
    with contextlib.suppress(Exception):
        return dict(json.loads(text))
    return {}


def usage_cause(s: DistSession) -> str:
    """For a failed run: trainable parameters that got a local gradient on some ranks and not on others."""
    usage = {r: u for r in range(s.world_size) if (u := usage_of(s, r))}
    if len(usage) < 2:
        return ""
    found = first_disagreement(usage)
    if found is None:
        return ""
    same, used, unused = found
    return (f"cause: {names_text(same)} got a gradient on {ranks_text(used)} but none on {ranks_text(unused)}, so "
            f"the ranks disagree about what to reduce (a data-dependent branch?)")


def first_disagreement(usage: dict[int, dict[str, bool]]) -> tuple[list[str], list[int], list[int]] | None:
    """The parameters (registration order) that got a gradient on some ranks and not on others, grouped with the
    first such parameter's split: (names, ranks with a gradient, ranks without); None when the ranks agree."""
    names = list(dict.fromkeys(n for u in usage.values() for n in u))  # registration order
    differing = []
    for name in names:
        flags = {r: u.get(name) for r, u in usage.items() if name in u}
        if len(set(flags.values())) > 1:
            differing.append((name, [r for r, f in flags.items() if f], [r for r, f in flags.items() if not f]))
    if not differing:
        return None
    _, used, unused = differing[0]
    return [name for name, u, n in differing if (u, n) == (used, unused)], used, unused


def agree_before_reduce(s: DistSession, unit: str, held: dict[str, bool], count: dict[str, int]) -> None:
    """FSDP2 reduce-scatters only the gradients a rank holds, so ranks that disagree about which parameters of a
    unit got one send reduce-scatters of different sizes: gloo aborts a process in C++ (no report), NCCL can hang
    or mix data. Before each unit's reduce-scatter the ranks compare, through the store (no collective, bounded
    by --dist-timeout), and stop there with the parameters named."""
    n = count[unit] = count.get(unit, 0) + 1
    key = f"held/{unit or '(root)'}/{n}"
    try:
        s.store.set(f"{key}/{s.rank}", json.dumps(held))
        s.store.wait([f"{key}/{r}" for r in range(s.world_size)], timedelta(seconds=s.timeout_s))
    except Exception:  # a rank that never reaches this unit's reduce-scatter: the run's own timeout names it
        return
    found = first_disagreement({r: dict(json.loads(s.get_text(f"{key}/{r}") or "{}")) for r in range(s.world_size)})
    if found is None:
        return
    same, used, unused = found
    raise RunError(f"{names_text(same)} got a gradient on {ranks_text(used)} but none on {ranks_text(unused)} "
                   f"(a data-dependent branch?): FSDP2 reduce-scatters only the gradients each rank holds, so "
                   f"the ranks' reduce-scatters of unit '{unit or '(root)'}' would differ in size (gloo aborts a "
                   f"process, NCCL can hang); gradprobe stopped every rank before it")


def run_with_collector(s: DistSession, rm: RankModel, collector: RankCollector, run: Any) -> Any:
    s.hint_source = lambda: usage_cause(s)
    if rm.wrapped.kind == "fsdp" and s.world_size > 1:
        count: dict[str, int] = {}
        collector.before_reduce = lambda unit, held: agree_before_reduce(s, unit, held, count)
    with phase(s, "run"):
        try:
            with collector:
                return run()
        except GradprobeError as exc:
            raise users_names(exc, rm.wrapped.names) from exc
        finally:
            post_usage(s, collector)


def users_names(exc: GradprobeError, names: NameMap) -> GradprobeError:
    """``exc`` naming the module a forward raised in as the user's model does: the run called the wrapper, whose
    names carry ``module.`` (DDP) or ``_fsdp_wrapped_module.`` (FSDP1) and whose classes are ``FSDPNet`` (FSDP2)."""
    if exc.module is None:
        return exc
    name, kind = exc.module
    mine = names.module(name)
    if mine is None:  # the wrapper's own module (DDP, an FSDP1 wrapper): no user's name to give
        return exc
    mine_kind = names.types.get(name, kind)
    before, after = module_phrase(name, kind), module_phrase(mine, mine_kind)
    if before == after or before not in exc.message:
        return exc
    return type(exc)(exc.message.replace(before, after, 1), phase=exc.phase, debug_hint=exc.debug_hint,
                     module=(mine, mine_kind))


def run_second_iteration(s: DistSession, rm: RankModel, collector: RankCollector,
                      did_backward: bool) -> tuple[bool, str | None]:
    """DDP with find_unused_parameters=False and parameters without gradient on every rank: prove the failure."""
    w = rm.wrapped
    if w.kind != "ddp" or w.info.find_unused_parameters or w.info.static_graph:
        return False, None
    if not did_backward:
        return False, None
    # every rank posted its usage before the "ran" checkpoint: all ranks decide alike without a collective
    everyone = [usage_of(s, r) for r in range(s.world_size)]
    unused = [{n for n, used in u.items() if not used} for u in everyone]
    if not unused[0] or any(u != unused[0] for u in unused):
        return False, None  # nothing unused, or ranks differ (that case hangs instead; reported as such)
    from gradprobe.run.distributed.ddp import second_iteration

    with phase(s, "second iteration"):
        return True, second_iteration(w.model, rm.example.args, rm.example.kwargs)
    return False, None  # pragma: no cover - phase() raises on failure
