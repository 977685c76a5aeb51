"""Find every tensor inside a model's output, with a readable path per tensor.

Outputs come as tensors, tuples, lists, dicts, namedtuples, dataclasses or
Hugging Face ``ModelOutput`` objects (which hold cache objects too); the path
(``output.logits``, ``output[1]``, ``output['x']``) is what the report shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

MAX_DEPTH = 32


def _children(value: Any) -> list[tuple[str, Any]] | None:
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
    return None


def _is_model_output(value: Any) -> bool:
    """Hugging Face ``ModelOutput`` (an OrderedDict subclass with attribute access), without importing it."""
    return any(cls.__name__ == "ModelOutput" for cls in type(value).__mro__)


def flatten_tensors(value: Any, root: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``value`` in order, with its path; iterative and cycle-safe."""
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
        children = _children(item)
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
