"""Inputs exactly as the user supplied them, for every run, and identity-preserving copies of module inputs.

A forward may change its inputs in place (``x += 1``), pop keys from an input dict or append to a cache
it was handed.  :class:`KeptInputs` remembers the user's inputs once and puts them back before every run
(values through the version counter, container contents by identity), so every mode and repeat sees
what the user passed and the user's own objects are left as found.  :func:`copy_call` copies what a
module received without breaking aliasing: ``attn(x, x, x)`` must replay with ``query is key is value``
(``nn.MultiheadAttention`` picks its fast path on that), and a cache object the model mutates later is
copied as it was at the call.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradprobe.errors import RunError, describe_exception
from gradprobe.run.state import restore_tensor


class _KeptTensor:
    """One input tensor: its value, version and gradient at the start."""

    def __init__(self, t: torch.Tensor) -> None:
        self.tensor = t
        self.grad = t.grad if t.is_leaf else None
        self.requires_grad = t.requires_grad
        self.inference = t.is_inference()
        self.version = None if self.inference else t._version
        self.copy = None if t.device.type == "meta" else _clone(t)

    def reset(self) -> None:
        t = self.tensor
        if self.copy is not None and (self.inference or t._version != self.version):
            try:
                restore_tensor(t, self.copy)
            except (RuntimeError, NotImplementedError) as exc:
                raise RunError(f"the forward changed an input tensor in place ({tuple(t.shape)}, {t.layout}) and "
                               f"gradprobe cannot copy its values back ({describe_exception(exc)}); pass inputs "
                               f"the forward leaves unchanged, or clone them inside forward") from exc
            self.version = None if self.inference else t._version
        if t.is_leaf:
            if t.requires_grad != self.requires_grad:
                t.requires_grad_(self.requires_grad)
            t.grad = None  # a backward must never accumulate into the user's own .grad

    def restore(self) -> None:
        self.reset()
        if self.tensor.is_leaf and self.tensor.grad is not self.grad:
            self.tensor.grad = self.grad


def _clone(t: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            return t.detach().clone()
    except (RuntimeError, NotImplementedError):  # a tensor subclass or layout without clone: not protected
        return None


class KeptInputs:
    """The user's input objects, put back before every run and at the end."""

    def __init__(self, value: Any) -> None:
        self.tensors: list[_KeptTensor] = []
        self.lists: list[tuple[list[Any], list[Any]]] = []
        self.dicts: list[tuple[dict[Any, Any], list[tuple[Any, Any]]]] = []
        seen: set[int] = set()
        for item in _walk(value, seen):
            if isinstance(item, torch.Tensor):
                self.tensors.append(_KeptTensor(item))
            elif isinstance(item, list):
                self.lists.append((item, list(item)))
            elif isinstance(item, dict):
                self.dicts.append((item, list(item.items())))

    def reset(self) -> None:
        """Every container holds what it held, every tensor its value and flags, with no gradient."""
        for items, before in self.lists:
            if len(items) != len(before) or any(a is not b for a, b in zip(items, before, strict=True)):
                items[:] = before
        for mapping, before in self.dicts:
            now = list(mapping.items())
            if len(now) != len(before) or any(a[0] != b[0] or a[1] is not b[1] for a, b in zip(now, before,
                                                                                                 strict=True)):
                mapping.clear()
                mapping.update(before)
        for kept in self.tensors:
            kept.reset()

    def restore(self) -> None:
        """As :meth:`reset`, and the user's own ``.grad`` tensors back on the inputs."""
        self.reset()
        for kept in self.tensors:
            kept.restore()


def _walk(value: Any, seen: set[int]) -> Iterator[Any]:
    """Tensors, lists and dicts reachable through tuples, lists, dicts, namedtuples and dataclass-like objects."""
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            if isinstance(item, list):
                yield item
            stack.extend(item)
        elif isinstance(item, dict):
            yield item
            stack.extend(item.values())


# ----------------------------------------------------------------------------- copies of module inputs


def model_memo(model: nn.Module) -> dict[int, Any]:
    """Objects a copy must share with the model, never duplicate: its modules, parameters and buffers."""
    keep: dict[int, Any] = {id(m): m for m in model.modules()}
    keep.update((id(p), p) for p in model.parameters(recurse=True))
    keep.update((id(b), b) for b in model.buffers(recurse=True))
    return keep


def copy_call(value: Any, keep: dict[int, Any]) -> tuple[Any, bool]:
    """A deep copy of ``value`` that keeps aliasing and shares ``keep``'s objects; ``(copy, fully copied)``.

    Tensors get clones (one per distinct tensor, so ``q is k`` stays true in the copy); other objects
    (caches, configs) are deep-copied as they are now.  When an object refuses to be copied, the
    tensors are still cloned but the objects are shared with the original, and the second value is False.
    """
    memo = dict(keep)
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and id(leaf) not in memo:
            clone = _clone(leaf)
            memo[id(leaf)] = leaf if clone is None else clone
    try:
        return copy.deepcopy(value, memo), True
    except Exception:  # an object without copy support: share it, clone only the tensors
        return torch.utils._pytree.tree_map(lambda v: memo.get(id(v), v) if isinstance(v, torch.Tensor) else v,
                                            value), False
