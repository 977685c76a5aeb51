"""A target → a built model and its example inputs: the one place the steps of loading are put together.

``package.module:Name`` / ``file.py:Name`` (imported by :mod:`gradprobe.load.user_code`, built by
:mod:`gradprobe.load.model`) or a Hugging Face folder (:mod:`gradprobe.load.hf`); then ``--weights``
(:mod:`gradprobe.load.weights`) and the inputs (:mod:`gradprobe.load.inputs`).  Also what every API command
shares: a model object from Python seen through its wrappers, and the user's inputs as ``ExampleInputs``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradprobe.errors import UsageError
from gradprobe.load.hf import build_hf_folder, hf_inputs, is_hf_folder
from gradprobe.load.inputs import ExampleInputs, as_inputs, make_inputs
from gradprobe.load.loss import model_loss
from gradprobe.load.model import LoadedModel, build_model, parse_init, resolve_device, unwrap_model
from gradprobe.load.user_code import load_object, search_paths
from gradprobe.load.weights import load_weights


def load_target(
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
    """Import and build ``target``, load weights, and make example inputs, as the CLI does.

    ``keep_distributed``: a factory's DDP/FSDP1 wrapper is kept (runs under torchrun go through it).
    """
    torch_device = resolve_device(device)
    kwargs = init if isinstance(init, dict) else parse_init(init)
    # seeded for a reproducible build and inputs, on a forked RNG so the caller's random state is untouched
    with search_paths(path), torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if is_hf_folder(target):
            loaded = build_hf_folder(target, kwargs, torch_device)
        else:
            _refuse_plain_folder(target)
            loaded = build_model(load_object(target), target, kwargs, torch_device, keep_distributed)
        if weights:
            load_weights(loaded, weights)
        if is_hf_folder(target) and not inputs:
            example = hf_inputs(loaded.model, target, shapes, torch_device)
            if "labels" in example.kwargs:
                loaded.loss = model_loss
        else:
            example = make_inputs(loaded.model, spec=inputs, shapes=shapes, dtype=dtype, high=high,
                                  device=torch_device, target=target)
    loaded.notes.extend(example.notes)
    if inputs and shapes:
        loaded.notes.append("--shape ignored: --inputs takes precedence")
    return loaded, example


def _refuse_plain_folder(target: str) -> None:
    if ":" not in target and Path(target).expanduser().is_dir():
        raise UsageError(f"TARGET '{target}' is a folder without config.json; name a Hugging Face model folder "
                         f"(with config.json), or a model as 'package.module:Name' or 'path/to/file.py:Name'")


def prepare(model: nn.Module, inputs: Any, loaded: LoadedModel | None) -> tuple[nn.Module, ExampleInputs, list[str]]:
    """What every command does first: the notes loading made, a model object from Python seen through
    torch.compile/DataParallel as the CLI sees it, and the inputs as ``ExampleInputs``."""
    notes: list[str] = list(loaded.notes) if loaded is not None else []
    if loaded is None:
        model = unwrap_model(model, notes)
    return model, as_inputs(inputs, model), notes
