"""Which ATen ops a forward runs: names the kernel difference behind a small output difference.

Grad mode, inference mode and a module's training flag can make PyTorch pick another kernel for the
same function (a fused attention, ``nn.MultiheadAttention``'s fast path, a decomposed ``linear``), and
two kernels round differently.  Run only when two outputs differ, so an ordinary comparison pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# views, copies and bookkeeping: they move values, they never round them differently
_NO_ARITHMETIC = frozenset({
    "alias", "as_strided", "clone", "contiguous", "copy_", "detach", "empty", "empty_like", "empty_strided", "expand",
    "lift_fresh", "new_empty", "permute", "reshape", "select", "slice", "split", "squeeze", "t", "transpose",
    "unbind", "unsqueeze", "view", "_to_copy", "_unsafe_view", "_local_scalar_dense", "zeros", "zeros_like",
    "ones", "ones_like", "arange", "full", "full_like", "scalar_tensor", "fill_",
})


class _OpNames(TorchDispatchMode):
    """Records the name of every ATen op that runs, and runs it unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def op_names(run: Callable[[], Any]) -> frozenset[str]:
    """Names of the arithmetic ops ``run()`` dispatches."""
    with _OpNames() as rec:
        run()
    return frozenset(rec.names - _NO_ARITHMETIC)


def only_in(a: frozenset[str], b: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Ops only the first run used, and ops only the second used, sorted."""
    return tuple(sorted(a - b)), tuple(sorted(b - a))
