"""``compare-modes`` from start to end: rows, the reference, the cross-checks, the attribution."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from gradprobe.errors import UsageError, describe_exception
from gradprobe.facts.compare import REFERENCE, Attribution, Comparison, ModeRow, label
from gradprobe.run.compare.attribution import EarlyInputs, attribute
from gradprobe.run.compare.diffs import Outputs, against_reference, grad_mode_diffs
from gradprobe.run.compare.fastpath import NestedWatch
from gradprobe.run.compare.inputs import KeptInputs
from gradprobe.run.compare.outputs import NOT_COMPARED, OutputDiff, Snapshot, compare_outputs
from gradprobe.run.compare.rows import OtherRandom, run_row
from gradprobe.run.compare.session import CallInputs, Session
from gradprobe.run.compare.start import StartState
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.probe import device_of
from gradprobe.run.state import ModelState, clear_grads

ProgressFn = Callable[[str, int, int], None]  # (description, steps done, steps in total)


def run_compare(
    model: nn.Module,
    inputs: CallInputs,
    pairs: Sequence[tuple[str, str]],
    *,
    repeat: int = 5,
    backward: bool = False,
    seed: int | None = 0,
    target: str = "",
    progress: ProgressFn | None = None,
    memory_detail: bool = False,
) -> Comparison:
    """Every combination in ``pairs`` from the same starting state; the model is left exactly as found.

    ``memory_detail``: each row keeps its tracked run's facts with the memory event log (the HTML timelines).
    """
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: use 1 or more")
    target = target or type(model).__name__
    device = device_of(model, [t for _, t in flatten_tensors((inputs.args, inputs.kwargs))])
    step = _Stepper(progress, len(pairs) * (1 + repeat) + 3)
    state = ModelState.capture(model)  # the user's model as found: flags, requires_grad, .grad, buffers, RNG
    kept = KeptInputs((inputs.args, inputs.kwargs))  # and the inputs as supplied: every run gets them so
    try:
        clear_grads(model)  # --backward must never accumulate into the user's own .grad tensors (restored below)
        s = Session(model, inputs, kept, StartState(model, device, seed), step, NestedWatch.of(model))
        comparison = _compare(s, pairs, repeat=repeat, backward=backward, seed=seed, target=target,
                              memory_detail=memory_detail)
    finally:
        kept.restore()
        state.restore()
    if progress is not None:
        progress("done", step.total, step.total)
    return comparison


class _Stepper:
    """Counts finished steps for the progress callback."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, description: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(description, min(self.done, self.total), self.total)


def _compare(s: Session, pairs: Sequence[tuple[str, str]], *, repeat: int, backward: bool, seed: int | None,
             target: str, memory_detail: bool = False) -> Comparison:
    rows: list[ModeRow] = []
    outs: Outputs = {}
    folded = OtherRandom(seed) if not s.on_meta else None  # the eval output from another random state
    s.early_inputs = EarlyInputs.of(s) if REFERENCE in pairs and not s.on_meta else None
    for mode, grad_mode in pairs:
        row, out = run_row(s, mode, grad_mode, repeat=repeat, backward=backward, target=target,
                           memory_detail=memory_detail, other=folded if (mode, grad_mode) == REFERENCE else None)
        rows.append(row)
        if out is not None:
            outs[(mode, grad_mode)] = out
    s.step("reference")
    ref_key, ref_out = _reference(s, pairs, rows, outs)
    rows = [against_reference(s, r, outs.get((r.mode, r.grad_mode)), ref_key, ref_out) for r in rows]
    s.step("eval output from another random state")
    eval_random, eval_random_error = NOT_COMPARED, None
    if ref_key == REFERENCE and ref_out is not None and not s.on_meta:
        if folded is not None and folded.done and REFERENCE in outs:
            eval_random, eval_random_error = folded.diff, folded.error
        else:
            eval_random, eval_random_error = _eval_random(s, ref_out, seed)
    s.step("which modules depend on training")
    attribution = None
    if ref_key is not None and ref_key[0] == "eval" and not s.on_meta:
        attribution = _maybe_attribute(s, rows, outs, ref_key)
    return Comparison(
        target=target, torch_version=torch.__version__, device=str(s.device), seed=seed, repeat=repeat,
        backward=backward, rows=tuple(rows), reference=label(*ref_key) if ref_key else None,
        attribution=attribution, grad_mode_diffs=grad_mode_diffs(s, rows, outs),
        nested_fast_path=s.nested.fact(ref_out), buffer_owners=_buffer_owners(s.model, rows),
        eval_random_max_abs_diff=eval_random.max_abs_diff, eval_random_int_equal=eval_random.ints_equal,
        eval_random_mismatch=eval_random.mismatch, eval_random_error=eval_random_error,
    )


def _buffer_owners(model: nn.Module, rows: Sequence[ModeRow]) -> tuple[tuple[str, str, bool], ...]:
    """Each changed buffer's owning module: its class name, and whether it is a BatchNorm layer."""
    changed = list(dict.fromkeys(b for r in rows for b in r.buffers_changed))
    if not changed:
        return ()
    modules = dict(model.named_modules(remove_duplicate=False))  # ScriptModules have no get_submodule
    found = []
    for name in changed:
        owner = modules.get(name.rpartition(".")[0])
        if owner is None:
            continue
        kind = type(owner).__name__
        if isinstance(owner, torch.jit.ScriptModule):  # a scripted module keeps its Python class's name only
            kind = getattr(owner, "original_name", kind)
            batchnorm = issubclass(getattr(nn, kind, type(None)), nn.modules.batchnorm._BatchNorm)
        else:
            batchnorm = isinstance(owner, nn.modules.batchnorm._BatchNorm)
        found.append((name, kind, batchnorm))
    return tuple(found)


def _reference(s: Session, pairs: Sequence[tuple[str, str]], rows: list[ModeRow],
               outs: Outputs) -> tuple[tuple[str, str] | None, Snapshot | None]:
    """eval+no_grad's output: its row's, or one extra plain forward when the row was not asked for."""
    if REFERENCE in outs:
        return REFERENCE, outs[REFERENCE]
    if REFERENCE not in pairs and not s.on_meta:
        try:
            with s.nested.watch(label(*REFERENCE)):
                return REFERENCE, s.forward(*REFERENCE)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            pass
    for r in rows:  # eval+no_grad failed: the first combination that ran
        if (r.mode, r.grad_mode) in outs:
            return (r.mode, r.grad_mode), outs[(r.mode, r.grad_mode)]
    return None, None


def _eval_random(s: Session, ref_out: Snapshot, seed: int | None) -> tuple[OutputDiff, str | None]:
    """One eval + no_grad forward from another RNG state, against the reference: eval must not sample.

    Every other run starts from the same RNG state, so ``F.dropout(x, training=True)`` or ``torch.rand``
    in forward draws the same numbers in train and eval and hides; a second seed shows it.  Returns the
    comparison and, when that forward raised, why (the comparison is then empty).
    """
    try:
        try:
            s.other_random_state(seed)
            out = s.forward("eval", "no_grad", reset=False, copy=False)  # compared before the reset below
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return NOT_COMPARED, describe_exception(exc)
        return compare_outputs(out, ref_out), None
    finally:
        s.reset()


def _maybe_attribute(s: Session, rows: list[ModeRow], outs: Outputs, ref_key: tuple[str, str]) -> Attribution | None:
    """Attribute only when a train row's output differs from the eval reference."""
    train = [r for r in rows if r.mode == "train" and (r.mode, r.grad_mode) in outs]
    if not train:
        return None
    train.sort(key=lambda r: r.grad_mode != ref_key[1])  # same grad mode as the reference first
    chosen = train[0]
    if not chosen.differs:
        return None
    return attribute(s, outs[(chosen.mode, chosen.grad_mode)], chosen.grad_mode, not chosen.nondeterministic,
                     fast_path_off=label(*ref_key) in s.nested.rows)
