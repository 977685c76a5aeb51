"""Bytes autograd keeps alive for backward, via ``saved_tensors_hooks``.

Each saved storage is counted once; storages of parameters and buffers are
excluded (they are saved by reference and cost nothing new).  Installing any
saved-tensor hooks switches off autograd's own check that a saved tensor was
not modified in place, so this tracker records ``_version`` when packing and
raises autograd's error when unpacking a tensor that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from gradprobe.trackers.memory import storage_key

Where = Callable[[], tuple[str, int] | None]


class SavedTensorTracker:
    """Context manager: counts saved-for-backward bytes and attributes them to module calls."""

    def __init__(self, exclude: Iterable[torch.Tensor] = (), where: Where | None = None) -> None:
        self.total_bytes = 0
        self.by_call: dict[tuple[str, int], int] = {}
        self._seen: set[int] = set()
        self._exclude: set[int] = {k for k in (storage_key(t) for t in exclude) if k is not None}
        self._where = where
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorTracker:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        key = storage_key(t)
        if key is not None and key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            self.total_bytes += nbytes
            if self._where is not None:
                call = self._where()
                if call is not None:
                    self.by_call[call] = self.by_call.get(call, 0) + nbytes
        # detach(): returning ``t`` itself keeps a reference cycle through a saved output's grad_fn alive
        # when no backward follows; the detached view shares t's version counter, so the check below works.
        return t.detach(), t._version

    @staticmethod
    def _unpack(packed: tuple[torch.Tensor, int]) -> Any:
        tensor, version = packed
        if tensor._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{tensor.type()} {list(tensor.shape)}] is at version {tensor._version}; "
                f"expected version {version} instead. Hint: the operation that modified it ran after it "
                "was saved for backward (autograd's check, kept by gradprobe)."
            )
        return tensor
