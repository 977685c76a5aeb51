"""The Python API under the CLI: one thin function per command, usable from pytest on a model object.

``load`` (a spec string → model and inputs, as the CLI does), ``probe`` (``inspect``), ``compare_modes``,
``freeze_check`` and ``assert_frozen``.  Each resolves its inputs and loss in the load layer, runs the
engine (``gradprobe.run``) and judges the facts (``gradprobe.judges``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from gradprobe.errors import RunError, UsageError
from gradprobe.facts.compare import CompareReport
from gradprobe.facts.grad_health import GradThresholds
from gradprobe.facts.run import InspectReport
from gradprobe.judges.compare import compare_report
from gradprobe.judges.freeze import FreezeReport, judge
from gradprobe.judges.freeze_spec import FreezeSpec
from gradprobe.judges.inspect import judge_inspect
from gradprobe.load.baseline import resolve_baseline
from gradprobe.load.inputs import ExampleInputs, as_inputs, cpu_fallback, needs_cpu, run_hint, to_device
from gradprobe.load.loss import LossFn, resolve_loss
from gradprobe.load.model import LoadedModel
from gradprobe.load.modes import parse_modes
from gradprobe.load.target import load_target, prepare
from gradprobe.load.user_code import load_object
from gradprobe.run.compare import run_compare
from gradprobe.run.estimate import cast_floating, with_training_step
from gradprobe.run.estimate import check_options as check_estimate_options
from gradprobe.run.freeze import run_freeze
from gradprobe.run.probe import ProbeOptions, param_names, run_probe

__all__ = ["as_inputs", "assert_frozen", "compare_modes", "freeze_check", "load", "probe", "resolve_loss",
           "to_device", "user_output_to_stderr"]

NOTHING_TO_CHECK = ("nothing to check: give --frozen/--trainable GLOB patterns, a [tool.gradprobe.freeze] table in "
                    "pyproject.toml, or --baseline FILE")

T = TypeVar("T")


@contextlib.contextmanager
def user_output_to_stderr() -> Iterator[None]:
    """Whatever the user's code prints goes to stderr, so JSON on stdout stays valid."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def load(
    target: str,
    *,
    init: str | dict[str, Any] | None = None,
    weights: str | None = None,
    device: str | None = None,
    inputs: str | None = None,
    shapes: list[str] | None = None,
    dtype: str = "float32",
    high: int | None = None,
    seed: int | None = 0,
    path: Iterable[str | os.PathLike[str]] = (),
    keep_distributed: bool = False,
) -> tuple[LoadedModel, ExampleInputs]:
    """Import and build ``target`` (a spec or a Hugging Face folder), load weights and make example inputs, as
    the CLI does.  ``high=None`` draws integer inputs below the first nn.Embedding's size; ``path`` adds import
    directories; ``keep_distributed`` keeps a factory's DDP/FSDP1 wrapper (runs under torchrun go through it)."""
    return load_target(target, init=init, weights=weights, device=device, inputs=inputs, shapes=shapes,
                       dtype=dtype, high=high, seed=seed, path=path, keep_distributed=keep_distributed)


def _loss(loss: str | LossFn | None, loaded: LoadedModel | None) -> str | LossFn:
    """``None``: the model's own loss where loading chose one (a Hugging Face head given labels), else ``sum``."""
    if loss is None:
        return loaded.loss if loaded is not None and loaded.loss is not None else "sum"
    return resolve_loss(loss) if isinstance(loss, str) else loss


def _with_hints(model: nn.Module, example: ExampleInputs, run: Callable[[ExampleInputs], T],
                notes: list[str], failed: Callable[[T], str | None] = lambda _: None) -> T:
    """``run(example)``; on meta, once more with integer lengths/indices on the CPU when an op needs them there;
    a failure caused by the inputs gets a one-line hint.  ``failed`` reads a failure out of a result that does
    not raise (compare-modes rows)."""
    try:
        result = run(example)
        error = failed(result)
    except RunError as exc:
        result, error = None, exc  # type: ignore[assignment]
    if error is None:
        return result
    text = _error_text(error)
    retry = cpu_fallback(example) if needs_cpu(text) else None
    if retry is not None:
        kept, names = retry
        try:
            result = run(kept)
        except RunError as exc:  # kept on the CPU, a later op still needs values: that error is the one to show
            raise RunError(f"{exc} (with {', '.join(names)} kept on the CPU, where an earlier op needs it)") from exc
        if failed(result) is None:
            notes.append(f"--device meta: kept {', '.join(names)} on the CPU with its values (an op needs it there)")
            return result
    hint = run_hint(model, example, text)
    if isinstance(error, RunError):
        if hint is None:
            raise error
        raise RunError(f"{error}; {hint}") from error
    if hint is not None:
        notes.append(hint)
    return result


def _error_text(error: BaseException | str) -> str:
    """The error and its causes, for recognising what the inputs did wrong."""
    parts: list[str] = []
    seen: BaseException | None = error if isinstance(error, BaseException) else None
    if seen is None:
        return str(error)
    while seen is not None and len(parts) < 5:
        parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return " | ".join(parts)


def probe(
    model: nn.Module,
    inputs: Any = None,
    *,
    mode: str = "train",
    grad_mode: str = "grad",
    loss: str | LossFn | None = None,
    backward: bool = True,
    memory: bool = True,
    tensors: bool = True,
    depth: int = 8,
    seed: int | None = 0,
    target: str | None = None,
    loaded: LoadedModel | None = None,
    optimizer_state: str = "adam",
    param_dtype: str | None = None,
    grads: bool | GradThresholds = False,
    memory_detail: bool = False,
    judge: bool = True,
) -> InspectReport:
    """Run ``model`` once in ``mode``/``grad_mode`` and return facts plus findings; the model is left as found.

    ``loss`` is ``sum``/``mean``/a function(outputs, inputs)/``module:fn``; None (the default) is ``sum``, or the
    model's own loss for a Hugging Face folder given labels.  ``optimizer_state`` (sgd|momentum|adam) and
    ``param_dtype`` (float32|bfloat16|float16) shape the training-step memory estimate; on the meta device
    ``param_dtype`` casts the run (gradprobe.run.estimate).
    ``grads`` (True, or :class:`~gradprobe.facts.grad_health.GradThresholds`) adds gradient health: per-parameter
    gradient figures, the gradient reaching each module call, where NaN/Inf first appeared (``facts.grad_health``).
    ``memory_detail`` records the memory event log: what is alive at each peak, and the timeline.
    ``judge=False`` returns the facts without findings or advice, for a caller that judges other facts made from
    them (a distributed rank: rank 0 judges the facts merged over every rank).
    """
    if depth < 0:
        raise UsageError(f"--depth {depth}: use 0 or more")
    check_estimate_options(optimizer_state, param_dtype)
    model, example, notes = prepare(model, inputs, loaded)
    options = ProbeOptions(mode=mode, grad_mode=grad_mode, loss=_loss(loss, loaded), backward=backward,
                           memory=memory, tensors=tensors, tree_depth=depth, seed=seed,
                           grads=grad_thresholds(grads), memory_detail=memory_detail and memory)
    cast = param_dtype is not None and any(p.device.type == "meta" for p in model.parameters())
    label = target or type(model).__name__

    def run(given: ExampleInputs) -> Any:
        with cast_floating(model, given.args, given.kwargs, param_dtype) if cast else \
                contextlib.nullcontext((given.args, given.kwargs)) as (args, kwargs):  # type: ignore[arg-type]
            return run_probe(model, ExampleInputs(args, kwargs, given.source, host=given.host), options, label).facts

    facts = _with_hints(model, example, run, notes)
    facts = replace(facts, memory=with_training_step(facts.memory, facts.parameters, optimizer_state, param_dtype,
                                                     cast=cast), notes=tuple(notes) + facts.notes)
    if loaded is not None:
        facts = replace(facts, missing_keys=loaded.missing_keys, unexpected_keys=loaded.unexpected_keys)
    return judge_inspect(facts) if judge else InspectReport(facts)


def grad_thresholds(grads: bool | GradThresholds) -> GradThresholds | None:
    """``probe(grads=...)``: False → off, True → the documented defaults, thresholds as given (checked)."""
    if grads is False or grads is None:
        return None
    found = GradThresholds() if grads is True else grads
    if not isinstance(found, GradThresholds):
        raise UsageError(f"grads={grads!r}: pass True, False or gradprobe.facts.grad_health.GradThresholds(...)")
    if not found.factor > 1:
        raise UsageError(f"--grad-factor {found.factor:g}: use a factor above 1 (e.g. 1000)")
    return found


def compare_modes(
    model: nn.Module,
    inputs: Any = None,
    *,
    modes: Any = None,
    repeat: int = 5,
    backward: bool = False,
    seed: int | None = 0,
    target: str | None = None,
    loaded: LoadedModel | None = None,
    progress: Any = None,
    memory_detail: bool = False,
) -> CompareReport:
    """Run ``model`` under every train/eval x grad-mode combination (or ``modes``, e.g. ``"train:grad,eval:no_grad"``)
    from the same starting state and compare them; findings and verdict included, the model is left as found.

    ``progress``, if given, is called as ``progress(description, done, total)`` after each step.
    ``memory_detail``: each row also keeps its tracked run's facts with the memory event log (``row.run``), for
    the HTML report's timeline per mode and graph; the figures of the rows do not change.
    """
    pairs = parse_modes(modes)
    model, example, notes = prepare(model, inputs, loaded)

    def run(given: ExampleInputs) -> Any:
        return run_compare(model, given, pairs, repeat=repeat, backward=backward, seed=seed,
                           target=target or type(model).__name__, progress=progress, memory_detail=memory_detail)

    def all_failed(comparison: Any) -> str | None:
        rows = comparison.rows
        return rows[0].error if rows and not any(row.ok for row in rows) else None

    comparison = _with_hints(model, example, run, notes, all_failed)
    comparison = replace(comparison, notes=tuple(notes) + comparison.notes,
                         missing_keys=loaded.missing_keys if loaded is not None else (),
                         unexpected_keys=loaded.unexpected_keys if loaded is not None else ())
    return compare_report(comparison)


def freeze_check(
    model: nn.Module,
    inputs: Any = None,
    *,
    frozen: str | Iterable[str] = (),
    trainable: str | Iterable[str] = (),
    optimizer: Any = None,
    unlisted: str = "warn",
    allow_buffer_updates: bool = False,
    baseline: str | os.PathLike[str] | Mapping[str, bool] | None = None,
    write_baseline: str | os.PathLike[str] | None = None,
    loss: str | LossFn | None = None,
    seed: int | None = 0,
    target: str | None = None,
    loaded: LoadedModel | None = None,
    config: str | os.PathLike[str] | None = None,
    memory_detail: bool = False,
) -> FreezeReport:
    """Check that ``model`` is frozen as intended; ``report.passed`` is False when any violation exists.

    ``optimizer`` is an Optimizer, a function(model) returning one, or a ``module:fn`` / ``file.py:fn``
    spec.  ``baseline`` is a ``--write-baseline`` file or a mapping of name → expected requires_grad.
    ``memory_detail`` also records the run's memory (with its event log) and grad_fn graph in
    ``report.facts.run``, for the HTML report's timeline and graph; the verdict does not depend on it.
    The model (and a given optimizer) is left exactly as found.
    """
    model, example, notes = prepare(model, inputs, loaded)
    label = target or type(model).__name__
    names = param_names(model)
    flags = [(names[id(p)], p.requires_grad) for p in {id(p): p for p in model.parameters()}.values()]
    expected, baseline_path = resolve_baseline(baseline, write_baseline, flags, label)
    spec = FreezeSpec.make(frozen, trainable, unlisted=unlisted, allow_buffer_updates=allow_buffer_updates,
                           baseline=expected, baseline_path=baseline_path)
    if spec.empty:
        raise UsageError(NOTHING_TO_CHECK)
    spec.check_patterns([n for ns in names.values() for n in ns],
                        [n for n, _ in model.named_buffers(remove_duplicate=False)])  # aliases too
    opt_label = optimizer if isinstance(optimizer, str) else \
        getattr(optimizer, "__qualname__", type(optimizer).__name__) if optimizer is not None else "optimizer"
    if isinstance(optimizer, str):
        optimizer = load_object(optimizer, "--optimizer")
    loss_fn = _loss(loss, loaded)

    def run(given: ExampleInputs) -> Any:
        return run_freeze(model, given, optimizer=optimizer, optimizer_label=opt_label, loss=loss_fn, seed=seed,
                          target=label, memory_detail=memory_detail)

    try:
        facts = _with_hints(model, example, run, notes)
    except RunError as exc:
        raise RunError(f"the freeze could not be verified: {exc}") from exc
    verdict = judge(spec, facts)
    if not facts.run.backward:
        notes.append(f"no backward: {facts.run.backward_skipped_reason}")
    if facts.optimizer is not None and facts.optimizer.steps_skipped:
        notes.append(f"optimizer steps skipped: {facts.optimizer.steps_skipped}")
    if verdict.ddp_unused:
        notes.append(f"{len(verdict.ddp_unused)} parameter(s) require grad but receive no gradient: "
                     f"DistributedDataParallel would need find_unused_parameters=True")
    notes += verdict.notes
    return FreezeReport(
        target=label, frozen=spec.frozen, trainable=spec.trainable, unlisted=spec.unlisted,
        parameters=verdict.parameters, violations=verdict.violations, warnings=verdict.warnings, facts=facts,
        allow_buffer_updates=allow_buffer_updates, baseline=baseline_path,
        config=str(Path(config)) if config is not None else None, notes=tuple(notes), ddp_unused=verdict.ddp_unused,
    )


def assert_frozen(model: nn.Module, inputs: Any = None, **kwargs: Any) -> FreezeReport:
    """``freeze_check`` for pytest: raise ``AssertionError`` listing every violation; return the report otherwise."""
    report = freeze_check(model, inputs, **kwargs)
    if not report.passed:
        raise AssertionError(report.explain())
    return report

