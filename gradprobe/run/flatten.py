"""Find every tensor inside a model's output, with a readable path per tensor.

Outputs come as tensors, tuples, lists, dicts, namedtuples, dataclasses, Hugging Face ``ModelOutput``
objects (which hold cache objects too) or ``torch.distributions`` objects (their parameters: a
``Normal``'s ``loc`` and ``scale``, a ``Categorical``'s ``logits`` or ``probs``, whichever it holds).
The path (``output.logits``, ``output[1]``, ``output['x']``) is what the report shows.  Other objects
are leaves, unless ``objects=True`` asks for their public attributes too (the engine's fallback when
nothing else holds a tensor).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

MAX_DEPTH = 32


def _children(value: Any, objects: bool = False) -> list[tuple[str, Any]] | None:
    """Path suffixes and children of a container, or None for a leaf."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return [(f".{name}", getattr(value, name)) for name in value._fields]
    if isinstance(value, (tuple, list)):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        attr_style = not isinstance(value, dict) or _is_model_output(value)
        items = []
        for key, item in value.items():
            if attr_style and isinstance(key, str) and key.isidentifier():
                items.append((f".{key}", item))
            else:
                items.append((f"[{key!r}]", item))
        return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    if isinstance(value, torch.distributions.Distribution):
        return _distribution_parameters(value)
    if objects and _plain_object(value):
        return [(f".{k}", v) for k, v in vars(value).items() if not k.startswith("_") and not isinstance(v, nn.Module)]
    return None


def _distribution_parameters(dist: torch.distributions.Distribution) -> list[tuple[str, Any]]:
    """The parameters a distribution holds (never computing one it does not: ``probs`` from ``logits``
    is a lazy property that would add graph nodes), else the distributions it wraps."""
    held = vars(dist)
    names = [name for name in type(dist).arg_constraints if name in held]
    if names:
        return [(f".{name}", held[name]) for name in names]
    return [(f".{k.lstrip('_')}", v) for k, v in held.items()
            if isinstance(v, (torch.Tensor, torch.distributions.Distribution))]


def _plain_object(value: Any) -> bool:
    """An instance of a user class with attributes (not a module, class, function or nn.Module)."""
    return hasattr(value, "__dict__") and not isinstance(
        value, (type, types.ModuleType, types.FunctionType, types.MethodType, nn.Module))


def _is_model_output(value: Any) -> bool:
    """Hugging Face ``ModelOutput`` (an OrderedDict subclass with attribute access), without importing it."""
    return any(cls.__name__ == "ModelOutput" for cls in type(value).__mro__)


def flatten_tensors(value: Any, root: str = "output", *, objects: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``value`` in order, with its path; iterative and cycle-safe.

    ``objects``: look inside the public attributes of plain objects too (see :func:`_children`).
    """
    found: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [(root, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append((path, item))
            continue
        if depth >= MAX_DEPTH or id(item) in seen:
            continue
        children = _children(item, objects)
        if children is None:
            continue
        seen.add(id(item))
        for suffix, child in reversed(children):
            stack.append((path + suffix, child, depth + 1))
    return found


def describe_leaf_types(value: Any) -> str:
    """What a non-tensor output is, for the 'forward returned no tensor' message."""
    if value is None:
        return "None"
    if isinstance(value, (int, float, complex, bool)):
        return f"a Python {type(value).__name__} ({value!r})"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__} holding no tensor"
