"""PyTorch's nested-tensor fast path in ``nn.TransformerEncoder``, seen from outside.

With a ``src_key_padding_mask``, in eval mode, with grad off (or nothing requiring grad), the encoder
packs its input into a nested tensor, runs its layers on the real positions only and unpacks the result
with zeros at the padded positions; every other combination computes values there.  The rows then
differ at padded positions by design.  :class:`NestedWatch` sees which encoders took that path in which
row (their first layer receives a nested tensor) and keeps the padding mask, so the comparisons can
report the difference on the non-padded positions separately (:func:`unpadded`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradprobe.facts.compare import NestedFastPath
from gradprobe.run.compare.outputs import Snapshot


@dataclass
class _Encoder:
    name: str
    module: nn.TransformerEncoder
    batch_first: bool


@dataclass
class NestedWatch:
    """Which encoders took the nested-tensor path, per row label; the padding mask of the first one."""

    encoders: list[_Encoder] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)  # row label -> encoders that took the path
    padded: torch.Tensor | None = None  # (batch, sequence) bool, True at padded positions
    batch_first: bool = True

    @classmethod
    def of(cls, model: nn.Module) -> NestedWatch:
        found = [_Encoder(name, mod, bool(getattr(mod.layers[0].self_attn, "batch_first", False)))
                 for name, mod in model.named_modules()
                 if isinstance(mod, nn.TransformerEncoder) and len(mod.layers) > 0]
        return cls(found)

    @contextlib.contextmanager
    def watch(self, row: str) -> Iterator[None]:
        """Record, during one run, which encoders hand their first layer a nested tensor."""
        if not self.encoders:
            yield
            return
        took: list[str] = []
        masks: dict[str, Any] = {}
        handles = []
        for enc in self.encoders:
            handles.append(enc.module.register_forward_pre_hook(self._mask_hook(enc, masks), with_kwargs=True))
            handles.append(enc.module.layers[0].register_forward_pre_hook(self._layer_hook(enc, took)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if took:
            self.rows[row] = took
            first = next(e for e in self.encoders if e.name == took[0])
            if self.padded is None and isinstance(masks.get(first.name), torch.Tensor):
                self.padded, self.batch_first = masks[first.name].detach().bool().clone(), first.batch_first

    @staticmethod
    def _mask_hook(enc: _Encoder, masks: dict[str, Any]) -> Any:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            masks.setdefault(enc.name, kwargs.get("src_key_padding_mask", args[2] if len(args) > 2 else None))
        return hook

    @staticmethod
    def _layer_hook(enc: _Encoder, took: list[str]) -> Any:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].is_nested and enc.name not in took:
                took.append(enc.name)
        return hook

    def straddles(self, a: str, b: str) -> bool:
        """One of the two rows took the nested path and the other did not."""
        return (a in self.rows) != (b in self.rows)

    def fact(self, outputs: Snapshot | None) -> NestedFastPath | None:
        if not self.rows:
            return None
        names = list(dict.fromkeys(n for took in self.rows.values() for n in took))
        padded = self.padded
        return NestedFastPath(
            encoders=tuple(names), rows=tuple(self.rows),
            padded_positions=int(padded.sum()) if padded is not None else None,
            positions=padded.numel() if padded is not None else None,
            separable=outputs is not None and unpadded(outputs, self) is not None,
        )


def unpadded(snap: Snapshot, watch: NestedWatch) -> Snapshot | None:
    """Only the non-padded positions of every output; None when an output is not laid out by position."""
    if watch.padded is None:
        return None
    keep = ~watch.padded
    if not watch.batch_first:
        keep = keep.t()
    out = []
    for path, t in snap:
        if t.dim() < 2 or tuple(t.shape[:2]) != tuple(keep.shape):
            return None
        out.append((path, t[keep.to(t.device)]))
    return out
