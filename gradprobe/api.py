"""The Python API under the CLI: load a target, probe it, judge the facts.

Usable from pytest on a model object (``probe(model, inputs)``) or from a
spec string as the CLI does (``load(...)`` then ``probe(...)``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from gradprobe.errors import InputError, UsageError
from gradprobe.facts.grad_health import GradThresholds
from gradprobe.facts.run import InspectReport
from gradprobe.judges.inspect import judge_inspect
from gradprobe.load.target import (
    ExampleInputs,
    LoadedModel,
    build_model,
    load_object,
    load_weights,
    make_inputs,
    parse_init,
    resolve_device,
    to_device,
    unwrap_model,
)
from gradprobe.run.estimate import cast_floating, with_training_step
from gradprobe.run.estimate import check_options as check_estimate_options
from gradprobe.run.probe import LossFn, ProbeOptions, run_probe


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
    high: int = 2,
    seed: int | None = 0,
) -> tuple[LoadedModel, ExampleInputs]:
    """Import and build ``target``, load weights, and make example inputs, as the CLI does."""
    torch_device = resolve_device(device)
    kwargs = init if isinstance(init, dict) else parse_init(init)
    # seeded for a reproducible build and inputs, on a forked RNG so the caller's random state is untouched
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        obj = load_object(target)
        loaded = build_model(obj, target, kwargs, torch_device)
        if weights:
            load_weights(loaded, weights)
        example = make_inputs(loaded.model, spec=inputs, shapes=shapes, dtype=dtype, high=high,
                              device=torch_device, target=target)
    if inputs and shapes:
        loaded.notes.append("--shape ignored: --inputs takes precedence")
    return loaded, example


def as_inputs(inputs: Any, model: nn.Module) -> ExampleInputs:
    """A tensor, tuple/list (positional) or dict (keyword) → ``ExampleInputs``; None uses example_input_array."""
    if isinstance(inputs, ExampleInputs):
        return inputs
    if inputs is None:  # on the model's device: a model built on meta has meta example inputs
        device = next((p.device for p in model.parameters()), None)
        return make_inputs(model, target=type(model).__name__, device=device)
    if isinstance(inputs, torch.Tensor):
        return ExampleInputs((inputs,), {}, "inputs")
    if isinstance(inputs, (tuple, list)):
        return ExampleInputs(tuple(inputs), {}, "inputs")
    if isinstance(inputs, dict):
        return ExampleInputs((), dict(inputs), "inputs")
    raise InputError(f"inputs of type {type(inputs).__name__}: pass a tensor, a tuple/list or a dict")


def probe(
    model: nn.Module,
    inputs: Any = None,
    *,
    mode: str = "train",
    grad_mode: str = "grad",
    loss: str | LossFn = "sum",
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
) -> InspectReport:
    """Run ``model`` once in ``mode``/``grad_mode`` and return facts plus findings; the model is left as found.

    ``optimizer_state`` (sgd|momentum|adam) and ``param_dtype`` (float32|bfloat16|float16) shape the
    training-step memory estimate; on the meta device ``param_dtype`` casts the run (gradprobe.run.estimate).
    ``grads`` (True, or :class:`~gradprobe.facts.grad_health.GradThresholds`) adds gradient health: per-parameter
    gradient figures, the gradient reaching each module call, where NaN/Inf first appeared (``facts.grad_health``).
    ``memory_detail`` records the memory event log: what is alive at each peak, and the timeline.
    """
    if depth < 0:
        raise UsageError(f"--depth {depth}: use 0 or more")
    check_estimate_options(optimizer_state, param_dtype)
    notes: list[str] = []
    if loaded is None:  # a model object from Python: see through torch.compile/DataParallel as the CLI does
        model = unwrap_model(model, notes)
    example = as_inputs(inputs, model)
    options = ProbeOptions(mode=mode, grad_mode=grad_mode, loss=loss, backward=backward, memory=memory,
                           tensors=tensors, tree_depth=depth, seed=seed,
                           grads=grad_thresholds(grads), memory_detail=memory_detail and memory)
    cast = param_dtype is not None and any(p.device.type == "meta" for p in model.parameters())
    with cast_floating(model, example.args, example.kwargs, param_dtype) if cast else \
            contextlib.nullcontext((example.args, example.kwargs)) as (args, kwargs):  # type: ignore[arg-type]
        run_inputs = ExampleInputs(args, kwargs, example.source)
        result = run_probe(model, run_inputs, options, target or type(model).__name__)
    facts = result.facts
    facts = replace(facts, memory=with_training_step(facts.memory, facts.parameters, optimizer_state, param_dtype,
                                                     cast=cast))
    if loaded is not None:
        facts = replace(facts, notes=tuple(loaded.notes) + facts.notes, missing_keys=loaded.missing_keys,
                        unexpected_keys=loaded.unexpected_keys)
    elif notes:
        facts = replace(facts, notes=tuple(notes) + facts.notes)
    return judge_inspect(facts)


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


def resolve_loss(spec: str | None) -> str | LossFn:
    """``sum``/``mean`` stay names; ``module:fn`` is imported."""
    if spec is None or spec in ("sum", "mean"):
        return spec or "sum"
    fn = load_object(spec, "--loss")
    if not callable(fn):
        raise UsageError(f"--loss '{spec}' is a {type(fn).__name__}, not a function(outputs, inputs) -> scalar")
    return fn  # type: ignore[no-any-return]


__all__ = ["as_inputs", "load", "probe", "resolve_loss", "to_device", "user_output_to_stderr"]

# freeze-check (issue 4): implemented in gradprobe/api_freeze.py, part of the public API here.
from gradprobe.api_freeze import assert_frozen, freeze_check  # noqa: E402

__all__ += ["assert_frozen", "freeze_check"]

# compare-modes (issue 3): implemented in gradprobe/run/compare/ (torch side) and gradprobe/judges/compare.py.
from gradprobe.facts.compare import CompareReport  # noqa: E402


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
) -> CompareReport:
    """Run ``model`` under every train/eval x grad-mode combination (or ``modes``, e.g. ``"train:grad,eval:no_grad"``)
    from the same starting state and compare them; findings and verdict included, the model is left as found.

    ``progress``, if given, is called as ``progress(description, done, total)`` after each step.
    """
    from gradprobe.judges.compare import compare_report
    from gradprobe.load.modes import parse_modes
    from gradprobe.run.compare import run_compare

    pairs = parse_modes(modes)
    notes: list[str] = list(loaded.notes) if loaded is not None else []
    if loaded is None:  # a model object from Python: see through torch.compile/DataParallel as probe() does
        model = unwrap_model(model, notes)
    example = as_inputs(inputs, model)
    comparison = run_compare(model, example, pairs, repeat=repeat, backward=backward, seed=seed,
                             target=target or type(model).__name__, progress=progress)
    comparison = replace(comparison, notes=tuple(notes) + comparison.notes,
                         missing_keys=loaded.missing_keys if loaded is not None else (),
                         unexpected_keys=loaded.unexpected_keys if loaded is not None else ())
    return compare_report(comparison)


__all__ += ["compare_modes"]
