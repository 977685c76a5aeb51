"""One row of compare-modes: a tracked run for the measurements, then timed plain forwards.

The tracked run goes through :func:`gradprobe.run.probe.run_probe` (flags, graph, saved bytes, forward
peak, buffers; it doubles as the warm-up).  The ``repeat`` timed forwards run with every tracker off, each
from the starting state; the first two outputs are kept to compare rows and to check determinism.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from gradprobe.errors import RunError, describe_exception
from gradprobe.facts.compare import REFERENCE, ModeRow, label
from gradprobe.facts.run import RunFacts
from gradprobe.run.compare.outputs import NOT_COMPARED, OutputDiff, Snapshot, compare_outputs, inexact, snapshot
from gradprobe.run.compare.session import Session
from gradprobe.run.compare.start import syncer
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.probe import ProbeOptions, RunSetup, prepare_runs, run_probe, sum_loss
from gradprobe.run.state import grad_context, refuses_inference_tensors


@dataclass
class OtherRandom:
    """The eval + no_grad output from another RNG state against the reference's (``command._eval_random``),
    taken by the reference row's last timed run instead of one more forward: that run starts from the same
    values with only the generators reseeded, so its time is a sample like any other (issue 16)."""

    seed: int | None
    diff: OutputDiff = NOT_COMPARED
    error: str | None = None  # its forward raised: the run is then repeated from the usual state
    done: bool = False


def run_row(s: Session, mode: str, grad_mode: str, *, repeat: int, backward: bool,
            target: str, memory_detail: bool = False,
            other: OtherRandom | None = None) -> tuple[ModeRow, Snapshot | None]:
    """One row: the tracked run, then the timed repeats; a forward that raises makes a failed row.

    ``memory_detail``: the tracked run also records its memory event log, and the row keeps that run's facts
    (``ModeRow.run``) for the HTML report.  ``other``: the last timed run (the third or later) starts from
    another RNG state and fills it in (:class:`OtherRandom`).
    """
    name = label(mode, grad_mode)
    s.step(f"{name}: tracked run")
    s.reset(buffers=True)  # exactly the state captured once for every tracked run (_run_setup)
    try:
        with s.nested.watch(name), _early(s, (mode, grad_mode)):
            facts, backward_error = _tracked(s, mode, grad_mode, backward, target, memory_detail)
    except RunError as exc:
        _skip(s, repeat, f"{name}: failed")
        return ModeRow(mode, grad_mode, ok=False, error=exc.message, error_phase=exc.phase,
                       error_cause=error_cause(exc)), None
    fields = _row_from_facts(grad_mode, facts)
    if memory_detail:
        fields["run"] = facts
    if s.on_meta:  # no values, no meaningful time
        _skip(s, repeat, f"{name}: meta")
        return ModeRow(mode, grad_mode, ok=True, backward_error=backward_error, **fields), None
    timed = _timed(s, mode, grad_mode, repeat,
                   backward and fields["backward_possible"] and backward_error is None, other)
    if timed.error is not None:
        _skip(s, repeat - len(timed.forward), f"{name}: failed")
        return ModeRow(mode, grad_mode, ok=False, error=timed.error, error_cause=timed.cause,
                       failed_timed_run=timed.failed_run, **fields), None
    repeat_diff = timed.repeat_diff
    return ModeRow(
        mode, grad_mode, ok=True, backward_error=backward_error,
        time_s=statistics.median(timed.forward), times_s=tuple(timed.forward),
        cpu_times_s=tuple(timed.forward_cpu) if s.device.type == "cpu" else (),
        backward_time_s=statistics.median(timed.backward) if timed.backward else None,
        repeat_max_abs_diff=repeat_diff.max_abs_diff, repeat_int_equal=repeat_diff.ints_equal, **fields,
    ), timed.outputs[0]


def _early(s: Session, key: tuple[str, str]) -> contextlib.AbstractContextManager[None]:
    """The eval + no_grad tracked run also records the attribution's first inputs (``EarlyInputs``)."""
    if key == REFERENCE and s.early_inputs is not None:
        return s.early_inputs.recording()
    return contextlib.nullcontext()


def _skip(s: Session, count: int, description: str) -> None:
    for _ in range(count):
        s.step(description)


def error_cause(exc: BaseException) -> str | None:
    """A cause the judges can name: inference tensors used where autograd needs normal ones."""
    return "inference-tensor" if refuses_inference_tensors(exc) else None


def _row_from_facts(grad_mode: str, facts: RunFacts) -> dict[str, Any]:
    floats = [o for o in facts.outputs if inexact(o.dtype)]
    requires_grad = any(o.requires_grad for o in floats)
    memory = facts.memory
    return {
        "output_requires_grad": requires_grad,
        "output_grad_fn": floats[0].grad_fn if floats else None,
        "is_inference": any(o.is_inference for o in facts.outputs),
        "graph_nodes": facts.graph.nodes if facts.graph is not None else 0,
        "saved_for_backward_bytes": memory.saved_for_backward_bytes if memory else None,
        "forward_peak_bytes": memory.forward_peak_bytes if memory else None,
        "buffers_changed": tuple(b.name for b in facts.buffers if b.changed),
        "backward_possible": grad_mode == "grad" and requires_grad,
        "backward_peak_bytes": memory.backward_peak_bytes if memory and facts.backward else None,
    }


def _tracked(s: Session, mode: str, grad_mode: str, backward: bool, target: str,
             memory_detail: bool = False) -> tuple[RunFacts, str | None]:
    """One run with every tracker on; a failing backward is retried without it and reported."""
    options = ProbeOptions(mode=mode, grad_mode=grad_mode, backward=backward, memory=True, tensors=False,
                           graph=True, tree_depth=8 if memory_detail else 1, seed=None, memory_detail=memory_detail,
                           cuts=memory_detail,  # a row reads no cut; the html report shows the run whole
                           row_facts=not memory_detail,  # nor parameter, module or leaf facts
                           module_calls=memory_detail)  # nor the call stack, but to name a failing module
    try:
        return _probe(s, options, target), None
    except RunError as exc:
        if not (backward and exc.phase == "backward"):
            raise
        options.backward = False
        s.reset(buffers=True)
        return _probe(s, options, target), exc.message


def _probe(s: Session, options: ProbeOptions, target: str) -> RunFacts:
    """The tracked run; one whose forward raised without the module call stack runs again from the same state
    with it, so that its error names the module it raised in (``ProbeOptions.module_calls``; on meta the stack is
    kept and the error names it already).  The row fails either way: a forward that raises only sometimes keeps
    its first error, without the module's name."""
    try:
        return run_probe(s.model, s.inputs, options, target, setup=_run_setup(s)).facts
    except RunError as exc:
        if options.module_calls or exc.phase != "forward" or s.on_meta:
            raise
        first = exc
    s.reset(buffers=True)
    try:
        run_probe(s.model, s.inputs, replace(options, module_calls=True), target, setup=_run_setup(s))
    except RunError as again:
        if again.phase == "forward":
            raise again from first
    raise first


def _run_setup(s: Session) -> RunSetup | None:
    """The state every tracked run starts from (after :meth:`Session.reset`) and what the run derives from the
    model in it (:func:`prepare_runs`), taken at the first; None on meta, where each run captures its own (its
    buffer facts read the version counters of its start)."""
    if s.on_meta:
        return None
    if s.run_setup is None:  # the flags train() and eval() set, as the timed runs set them
        s.run_setup = prepare_runs(s.model, s.inputs, {"train": s.start.train_flags, "eval": s.start.eval_flags})
    return s.run_setup


@dataclass
class _Timed:
    """Plain forwards (and backwards) under one combination, every tracker off."""

    forward: list[float] = field(default_factory=list)
    forward_cpu: list[float] = field(default_factory=list)  # process CPU time of the same forwards
    backward: list[float] = field(default_factory=list)
    outputs: list[Snapshot] = field(default_factory=list)  # of the first run
    repeat_diff: OutputDiff = NOT_COMPARED  # the second run's output against the first's
    error: str | None = None
    cause: str | None = None
    failed_run: int | None = None


def _timed(s: Session, mode: str, grad_mode: str, repeat: int, backward: bool,
           other: OtherRandom | None = None) -> _Timed:
    result = _Timed()
    s.start.set_mode(mode)
    i = 0
    compare_error: Exception | None = None  # gradprobe's own failure, never the model's: raised as it is
    try:
        for i in range(repeat):
            if other is not None and i == repeat - 1 and i >= 2 and not backward:
                try:
                    if _one_other(s, grad_mode, result, other):
                        s.step(f"{label(mode, grad_mode)}: timed run {i + 1}/{repeat}")
                        continue
                except _CompareFailed as exc:
                    compare_error = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                    break
            second = _one_timed(s, grad_mode, backward, result, keep=i < 2)
            if second is not None:  # compared at once, uncopied: before the next run's reset can touch it
                try:
                    result.repeat_diff = compare_outputs(result.outputs[0], second)
                except Exception as exc:
                    compare_error = exc
                    break
                del second
            s.step(f"{label(mode, grad_mode)}: timed run {i + 1}/{repeat}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.error = f"timed run {i + 1} raised {describe_exception(exc)}"  # its forward may have been timed
        result.cause, result.failed_run = error_cause(exc), i + 1
    if compare_error is not None:
        raise compare_error
    return result


class _CompareFailed(Exception):
    """gradprobe's own comparison failed (the cause): never the model's failure."""


def _timed_call(s: Session, grad_mode: str, result: _Timed) -> tuple[Any, float]:
    """The model called under ``grad_mode``, its wall-clock and process CPU time appended to ``result``:
    (output, end on the wall clock)."""
    sync = syncer(s.device)
    sync()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with grad_context(grad_mode):
        out = s.call()
    sync()
    t1 = time.perf_counter()
    result.forward_cpu.append(time.process_time() - c0)
    result.forward.append(t1 - t0)
    return out, t1


def _one_other(s: Session, grad_mode: str, result: _Timed, other: OtherRandom) -> bool:
    """One timed run from another RNG state, its output compared at once (uncopied) with the first run's;
    False when its forward raised (noted in ``other``; the caller then runs it again from the usual state)."""
    other.done = True
    timed = len(result.forward)
    try:
        try:
            s.other_random_state(other.seed)
            out, _ = _timed_call(s, grad_mode, result)
            snap = snapshot(out, copy=False)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            other.error = describe_exception(exc)
            del result.forward[timed:], result.forward_cpu[timed:]  # the run is made again from the usual state
            return False
        try:
            other.diff = compare_outputs(snap, result.outputs[0])
        except Exception as exc:
            raise _CompareFailed() from exc
        return True
    finally:
        s.reset()


def _one_timed(s: Session, grad_mode: str, backward: bool, result: _Timed, keep: bool) -> Snapshot | None:
    """One timed run; the first run's output is kept (copied), the second's returned uncopied for the repeat
    check."""
    s.reset()
    out, t1 = _timed_call(s, grad_mode, result)
    sync = syncer(s.device)
    if backward:
        loss = sum_loss(flatten_tensors(out), "sum")  # the engine's default loss, nested/sparse too
        if loss is not None and loss.requires_grad:
            loss.backward()
            sync()
            result.backward.append(time.perf_counter() - t1)
        for p in s.model.parameters():
            p.grad = None
    if keep and result.outputs:
        return snapshot(out, copy=False)
    if keep:
        result.outputs.append(snapshot(out))
    return None
