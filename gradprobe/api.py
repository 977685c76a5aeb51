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

from gradprobe.engine import LossFn, ProbeOptions, run_probe
from gradprobe.errors import InputError, UsageError
from gradprobe.facts import InspectReport
from gradprobe.findings import judge_run
from gradprobe.target import (
    ExampleInputs,
    LoadedModel,
    build_model,
    load_object,
    load_weights,
    make_inputs,
    parse_init,
    resolve_device,
    to_device,
)


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
    if seed is not None:
        torch.manual_seed(seed)
    obj = load_object(target)
    loaded = build_model(obj, target, kwargs, torch_device)
    if weights:
        load_weights(loaded, weights)
    example = make_inputs(loaded.model, spec=inputs, shapes=shapes, dtype=dtype, high=high,
                          device=torch_device, target=target)
    return loaded, example


def as_inputs(inputs: Any, model: nn.Module) -> ExampleInputs:
    """A tensor, tuple/list (positional) or dict (keyword) → ``ExampleInputs``; None uses example_input_array."""
    if isinstance(inputs, ExampleInputs):
        return inputs
    if inputs is None:
        return make_inputs(model, target=type(model).__name__)
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
) -> InspectReport:
    """Run ``model`` once in ``mode``/``grad_mode`` and return facts plus findings; the model is left as found."""
    if depth < 0:
        raise UsageError(f"--depth {depth}: use 0 or more")
    example = as_inputs(inputs, model)
    options = ProbeOptions(mode=mode, grad_mode=grad_mode, loss=loss, backward=backward, memory=memory,
                           tensors=tensors, tree_depth=depth, seed=seed)
    result = run_probe(model, example, options, target or type(model).__name__)
    facts = result.facts
    if loaded is not None:
        facts = replace(facts, notes=tuple(loaded.notes) + facts.notes, missing_keys=loaded.missing_keys,
                        unexpected_keys=loaded.unexpected_keys)
    return InspectReport(facts, tuple(judge_run(facts)))


def resolve_loss(spec: str | None) -> str | LossFn:
    """``sum``/``mean`` stay names; ``module:fn`` is imported."""
    if spec is None or spec in ("sum", "mean"):
        return spec or "sum"
    fn = load_object(spec, "--loss")
    if not callable(fn):
        raise UsageError(f"--loss '{spec}' is a {type(fn).__name__}, not a function(outputs, inputs) -> scalar")
    return fn  # type: ignore[no-any-return]


__all__ = ["load", "probe", "as_inputs", "resolve_loss", "to_device", "user_output_to_stderr"]
