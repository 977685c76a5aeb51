"""Run one model under several train/eval x grad-mode combinations from one starting state, and compare.

Per combination: one tracked run through :func:`gradprobe.run.probe.run_probe` (flags, graph, saved bytes,
forward peak, buffers; it doubles as the warm-up), then ``repeat`` plain forwards with every tracker off
for the time.  Between runs, buffers, parameters and the RNG go back to the starting state, so a
BatchNorm update or a dropout draw in one run never leaks into the next.  Which modules make train and
eval differ is found by flipping one module's own ``training`` flag at a time (see :func:`_attribute`).

Produces :class:`gradprobe.facts.compare.Comparison`; judges nothing.
"""

from __future__ import annotations

import inspect as pyinspect
import statistics
import time
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, UsageError, describe_exception
from gradprobe.facts.compare import (
    REFERENCE,
    Attribution,
    Comparison,
    GradModeDiff,
    ModeRow,
    ModuleEffect,
    label,
    parse_modes,
)
from gradprobe.facts.run import RunFacts
from gradprobe.load.target import ExampleInputs
from gradprobe.run.flatten import flatten_tensors
from gradprobe.run.probe import ProbeOptions, device_of, run_probe, sum_loss
from gradprobe.run.state import ModelState, clear_grads, grad_context, restore_tensor, table_get

ProgressFn = Callable[[str, int, int], None]  # (description, steps done, steps in total)
Snapshot = list[tuple[str, torch.Tensor]]  # detached copies of a run's output tensors, with their paths


# ---------------------------------------------------------------------------------------- outputs


def _inexact(dtype: str) -> bool:
    """Floating-point (and complex) dtype names as :class:`TensorFact` spells them."""
    return dtype.startswith(("float", "bfloat", "complex"))


def snapshot(output: Any) -> Snapshot:
    """Detached copies of every output tensor: later runs and state restores must not change them.

    Sparse outputs are kept dense and nested ones as their stored elements: the elementwise comparison
    below needs strided tensors (a nested tensor has no single shape, a sparse one no ``&``).
    """
    return [(path, t if t.device.type == "meta" else t.clone()) for path, t in
            ((path, _strided(t.detach())) for path, t in flatten_tensors(output))]


def _strided(t: torch.Tensor) -> torch.Tensor:
    if t.is_nested:
        return t.values()
    if t.layout != torch.strided and t.device.type != "meta":
        return t.to_dense()
    return t


def compare_outputs(a: Snapshot, b: Snapshot) -> tuple[float | None, bool | None, str | None]:
    """``(max |a-b| over floating outputs, integer/bool outputs equal, note)``.

    The diff is ``None`` with a note when the structures, shapes or dtypes differ or values are unknown
    (meta); integer equality is ``None`` when there are no integer/bool outputs.  NaN equals NaN.
    """
    if [p for p, _ in a] != [p for p, _ in b]:
        return None, None, f"the outputs differ in structure ({len(a)} vs {len(b)} tensors)"
    worst: float | None = None
    ints_equal: bool | None = None
    for (path, x), (_, y) in zip(a, b, strict=True):
        if x.device.type == "meta" or y.device.type == "meta":
            return None, None, "values are unknown on the meta device"
        if x.shape != y.shape or x.dtype != y.dtype:
            return None, None, (f"'{path}' is {tuple(x.shape)} {x.dtype} in one run and {tuple(y.shape)} "
                                f"{y.dtype} in the other")
        if x.is_floating_point() or x.is_complex():
            worst = max(worst or 0.0, _max_abs_diff(x, y) if x.numel() else 0.0)
        else:
            same = torch.equal(x, y)
            ints_equal = same if ints_equal is None else ints_equal and same
    return worst, ints_equal, None


def _max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    if not x.is_complex() and x.dtype != torch.float64:
        x, y = x.float(), y.float()
    diff = (x - y).abs()
    both_nan = torch.isnan(x) & torch.isnan(y) if not x.is_complex() else torch.isnan(x.abs()) & torch.isnan(y.abs())
    diff = diff.masked_fill(both_nan, 0.0)
    if bool(torch.isnan(diff).any()):  # NaN on one side only
        return float("inf")
    return float(diff.max())


# ---------------------------------------------------------------------------------- starting state


class StartState:
    """The state every run starts from: buffers, parameter values and the RNG, put back cheaply.

    Only tensors whose version counter moved (or that were replaced) are copied back, so a model whose
    forward changes nothing pays almost nothing per run.  Writes through ``.data`` bypass the version
    counter and are not seen; ``requires_grad``/``.grad``/flags are the job of :class:`ModelState`.
    """

    def __init__(self, model: nn.Module, device: torch.device, seed: int | None) -> None:
        self.device = device
        self.tensors: list[list[Any]] = []  # [container dict, key, tensor, copy, version]
        seen: set[int] = set()
        for mod in model.modules():
            for store in (mod._parameters, mod._buffers):
                for key, t in store.items():
                    if t is None:
                        continue
                    copy = None
                    if id(t) not in seen and t.device.type != "meta":
                        copy = t.detach().clone()
                    seen.add(id(t))
                    self.tensors.append([store, key, t, copy, t._version])
        # model.train()/eval() may be overridden (a frozen backbone kept in eval): ask them once, then set
        # the flags they produce directly, which is cheaper than a recursive train() call per run
        model.train(True)
        self.train_flags = [(m, m.training) for m in model.modules()]
        model.train(False)
        self.eval_flags = [(m, m.training) for m in model.modules()]
        if seed is not None:
            torch.manual_seed(seed)
        self.cpu_rng = torch.random.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def set_mode(self, mode: str) -> None:
        """The training flags ``model.train()`` (mode "train") or ``model.eval()`` set."""
        for mod, flag in self.train_flags if mode == "train" else self.eval_flags:
            object.__setattr__(mod, "training", flag)

    def reset(self) -> None:
        """Back to the starting values and RNG state, before every run."""
        for entry in self.tensors:
            store, key, t, copy, version = entry
            if table_get(store, key) is not t:  # TorchScript's parameter/buffer tables have no .get
                store[key] = t
            if copy is not None and t._version != version:
                restore_tensor(t, copy)
                entry[4] = t._version
        torch.random.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def _syncer(device: torch.device) -> Callable[[], None]:
    """Timing on an asynchronous device must wait for its queue."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


# -------------------------------------------------------------------------------------- one row


def _row_from_facts(mode: str, grad_mode: str, facts: RunFacts) -> dict[str, Any]:
    inexact = [o for o in facts.outputs if _inexact(o.dtype)]
    requires_grad = any(o.requires_grad for o in inexact)
    memory = facts.memory
    return {
        "output_requires_grad": requires_grad,
        "output_grad_fn": inexact[0].grad_fn if inexact else None,
        "is_inference": any(o.is_inference for o in facts.outputs),
        "graph_nodes": facts.graph.nodes if facts.graph is not None else 0,
        "saved_for_backward_bytes": memory.saved_for_backward_bytes if memory else None,
        "forward_peak_bytes": memory.forward_peak_bytes if memory else None,
        "buffers_changed": tuple(b.name for b in facts.buffers if b.changed),
        "backward_possible": grad_mode == "grad" and requires_grad,
        "backward_peak_bytes": memory.backward_peak_bytes if memory and facts.backward else None,
    }


def _tracked(model: nn.Module, inputs: ExampleInputs, mode: str, grad_mode: str, backward: bool,
             target: str) -> tuple[RunFacts, str | None]:
    """One run with every tracker on; a failing backward is retried without it and reported."""
    options = ProbeOptions(mode=mode, grad_mode=grad_mode, backward=backward, memory=True, tensors=False,
                           graph=True, tree_depth=1, seed=None)
    try:
        return run_probe(model, inputs, options, target).facts, None
    except RunError as exc:
        if not (backward and str(exc).startswith("backward raised")):
            raise
        options.backward = False
        return run_probe(model, inputs, options, target).facts, _one_line(exc)


def _one_line(exc: RunError) -> str:
    """The engine's message without its --debug advice: compare-modes reports the error in a row instead."""
    return str(exc).replace(" (run with --debug for the traceback)", "")


class _Timed:
    """Plain forwards (and backwards) under one combination, every tracker off."""

    def __init__(self) -> None:
        self.forward: list[float] = []
        self.backward: list[float] = []
        self.outputs: list[Snapshot] = []  # of the first two runs
        self.error: str | None = None


def _timed(model: nn.Module, inputs: ExampleInputs, mode: str, grad_mode: str, repeat: int, backward: bool,
           start: StartState, step: Callable[[str], None]) -> _Timed:
    sync = _syncer(start.device)
    params = list(model.parameters())
    result = _Timed()
    start.set_mode(mode)
    i = 0
    try:
        for i in range(repeat):
            start.reset()
            sync()
            t0 = time.perf_counter()
            with grad_context(grad_mode):
                out = model(*inputs.args, **inputs.kwargs)
            sync()
            t1 = time.perf_counter()
            result.forward.append(t1 - t0)
            if backward:
                loss = sum_loss(flatten_tensors(out), "sum")  # the engine's default loss, nested/sparse too
                if loss is not None and loss.requires_grad:
                    loss.backward()
                    sync()
                    result.backward.append(time.perf_counter() - t1)
                for p in params:
                    p.grad = None
            if i < 2:
                result.outputs.append(snapshot(out))
            del out
            step(f"{label(mode, grad_mode)}: timed run {i + 1}/{repeat}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.error = f"timed run {i + 1} raised {describe_exception(exc)}"  # its forward may have been timed
    return result


def _run_row(model: nn.Module, inputs: ExampleInputs, mode: str, grad_mode: str, *, repeat: int, backward: bool,
             start: StartState, target: str, step: Callable[[str], None]) -> tuple[ModeRow, Snapshot | None]:
    """One row: the tracked run, then the timed repeats; a forward that raises makes a failed row."""
    step(f"{label(mode, grad_mode)}: tracked run")
    start.reset()
    try:
        facts, backward_error = _tracked(model, inputs, mode, grad_mode, backward, target)
    except RunError as exc:
        for _ in range(repeat):
            step(f"{label(mode, grad_mode)}: failed")
        return ModeRow(mode, grad_mode, ok=False, error=_one_line(exc)), None
    fields = _row_from_facts(mode, grad_mode, facts)
    if start.device.type == "meta":  # no values, no meaningful time
        for _ in range(repeat):
            step(f"{label(mode, grad_mode)}: meta")
        return ModeRow(mode, grad_mode, ok=True, backward_error=backward_error, **fields), None
    timed = _timed(model, inputs, mode, grad_mode, repeat, backward and fields["backward_possible"]
                   and backward_error is None, start, step)
    if timed.error is not None:
        for _ in range(repeat - len(timed.forward)):
            step(f"{label(mode, grad_mode)}: failed")
        return ModeRow(mode, grad_mode, ok=False, error=timed.error, **fields), None
    rep_diff, rep_int, _ = compare_outputs(timed.outputs[0], timed.outputs[1]) if len(timed.outputs) > 1 \
        else (None, None, None)
    return ModeRow(
        mode, grad_mode, ok=True, backward_error=backward_error,
        time_s=statistics.median(timed.forward), times_s=tuple(timed.forward),
        backward_time_s=statistics.median(timed.backward) if timed.backward else None,
        repeat_max_abs_diff=rep_diff, repeat_int_equal=rep_int, **fields,
    ), timed.outputs[0]


def _plain_forward(model: nn.Module, inputs: ExampleInputs, mode: str, grad_mode: str, start: StartState) -> Snapshot:
    start.reset()
    start.set_mode(mode)
    with grad_context(grad_mode):
        return snapshot(model(*inputs.args, **inputs.kwargs))


# --------------------------------------------------------------------------------- attribution


def _code_mentions(code: types.CodeType, name: str) -> bool:
    if name in code.co_names or name in code.co_consts:
        return True
    return any(isinstance(c, types.CodeType) and _code_mentions(c, name) for c in code.co_consts)


_READS_TRAINING: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def reads_training(cls: type) -> bool:
    """Whether any method the class (or a base below ``nn.Module``) defines reads ``training``.

    A cheap static filter for which modules to flip first; a module it misses is still found, because
    the flipped set is checked against the real train output and everything else is flipped if it falls
    short.  Compiled (TorchScript) modules cannot be read and count as reading it.
    """
    known = _READS_TRAINING.get(cls)
    if known is None:
        known = _READS_TRAINING[cls] = _scan_for_training(cls)
    return known


def _scan_for_training(cls: type) -> bool:
    if issubclass(cls, torch.jit.ScriptModule):
        return True
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr in vars(klass).values():
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            try:
                code = getattr(pyinspect.unwrap(attr), "__code__", None) if callable(attr) else None
            except ValueError:  # a __wrapped__ cycle
                continue
            if isinstance(code, types.CodeType) and _code_mentions(code, "training"):
                return True
    return False


def _clone_tree(value: Any) -> Any:
    """Fresh copies of the tensors in captured inputs: a module may change its input in place."""
    return torch.utils._pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, value)


def _capture_inputs(model: nn.Module, inputs: ExampleInputs, modules: Sequence[tuple[str, nn.Module]],
                    start: StartState) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The inputs of each module's first call in one eval-mode, no_grad forward."""
    captured: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in captured:
                captured[name] = _clone_tree((args, kwargs))
        return hook

    try:
        for name, mod in modules:
            handles.append(mod.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        _plain_forward(model, inputs, "eval", "no_grad", start)
    finally:
        for h in handles:
            h.remove()
    return captured


def _flip_one(mod: nn.Module, call: tuple[tuple[Any, ...], dict[str, Any]], train_flag: bool, eval_flag: bool,
              start: StartState) -> tuple[float | None, bool | None, str | None]:
    """The module's own output with its flag at the eval value and at the train value, same inputs and RNG."""
    outs = []
    try:
        for flag in (eval_flag, train_flag):
            start.reset()
            args, kwargs = _clone_tree(call)
            mod.training = flag
            with torch.no_grad():
                outs.append(snapshot(mod(*args, **kwargs)))
    finally:
        mod.training = eval_flag
        start.reset()
    return compare_outputs(outs[0], outs[1])


def _attribute(model: nn.Module, inputs: ExampleInputs, train_out: Snapshot, train_grad_mode: str,
               train_deterministic: bool, start: StartState, names: dict[int, str]) -> Attribution:
    """Name the modules whose output changes when only their own ``training`` flag flips.

    Flags come from ``model.train()``/``model.eval()`` themselves (a model may keep parts in eval).
    Modules whose code reads ``training`` are flipped first; then the model runs in eval with only the
    modules found set to train, which must reproduce the train output exactly.  If it does not, every
    other module is flipped too.
    """
    train_flags = {id(m): flag for m, flag in start.train_flags}
    eval_flags = {id(m): flag for m, flag in start.eval_flags}
    flippable = [(names[id(m)], m) for m in model.modules() if train_flags[id(m)] != eval_flags[id(m)]]
    if not flippable:
        return Attribution(note="model.train() and model.eval() set the same training flags on every module")
    first = [(n, m) for n, m in flippable if reads_training(type(m))]
    rest = [(n, m) for n, m in flippable if not reads_training(type(m))]
    effects: list[ModuleEffect] = []
    tested: list[str] = []
    failures: list[str] = []
    explained: bool | None = None
    for batch in (first, rest):
        if not batch:
            continue
        try:
            calls = _capture_inputs(model, inputs, batch, start)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            failures.append(f"capturing module inputs ({describe_exception(exc)})")
            break
        for name, mod in batch:
            if name not in calls:
                continue  # not called in forward: cannot matter
            tested.append(name)
            try:
                diff, ints_equal, note = _flip_one(mod, calls[name], train_flags[id(mod)], eval_flags[id(mod)], start)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                failures.append(f"'{name}' ({describe_exception(exc)})")
                continue
            if diff or ints_equal is False or note is not None:
                effects.append(ModuleEffect(name, type(mod).__name__, diff, ints_equal))
        del calls
        if not train_deterministic:
            break  # no exact check possible: the train output itself changes from run to run
        try:
            explained = _reproduces(model, inputs, effects, train_flags, train_out, train_grad_mode, start)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            failures.append(f"the check run ({describe_exception(exc)})")
            break
        if explained:
            break
    note = None
    if failures:
        note = f"{len(failures)} step(s) failed: {', '.join(failures[:3])}"
    elif not train_deterministic:
        note = "two train runs from the same seed differ, so the exact check was skipped"
    return Attribution(tuple(effects), tuple(tested), explained, note)


def _reproduces(model: nn.Module, inputs: ExampleInputs, effects: Iterable[ModuleEffect],
                train_flags: dict[int, bool], train_out: Snapshot, grad_mode: str, start: StartState) -> bool:
    """Eval mode with only ``effects`` switched to their train flags gives exactly the train output."""
    by_name = dict(model.named_modules())
    start.reset()
    start.set_mode("eval")
    for e in effects:
        mod = by_name[e.name]
        mod.training = train_flags[id(mod)]
    with grad_context(grad_mode):
        out = snapshot(model(*inputs.args, **inputs.kwargs))
    diff, ints_equal, note = compare_outputs(out, train_out)
    return diff == 0.0 and ints_equal is not False and note is None


# ------------------------------------------------------------------------------------- the command


def run_compare(
    model: nn.Module,
    inputs: ExampleInputs,
    *,
    modes: str | Iterable[str | tuple[str, str]] | None = None,
    repeat: int = 5,
    backward: bool = False,
    seed: int | None = 0,
    target: str = "",
    progress: ProgressFn | None = None,
) -> Comparison:
    """Every requested combination from the same starting state; the model is left exactly as found."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: use 1 or more")
    pairs = parse_modes(modes)
    target = target or type(model).__name__
    device = device_of(model, [t for _, t in flatten_tensors((inputs.args, inputs.kwargs))])
    total = len(pairs) * (1 + repeat) + 3
    done = 0

    def step(description: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(description, min(done, total), total)

    state = ModelState.capture(model)  # the user's model as found: flags, requires_grad, .grad, buffers, RNG
    try:
        clear_grads(model)  # --backward must never accumulate into the user's own .grad tensors (restored below)
        start = StartState(model, device, seed)
        rows: list[ModeRow] = []
        outs: dict[tuple[str, str], Snapshot] = {}
        for mode, grad_mode in pairs:
            row, out = _run_row(model, inputs, mode, grad_mode, repeat=repeat, backward=backward, start=start,
                                target=target, step=step)
            rows.append(row)
            if out is not None:
                outs[(mode, grad_mode)] = out
        step("reference")
        ref_key, ref_out = _reference(model, inputs, pairs, rows, outs, start)
        rows = [_with_diff(r, outs.get((r.mode, r.grad_mode)), ref_out) for r in rows]
        grad_mode_diffs = _grad_mode_diffs(rows, outs)
        step("eval output from another random state")
        eval_random: tuple[float | None, bool | None, str | None] = (None, None, None)
        eval_random_error = None
        if ref_key == REFERENCE and ref_out is not None and device.type != "meta":
            eval_random, eval_random_error = _eval_random(model, inputs, ref_out, seed, start)
        step("which modules depend on training")
        attribution = None
        if ref_key is not None and ref_key[0] == "eval" and device.type != "meta":
            attribution = _maybe_attribute(model, inputs, rows, outs, ref_key, start)
    finally:
        state.restore()
    if progress is not None:
        progress("done", total, total)
    notes: tuple[str, ...] = ("meta device: bytes are estimates; no times, output values or training attribution",) \
        if device.type == "meta" else ()
    if eval_random_error is not None:
        notes += (eval_random_error,)
    return Comparison(
        target=target, torch_version=torch.__version__, device=str(device), seed=seed, repeat=repeat, notes=notes,
        backward=backward, rows=tuple(rows), reference=label(*ref_key) if ref_key else None,
        attribution=attribution, grad_mode_diffs=grad_mode_diffs, eval_random_max_abs_diff=eval_random[0],
        eval_random_int_equal=eval_random[1], eval_random_note=eval_random[2],
    )


def _reference(model: nn.Module, inputs: ExampleInputs, pairs: list[tuple[str, str]], rows: list[ModeRow],
               outs: dict[tuple[str, str], Snapshot], start: StartState) -> tuple[tuple[str, str] | None,
                                                                                 Snapshot | None]:
    """eval+no_grad's output: its row's, or one extra plain forward when the row was not asked for."""
    if REFERENCE in outs:
        return REFERENCE, outs[REFERENCE]
    if REFERENCE not in pairs and start.device.type != "meta":
        try:
            return REFERENCE, _plain_forward(model, inputs, *REFERENCE, start)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            pass
    for r in rows:  # eval+no_grad failed: the first combination that ran
        if (r.mode, r.grad_mode) in outs:
            return (r.mode, r.grad_mode), outs[(r.mode, r.grad_mode)]
    return None, None


def _eval_random(model: nn.Module, inputs: ExampleInputs, ref_out: Snapshot, seed: int | None,
                 start: StartState) -> tuple[tuple[float | None, bool | None, str | None], str | None]:
    """One eval + no_grad forward from another RNG state, against the reference: eval must not sample.

    Every other run starts from the same RNG state, so ``F.dropout(x, training=True)`` or ``torch.rand``
    in forward draws the same numbers in train and eval and hides; a second seed shows it.  Returns
    :func:`compare_outputs`'s triple and, when that forward raised, why (the triple is then all ``None``).
    """
    other = (seed if seed is not None else torch.initial_seed()) + 1
    try:
        start.reset()
        start.set_mode("eval")
        for device in {torch.device("cpu"), start.device}:  # only the generators the run uses; restored after
            gen = torch.Generator(device=device)
            gen.manual_seed(other)
            if device.type == "cpu":
                torch.random.set_rng_state(gen.get_state())
            elif device.type == "cuda":
                torch.cuda.set_rng_state(gen.get_state(), device)
        with grad_context("no_grad"):
            out = snapshot(model(*inputs.args, **inputs.kwargs))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        return (None, None, None), (f"the eval check from another random state (seed {other}) raised "
                                    f"{describe_exception(exc)}")
    finally:
        start.reset()
    return compare_outputs(out, ref_out), None


def _with_diff(row: ModeRow, out: Snapshot | None, ref: Snapshot | None) -> ModeRow:
    if out is None or ref is None:
        return row
    diff, ints_equal, note = compare_outputs(out, ref)
    return replace(row, max_abs_diff=diff, int_outputs_equal=ints_equal, diff_note=note)


def _grad_mode_diffs(rows: list[ModeRow], outs: dict[tuple[str, str], Snapshot]) -> tuple[GradModeDiff, ...]:
    """Within train and within eval, every grad mode's output against no_grad's (or the first that ran)."""
    found = []
    for mode in ("train", "eval"):
        ran = [r for r in rows if r.mode == mode and (r.mode, r.grad_mode) in outs]
        ran.sort(key=lambda r: r.grad_mode != REFERENCE[1])
        for r in ran[1:]:
            diff, ints_equal, note = compare_outputs(outs[(r.mode, r.grad_mode)], outs[(ran[0].mode, ran[0].grad_mode)])
            found.append(GradModeDiff(r.label, ran[0].label, diff, ints_equal, note))
    return tuple(found)


def _maybe_attribute(model: nn.Module, inputs: ExampleInputs, rows: list[ModeRow],
                     outs: dict[tuple[str, str], Snapshot], ref_key: tuple[str, str],
                     start: StartState) -> Attribution | None:
    """Attribute only when a train row's output differs from the eval reference."""
    train = [r for r in rows if r.mode == "train" and (r.mode, r.grad_mode) in outs]
    if not train:
        return None
    train.sort(key=lambda r: r.grad_mode != ref_key[1])  # same grad mode as the reference first
    chosen = train[0]
    if not chosen.differs:
        return None
    names = {id(m): n for n, m in reversed(list(model.named_modules(remove_duplicate=False)))}
    return _attribute(model, inputs, outs[(chosen.mode, chosen.grad_mode)], chosen.grad_mode,
                      not chosen.nondeterministic, start, names)
