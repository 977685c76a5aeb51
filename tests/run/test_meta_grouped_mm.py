"""``aten._grouped_mm`` on meta follows the CPU kernel (issue 17 §1: Mixtral in float32 on meta).

torch's meta kernel takes bfloat16 only and, in a CPU-only build, lays its output out contiguously; the CPU
kernel takes float32/bfloat16/float16 and pads each output row to 16 bytes.  Under gradprobe's meta kernels
(``MetaKernelFidelity``) the meta call must give the CPU output's sizes, strides, dtype and storage size,
forward and backward, and refuse what the CPU refuses.  Each case is checked against the CPU kernel run here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradprobe.run.trackers.meta import MetaKernelFidelity

OFFS = [2, 5, 5, 9]  # four groups over ten rows, one empty


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype, t.untyped_storage().nbytes()


def _cases(dtype: torch.dtype, n: int) -> dict[str, tuple]:
    """(mat_a, mat_b, offs) for the four layouts, ``n`` the output's last size (unaligned ones included)."""
    offs = torch.tensor(OFFS, dtype=torch.int32)
    return {
        "2d x 3d (experts forward)": (torch.randn(10, 8, dtype=dtype),
                                      torch.randn(4, n, 8, dtype=dtype).transpose(-2, -1), offs),
        "2d x 2d (weight gradient)": (torch.randn(8, 10, dtype=dtype).t().contiguous().t(),
                                      torch.randn(10, 8, dtype=dtype), offs),
        "3d x 3d": (torch.randn(4, 10, 8, dtype=dtype), torch.randn(4, n, 8, dtype=dtype).transpose(-2, -1), None),
        "3d x 2d": (torch.randn(4, 10, 8, dtype=dtype), torch.randn(n * 4, 8, dtype=dtype).t().contiguous(), offs),
    }


def _on_meta(call, *tensors: torch.Tensor):
    meta = [None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            for t in tensors]
    with MetaKernelFidelity():
        return call(*meta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [12, 6, 3])
def test_forward_output_is_laid_out_as_on_the_cpu(dtype: torch.dtype, n: int) -> None:
    for name, (a, b, offs) in _cases(dtype, n).items():
        try:
            cpu = F.grouped_mm(a, b, offs=offs)
        except RuntimeError as exc:  # the CPU refuses (unaligned strides): meta refuses with its message
            with pytest.raises(RuntimeError, match=str(exc).split(",")[0][:30]):
                _on_meta(lambda x, y, o: F.grouped_mm(x, y, offs=o), a, b, offs)
            continue
        meta = _on_meta(lambda x, y, o: F.grouped_mm(x, y, offs=o), a, b, offs)
        assert meta.is_meta and _layout(meta) == _layout(cpu), name


def test_plain_meta_kernel_refuses_float32_and_pads_nothing() -> None:
    """What is being fixed, in plain PyTorch: float32 refused, bfloat16 laid out differently from the CPU."""
    a, b, offs = _cases(torch.float32, 12)["2d x 3d (experts forward)"]
    with pytest.raises(RuntimeError, match="BF16"):
        F.grouped_mm(a.to("meta"), b.to("meta"), offs=offs.to("meta"))
    a16, b16 = a.bfloat16(), b.bfloat16()
    cpu = F.grouped_mm(a16, b16, offs=offs)
    if torch.version.cuda is None:  # a CUDA build's meta kernel pads as the kernels do
        plain = F.grouped_mm(a16.to("meta"), b16.to("meta"), offs=offs.to("meta"))
        assert _layout(plain) != _layout(cpu)
    assert _layout(_on_meta(lambda x, y, o: F.grouped_mm(x, y, offs=o), a16, b16, offs)) == _layout(cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_gradients_are_laid_out_as_on_the_cpu(dtype: torch.dtype) -> None:
    a, b, offs = _cases(dtype, 16)["2d x 3d (experts forward)"]
    weight = b.transpose(-2, -1).contiguous()  # (experts, out, in), as transformers stores it

    def run(x: torch.Tensor, w: torch.Tensor, o: torch.Tensor) -> list[tuple]:
        x, w = x.requires_grad_(), w.requires_grad_()
        y = F.grouped_mm(x, w.transpose(-2, -1), offs=o)
        y.backward(torch.ones(y.shape, dtype=y.dtype, device=y.device))
        return [_layout(t) for t in (y, x.grad, w.grad)]

    cpu = run(a.clone(), weight.clone(), offs)
    meta = [None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            for t in (a, weight, offs)]
    with MetaKernelFidelity():
        assert run(*meta) == cpu


@pytest.mark.parametrize("call, message", [
    (lambda a, b, o: F.grouped_mm(a.double(), b.double(), offs=o), "Float32, BFloat16 or Float16"),
    (lambda a, b, o: F.grouped_mm(a, b, offs=o.long()), "int32"),
    (lambda a, b, o: F.grouped_mm(a, b), "offsets"),
    (lambda a, b, o: F.grouped_mm(a[:, :4], b, offs=o), "contraction"),
])
def test_meta_refuses_what_the_cpu_refuses(call, message: str) -> None:
    a, b, offs = _cases(torch.float32, 12)["2d x 3d (experts forward)"]
    with pytest.raises(RuntimeError, match=message):
        call(a, b, offs)
    with pytest.raises(RuntimeError, match=message):
        _on_meta(call, a, b, offs)
