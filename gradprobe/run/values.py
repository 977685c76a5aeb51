"""Two rules about tensor values that every part of gradprobe shares: dense views and "did it change".

* :func:`dense_view` / :func:`stored_values`: elementwise checks (``isfinite``, ``!= 0``, equality) need
  strided tensors; a sparse tensor has no ``&`` and a nested tensor no single shape.
* :func:`tensor_changed`: NaN equals NaN (a buffer holding NaN that nothing wrote is unchanged), ``inf``
  stays ``inf``, and values on the meta device are unknown.
"""

from __future__ import annotations

import torch

__all__ = ["dense_view", "stored_values", "tensor_changed"]


def dense_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a strided tensor of the same values: sparse/CSR densified, nested as its stored elements.

    A nested tensor has no dense shape; its ``values()`` (every element, concatenated) is what two
    nested tensors of the same structure can be compared by.  Meta tensors are returned as they are.
    """
    if t.is_nested:
        return t.values()
    if t.layout != torch.strided and t.device.type != "meta":
        return t.to_dense()
    return t


def stored_values(t: torch.Tensor) -> torch.Tensor:
    """The explicitly stored elements of ``t`` as a strided tensor (``t`` itself when strided).

    For reductions where implicit zeros do not matter (``isfinite().all()``, ``any(!= 0)``, a norm) this
    is exact and never allocates the dense size: a sparse embedding gradient stays small.  Sparse COO
    tensors are coalesced first, so a norm over duplicates is the norm of their sum.
    """
    if t.is_sparse:
        return t.coalesce().values()
    if t.is_nested or t.layout != torch.strided:
        return t.values()
    return t


def tensor_changed(before: torch.Tensor, after: torch.Tensor) -> bool | None:
    """Whether ``after`` differs from ``before``: shape, dtype or any value (NaN equal to NaN).

    ``None`` when either side is on the meta device (no values to compare).
    """
    if before.device.type == "meta" or after.device.type == "meta":
        return None
    if before.is_nested or after.is_nested:  # no single shape: compare component by component
        if before.is_nested != after.is_nested or before.dtype != after.dtype:
            return True
        xs, ys = before.unbind(), after.unbind()
        return len(xs) != len(ys) or any(tensor_changed(x, y) for x, y in zip(xs, ys, strict=True))
    if before.shape != after.shape or before.dtype != after.dtype:
        return True
    a, b = dense_view(before), dense_view(after)
    if b.device != a.device:
        b = b.to(a.device)
    if torch.equal(a, b):  # exact: equal tensors hold no NaN
        return False
    if not (a.is_floating_point() or a.is_complex()):
        return True
    with torch.no_grad():
        if not bool(torch.isnan(a).any()):  # unequal, and no NaN before to excuse it (the common answer)
            return True
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            return True
        # posinf/neginf kept: nan_to_num's defaults would map inf to the largest finite value
        inf = float("inf")
        return not torch.equal(torch.nan_to_num(a, nan=0.0, posinf=inf, neginf=-inf),
                               torch.nan_to_num(b, nan=0.0, posinf=inf, neginf=-inf))
