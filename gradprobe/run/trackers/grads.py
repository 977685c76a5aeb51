"""Gradient state of every parameter after backward: ``none``, ``zero``, ``nonzero`` (with norm) or ``present``.

Checking each gradient with ``torch.any(grad != 0)`` plus a norm reads it twice and allocates a
boolean copy of it: on GPT-2 small that cost 0.4 s per run, more than the backward itself.  One
``torch._foreach_norm`` over all dense gradients reads each once; only a zero norm (all zeros, or
values so small their squares underflow) is confirmed element-wise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradprobe.facts.run import GradState
from gradprobe.run.values import stored_values

GradInfo = tuple[GradState, float | None]


def _one(grad: torch.Tensor) -> GradInfo:
    grad = stored_values(grad)  # a sparse gradient's stored values: never its dense size
    if not bool(torch.any(grad != 0)):
        return GradState.ZERO, 0.0
    # linalg.vector_norm of a complex tensor is the real norm of |z|; .float() would drop the imaginary part
    grad = grad.detach()
    norm = float(torch.linalg.vector_norm(grad, dtype=_wide(grad.dtype)))
    if norm == 0.0:  # squares underflowed (a bf16 gradient of 1e-30): scale by the largest magnitude first
        with torch.no_grad():
            top = grad.abs().amax().double()
            norm = float(top * torch.linalg.vector_norm(grad.double() / top if not grad.is_complex()
                                                        else grad.to(torch.complex128) / top))
    return GradState.NONZERO, norm


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores: a sparse gradient (``nn.Embedding(sparse=True)``) its indices and values only."""
    if t.is_sparse:
        return stored_bytes(t._indices()) + stored_bytes(t._values())
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        compressed = t.crow_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr) else t.ccol_indices()
        plain = t.col_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr) else t.row_indices()
        return stored_bytes(compressed) + stored_bytes(plain) + stored_bytes(t.values())
    if t.is_nested:
        try:
            return stored_bytes(t.values())
        except RuntimeError:  # a layout without values(): its whole buffer
            return t.untyped_storage().nbytes()
    return t.numel() * t.element_size()


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a norm is accumulated in: float32 at least, float64/complex128 kept."""
    if dtype.is_complex:
        return dtype if dtype == torch.complex128 else torch.complex64
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def local_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
    """The part of ``t`` this process holds: a ``DTensor`` (FSDP2, tensor parallel) gives its local shard.

    Reading a DTensor element-wise (``.tolist()``, ``float()``) raises or starts a collective; the state and norm
    of a sharded gradient are those of the local shard, and the distributed report merges the ranks.
    """
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and callable(to_local) else t


def grad_states(params: Sequence[torch.Tensor]) -> list[GradInfo]:
    """The state of each parameter's ``.grad``, in order; meta gradients are ``present`` (values unknown).

    A sharded (``DTensor``) gradient is judged by its local shard.
    """
    states: list[GradInfo | None] = [None] * len(params)
    batch: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        grad = local_tensor(p.grad)
        if grad is None:
            states[i] = (GradState.ABSENT, None)
        elif grad.device.type == "meta":
            states[i] = (GradState.PRESENT, None)
        elif grad.layout == torch.strided and not grad.is_nested and grad.is_floating_point():
            batch.setdefault((grad.device, grad.dtype), []).append(i)
        else:
            states[i] = _one(grad)
    for idx in batch.values():
        grads = [local_tensor(params[i].grad).detach() for i in idx]  # type: ignore[union-attr]
        wide = _wide(grads[0].dtype)
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(grads, 2, dtype=wide)).double().tolist()
        for i, norm in zip(idx, norms, strict=True):
            if norm == 0.0:  # all zeros, or tiny values whose squares underflowed: look at the elements
                states[i] = _one(local_tensor(params[i].grad))  # type: ignore[arg-type]
            else:
                states[i] = (GradState.NONZERO, norm)
    return states  # type: ignore[return-value]
