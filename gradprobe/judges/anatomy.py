"""Peak anatomy: what was alive at each phase's peak, and the levers it shows.  Pure functions of the event log.

The log (:class:`~gradprobe.facts.memory.EventLog`) is replayed: the running sum of its events gives the live
bytes after every event, the largest value in a phase is its peak (the same figure the live-bytes tracker
reports), and the storages created before that event and not yet freed are what was alive.  Each is put in
one category: a storage that ends the run as a ``.grad`` is a gradient, one saved for backward when the
forward ended is saved (by the module call that saved it first), one of the model's outputs is an output,
everything else a temporary.  Parameters, buffers and inputs were held for the whole run; they are listed
beside the peak, not in it.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from gradprobe.facts.memory import (
    COUNTED,
    HELD,
    EventLog,
    KeptTensor,
    LiveTensor,
    ModuleBytes,
    PeakAnatomy,
)
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.checkpoint import checkpoint_advice
from gradprobe.units import human_bytes

CODES = {
    "peak-saved-activations": "saved activations make up most of a peak: activation checkpointing would lower it",
    "kept-after-forward": "a tensor made in the forward outlives it although autograd does not keep it",
    "peak-gradients": "gradients already allocated at the backward peak make up a large part of it",
}

SAVED_SHARE = 0.5  # saved activations at a peak over this share of it: checkpointing is the lever
KEPT_SHARE = 0.05  # a kept tensor above this share of the forward peak is worth a finding
GRAD_SHARE = 0.25  # gradients above this share of the backward peak are worth a finding


@dataclass(frozen=True)
class Replay:
    """The log replayed once: live bytes after every event, and when each storage died."""

    log: EventLog
    live: list[int]  # live bytes after event e
    freed_at: array  # event at which storage s died (its events count if it never died)
    category: dict[int, str]  # storage -> category other than temporaries
    saved_call: dict[int, int]  # saved storage -> call index (-1: none)


def replay(log: EventLog) -> Replay:
    deltas = log.column("event_delta")
    live = list(itertools.accumulate(deltas))
    freed_at = array("I", [log.events]) * log.storages
    for e, (d, s) in enumerate(zip(deltas, log.column("event_storage"), strict=True)):
        if d < 0:
            freed_at[s] = e
    category: dict[int, str] = {s: "outputs" for s in log.outputs}
    saved_call: dict[int, int] = {}
    for s, c in log.saved:
        category[s] = "saved"
        saved_call[s] = c
    for s, _ in log.gradients:
        category[s] = "gradients"
    return Replay(log, live, freed_at, category, saved_call)


def _call_label(log: EventLog, c: int) -> tuple[str | None, int]:
    return log.calls[c] if 0 <= c < len(log.calls) else (None, 0)


def _alive_at(r: Replay, event: int) -> list[int]:
    """Storages alive right after ``event`` (created at or before it, freed after it)."""
    created = r.log.column("storage_event")
    freed = r.freed_at
    return [s for s in range(r.log.storages) if created[s] <= event < freed[s]]


def peak_of(r: Replay, phase: str) -> tuple[int, int] | None:
    """(event, bytes) of the phase's peak; event -1 when the peak is what was alive when the phase began."""
    span = r.log.span(phase)
    if span is None:
        return None
    best_event, best = -1, span.start_bytes
    if span.end_event > span.first_event:
        segment = r.live[span.first_event:span.end_event]
        top = max(segment)
        if top > best:
            best_event, best = span.first_event + segment.index(top), top
    return best_event, best


def _phase_of_op(log: EventLog, op: int) -> str:
    for span in log.phases:
        if span.first_op <= op < span.end_op:
            return span.phase
    return "forward"


def live_tensor(r: Replay, s: int) -> LiveTensor:
    log = r.log
    event = log.column("storage_event")[s]
    op = log.column("event_op")[event]
    module, call = _call_label(log, log.column("op_call")[op])
    category = r.category.get(s, "temporaries")
    saved_by = None
    if category == "saved":
        saved_by = _call_label(log, r.saved_call.get(s, -1))[0]
    return LiveTensor(
        nbytes=log.column("event_delta")[event], shape=log.shapes[log.column("storage_shape")[s]],
        dtype=log.dtypes[log.column("storage_dtype")[s]], category=category, op=log.op_name(op), op_index=op,
        module=module, call=call, phase=_phase_of_op(log, op), saved_by=saved_by,
    )


def peak_anatomy(r: Replay, phase: str, top: int = 10) -> PeakAnatomy | None:
    """What was alive at ``phase``'s peak: bytes by category, saved bytes by module call, the largest tensors."""
    found = peak_of(r, phase)
    if found is None:
        return None
    event, peak = found
    log = r.log
    span = log.span(phase)
    assert span is not None
    at = event if event >= 0 else span.first_event - 1
    alive = _alive_at(r, at) if at >= 0 else []
    sizes = log.column("event_delta")
    created = log.column("storage_event")
    totals = dict.fromkeys(COUNTED, 0)
    by_call: dict[int, int] = {}
    for s in alive:
        nbytes = sizes[created[s]]
        category = r.category.get(s, "temporaries")
        totals[category] += nbytes
        if category == "saved":
            c = r.saved_call.get(s, -1)
            by_call[c] = by_call.get(c, 0) + nbytes
    held = dict(log.held)
    categories = tuple((c, totals[c]) for c in COUNTED) + tuple((h, held.get(h, 0)) for h in HELD)
    saved_by_module = tuple(
        ModuleBytes(*(_call_label(log, c)[0] or "", _call_label(log, c)[1]), nbytes)  # type: ignore[arg-type]
        for c, nbytes in sorted(by_call.items(), key=lambda kv: (-kv[1], kv[0])))
    largest = heapq.nlargest(top, alive, key=lambda s: (sizes[created[s]], -s))
    op = log.column("event_op")[event] if event >= 0 else span.first_op
    module, call = _call_label(log, log.column("op_call")[op]) if 0 <= op < log.ops else (None, 0)
    return PeakAnatomy(
        phase=phase, peak_bytes=peak, event=event, op_index=op, op=log.op_name(op) if event >= 0 else "(start)",
        module=module, call=call, categories=categories, saved_by_module=saved_by_module,
        top=tuple(live_tensor(r, s) for s in largest), live_tensors=len(alive), estimate=log.estimate,
    )


def anatomies(log: EventLog | None, top: int = 10) -> tuple[PeakAnatomy, ...]:
    """The anatomy at the forward peak and at the backward peak (the phases that ran)."""
    if log is None:
        return ()
    r = replay(log)
    found = (peak_anatomy(r, phase, top) for phase in ("forward", "backward"))
    return tuple(a for a in found if a is not None)


def kept_after_forward(log: EventLog, r: Replay | None = None) -> list[KeptTensor]:
    """Storages the forward created that were still alive when it ended, neither saved for backward nor an
    output: something other than autograd keeps them (a Python list or attribute, a hook, a ``ctx.x = t``).
    Storages resized to zero bytes by then (``log.emptied``: FSDP2's all-gather outputs) hold nothing."""
    span = log.span("forward")
    if span is None or span.end_event == 0:
        return []
    r = r or replay(log)
    end = span.end_event - 1
    emptied = set(log.emptied)
    kept = [s for s in _alive_at(r, end) if s not in r.category and s not in emptied]
    tensors = [live_tensor(r, s) for s in kept]
    return [KeptTensor(t.nbytes, t.shape, t.dtype, t.op, t.op_index, t.module, t.call)
            for t in sorted(tensors, key=lambda t: -t.nbytes)]


def _where(module: str | None, call: int) -> str:
    if module is None:
        return "outside every module call"
    name = module or "the model itself"
    return f"{name} (call {call})" if call else name


def _plan_text(facts: RunFacts) -> str | None:
    """The checkpoint advice (:mod:`gradprobe.judges.checkpoint`) in words, for the saved-activations finding."""
    _, plan = checkpoint_advice(facts, top=5)
    if plan is None:
        return None
    return (f"wrap every {plan.module_type} call ({plan.calls}) in torch.utils.checkpoint(use_reentrant=False): "
            f"about {human_bytes(plan.expected_saving_bytes)} less saved for backward")


def anatomy_findings(facts: RunFacts) -> list[Finding]:
    """Levers the anatomy shows: checkpointing, a tensor kept past the forward, gradients at the peak."""
    memory = facts.memory
    log = memory.events if memory is not None else None
    if log is None:
        return []
    r = replay(log)
    found: list[Finding] = []
    plan_text = _plan_text(facts)
    estimate = " (estimated on the meta device)" if log.estimate else ""
    peaks = [a for a in (peak_anatomy(r, phase, top=1) for phase in ("forward", "backward"))
             if a is not None and a.peak_bytes > 0]
    # one finding, at the peak where saved activations weigh most (both peaks hold the same saved tensors)
    dominated = [a for a in peaks if a.category("saved") > SAVED_SHARE * a.peak_bytes and a.saved_by_module]
    if dominated:
        a = max(dominated, key=lambda x: (x.category("saved"), x.phase == "forward"))
        saved, phase = a.category("saved"), a.phase
        first = a.saved_by_module[0]
        hint = plan_text or "wrap the largest module calls in torch.utils.checkpoint (use_reentrant=False)"
        found.append(Finding(
            "peak-saved-activations", "info", first.module or "(model)",
            f"at the {phase} peak ({human_bytes(a.peak_bytes)}{estimate}) {saved / a.peak_bytes:.0%} is "
            f"activations saved for backward ({human_bytes(saved)}); the largest share was saved in "
            f"{_where(first.module, first.call)} ({human_bytes(first.nbytes)})",
            hint + " (see the activation checkpointing advice)",
        ))
    forward = next((a for a in peaks if a.phase == "forward"), None)
    if forward is not None:
        kept = [k for k in kept_after_forward(log, r) if k.nbytes >= KEPT_SHARE * forward.peak_bytes]
        if kept:
            k = kept[0]
            total = sum(x.nbytes for x in kept)
            found.append(Finding(
                "kept-after-forward", "warning", k.module or "(model)",
                f"{len(kept)} tensor(s) made in the forward ({human_bytes(total)}) were still alive when it ended "
                f"although autograd does not keep them (not saved for backward, not an output): the largest, "
                f"{_shape(k.shape)} {k.dtype} ({human_bytes(k.nbytes)}), made by {k.op} in "
                f"{_where(k.module, k.call)}; something else holds it: a Python list or attribute, a hook, or a "
                f"custom Function's ctx attribute",
                "keep .detach()ed copies only when needed, drop references after use, and save tensors for "
                "backward with ctx.save_for_backward",
            ))
    backward = next((a for a in peaks if a.phase == "backward"), None)
    if backward is not None and log.gradients:
        grads = backward.category("gradients")
        if grads >= GRAD_SHARE * backward.peak_bytes:
            count = sum(1 for _ in log.gradients)
            found.append(Finding(
                "peak-gradients", "info", "(gradients)",
                f"at the backward peak ({human_bytes(backward.peak_bytes)}{estimate}) {human_bytes(grads)} "
                f"({grads / backward.peak_bytes:.0%}) is gradients already allocated ({count} gradient tensors "
                f"exist by the end of the backward)",
                "zero_grad(set_to_none=True) (the default) keeps gradients unallocated until backward makes "
                "them; an optimizer step per parameter inside backward (register_post_accumulate_grad_hook) "
                "frees each gradient as soon as it is used",
            ))
    return found


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"
