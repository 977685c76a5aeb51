"""``aten._grouped_mm`` on meta, shaped as the CPU kernel shapes it.

``transformers``' mixture-of-experts layers (Mixtral and the rest, ``integrations/moe.py``) call
``F.grouped_mm``, forward and -- through ``GroupedMmBackward0`` -- twice more in backward.  The CPU kernel
(``_grouped_mm_fallback``) takes float32, bfloat16 and float16; torch's meta kernel (``_meta_registrations``)
takes bfloat16 only, so a float32 model stopped on meta, and even in bfloat16 the meta kernel of a CPU-only
torch build lays its output out contiguously while the kernels pad each row to 16 bytes
(``create_grouped_gemm_output_tensor`` in aten/src/ATen/native/GroupedMMUtils.h) -- a different storage size.

:func:`grouped_mm_as_cpu` checks what the CPU kernel checks (dtypes, dimensions, the contraction, 16-byte
strides) with the CPU's messages, and returns an empty meta tensor with the CPU output's sizes, strides and
storage.  Autograd saves the same inputs whichever kernel runs, so saved bytes and peaks follow.
"""

from __future__ import annotations

from typing import Any

import torch

GROUPED_MM = torch.ops.aten._grouped_mm.default
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the CPU kernel accepts


def is_meta_grouped_mm(func: Any, args: Any) -> bool:
    """A ``_grouped_mm`` call on meta tensors."""
    return func is GROUPED_MM and len(args) >= 2 and isinstance(args[0], torch.Tensor) and args[0].is_meta


def grouped_mm_as_cpu(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The output of ``aten._grouped_mm`` as the CPU kernel would allocate it, on meta (no values)."""
    _check(mat_a, mat_b, offs, bias, out_dtype)
    size = _out_size(mat_a, mat_b, offs)
    dtype = out_dtype or mat_a.dtype
    alignment = 16 // dtype.itemsize  # each row padded to 16 bytes, as the kernels do
    padded = (size[-1] + alignment - 1) // alignment * alignment
    stride = [size[1] * padded, padded, 1] if len(size) == 3 else [padded, 1]
    return torch.empty_strided(size, stride, dtype=dtype, device="meta")


def _check(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None, bias: torch.Tensor | None,
           out_dtype: torch.dtype | None) -> None:
    """The CPU kernel's refusals, so a call it would refuse is refused on meta too."""
    for name, mat in (("mat_a", mat_a), ("mat_b", mat_b)):
        torch._check(mat.dtype in _DTYPES,
                     lambda n=name, m=mat: f"Expected {n} to be Float32, BFloat16 or Float16 matrix, got {m.dtype}")
        torch._check(mat.dim() in (2, 3), lambda: f"Multiplicands must be 2D or 3D but got mat_a.dim()={mat_a.dim()} "
                                                  f"and mat_b.dim()={mat_b.dim()}")
        _check_strides(mat)
    torch._check(mat_a.dtype == mat_b.dtype, lambda: f"expected m1 and m2 to have the same dtype, but got: "
                                                     f"{mat_a.dtype} != {mat_b.dtype}")
    if mat_a.dim() == 3 or mat_b.dim() == 3:
        torch._check(mat_a.size(-1) == mat_b.size(-2), lambda: "contraction dimension of mat_a and mat_b must match")
    two_d = mat_a.dim() == 2 or mat_b.dim() == 2
    torch._check(two_d == (offs is not None), lambda: "Have to provide offsets if there is a 2d matrix, or no "
                                                      "offset if both matrices are 3d")
    if offs is not None:
        torch._check(offs.dim() == 1 and offs.dtype == torch.int32, lambda: "Offsets have to be int32")
    torch._check(bias is None, lambda: "Bias tensor provided, but it is not supported yet.")
    torch._check(out_dtype is None or out_dtype == mat_a.dtype,
                 lambda: "Grouped gemm output dtype must match `mat_a` dtype")


def _check_strides(mat: torch.Tensor) -> None:
    """Row- or column-major in the last two dimensions, the leading stride a multiple of 16 bytes."""
    alignment = 16 // mat.element_size()
    rows, cols = mat.shape[-2], mat.shape[-1]
    s_rows, s_cols = mat.stride()[-2], mat.stride()[-1]
    if s_rows == 1 and s_cols >= max(1, rows):
        torch._check(s_cols % alignment == 0, lambda: "strides should be multiple of 16 bytes")
    elif s_cols == 1 and s_rows >= max(1, cols):
        torch._check(s_rows % alignment == 0, lambda: "strides should be multiple of 16 bytes")
    else:
        torch._check(False, lambda: f"Invalid strides/sizes, got {list(mat.stride())} for strides and "
                                    f"{list(mat.shape)} for sizes")


def _out_size(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None) -> list[int]:
    """Sizes of the result: jagged 2D operands take their group count from ``offs``."""
    if mat_a.dim() == 2 and mat_b.dim() == 2:
        assert offs is not None
        return [offs.size(0), mat_a.size(0), mat_b.size(1)]
    if mat_a.dim() == 2:
        torch._check(offs is not None and offs.size(0) == mat_b.size(0), lambda: "matrix batch sizes have to match")
        return [mat_a.size(0), mat_b.size(-1)]
    if mat_b.dim() == 2:
        torch._check(offs is not None and offs.size(0) == mat_a.size(0), lambda: "matrix batch sizes have to match")
        return [mat_a.size(1), mat_b.size(1)]
    torch._check(mat_a.size(0) == mat_b.size(0), lambda: "batched dimension has to match")
    return [mat_a.size(0), mat_a.size(1), mat_b.size(-1)]
