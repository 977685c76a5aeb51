"""Activation-checkpointing advice: which module calls to wrap in ``torch.utils.checkpoint``, and the gain.

A pure function of the facts (no torch).  The trackers give, per module call, the bytes saved for
backward only inside that call and the exact drop in saved bytes if that one call were checkpointed
(non-reentrant ``torch.utils.checkpoint`` keeps the call's tensor inputs instead of what the call saved).
The advice prefers calls of module types that repeat (transformer blocks, ResNet blocks, stages):
wrapping each of them is how checkpointing is applied in practice.  It never proposes the model
itself (that recomputes the whole forward inside backward) nor two calls nested in each other.
"""

from __future__ import annotations

import re

from gradprobe.facts.run import CheckpointCandidate, CheckpointPlan, ModuleMemory, RunFacts

__all__ = ["ADVICE_TOP", "CheckpointCandidate", "CheckpointPlan", "checkpoint_advice"]

ADVICE_TOP = 10  # module calls in the report's advice: every renderer shows these (--top cuts the table)


def _natural(name: str) -> tuple[object, ...]:
    """``layers.2`` sorts before ``layers.10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _pick(rows: list[ModuleMemory], limit: int | None) -> list[ModuleMemory]:
    """Largest saving first, skipping calls nested in (or around) a call already picked."""
    rows = sorted(rows, key=lambda m: (-(m.checkpoint_saving_bytes or 0), _natural(m.module), m.call))
    chosen: list[ModuleMemory] = []
    for m in rows:
        if limit is not None and len(chosen) >= limit:
            break
        if any(_nested(m.module, c.module) and m.module != c.module for c in chosen):
            continue
        if any(m.module == c.module and m.call == c.call for c in chosen):
            continue
        chosen.append(m)
    return chosen


def checkpoint_advice(facts: RunFacts, top: int = 5) -> tuple[list[CheckpointCandidate], CheckpointPlan | None]:
    """The ``top`` module calls to checkpoint, and the plan of wrapping every call of the best one's type."""
    memory = facts.memory
    if memory is None or not memory.saved_for_backward_bytes:
        return [], None
    types = {m.name: m.type for m in facts.modules}
    calls_per_type: dict[str, int] = {}
    for m in memory.by_module:
        t = types.get(m.module, "?")
        calls_per_type[t] = calls_per_type.get(t, 0) + 1
    floor = max(1, memory.saved_for_backward_bytes // 100)  # under 1% of the saved bytes is not worth a recompute
    useful = [m for m in memory.by_module
              if m.module and m.checkpoint_saving_bytes is not None and m.checkpoint_saving_bytes >= floor]
    repeated = [m for m in useful if calls_per_type.get(types.get(m.module, "?"), 0) >= 2]
    pool = repeated or useful
    chosen = _pick(pool, top)
    candidates = [CheckpointCandidate(m.module, m.call, types.get(m.module, "?"), m.inside_saved_bytes,
                                      m.checkpoint_saving_bytes or 0) for m in chosen]
    if not candidates:
        return [], None
    best_type = candidates[0].module_type
    same = _pick([m for m in pool if types.get(m.module, "?") == best_type], None)
    plan = CheckpointPlan(best_type, len(same), sum(m.checkpoint_saving_bytes or 0 for m in same),
                          memory.saved_for_backward_bytes)
    return candidates, plan
