"""Making a run on the meta device tell the truth about a real one.

Three things differ on meta, and all are handled here (``meta_fidelity`` switches on the first two):

* ``F.scaled_dot_product_attention`` picks its kernel per device.  Meta has no kernel choice, so it
  always takes the "math" path, which saves the whole ``[batch, heads, seq, seq]`` attention matrix
  for backward, while a CPU (or GPU) run takes flash attention and saves only the output and a
  log-sum-exp.  On Llama-7B at 1024 tokens that is 128 MiB per layer of phantom activations.
  :class:`MetaAttentionChoice` asks PyTorch's own CPU dispatcher which kernel it would pick (on tiny
  CPU stand-ins with the same sizes, dtypes and last-dimension stride) and calls that kernel on the
  meta tensors, so the saved tensors match a CPU run exactly.
* A few meta kernels return differently sized outputs than the CPU kernels (BatchNorm in eval mode):
  :class:`MetaKernelFidelity` gives the CPU's outputs.  With both, the op streams of the reference models
  (every output's shape and storage size, forward and backward, train and eval) are identical on CPU and meta.
  ``aten._grouped_mm`` (mixture-of-experts layers) is given the CPU kernel's dtypes and padded output
  (see trackers.meta_grouped_mm).  It also records the BatchNorm running-statistics writes that no version
  counter shows, so "buffer changed" is right on meta too (``written``).
* Ops whose output shape depends on values (``nonzero``, boolean masks, ``.item()``, ``one_hot``
  without ``num_classes``) cannot run on meta; :func:`explain_meta_failure` turns torch's various
  messages into one line naming the op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from gradprobe.run.trackers.meta_fused import rnn_workspace_bytes
from gradprobe.run.trackers.meta_grouped_mm import grouped_mm_as_cpu, is_meta_grouped_mm

_FLASH = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with ``t``'s sizes, dtype, last-dim stride (1 or not) and requires_grad, ~no memory."""
    unit = t.dim() > 0 and t.stride(-1) == 1
    base = torch.empty(t.shape[-1] if unit else (), dtype=t.dtype, device="cpu", requires_grad=t.requires_grad)
    return base.expand(t.shape)


def _cpu_would_use_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool) -> bool:
    try:
        with _disable_current_modes():  # the stand-ins are not the model's tensors: no tracker may see them
            choice = torch._fused_sdp_choice(
                _stand_in(q), _stand_in(k), _stand_in(v), None if mask is None else _stand_in(mask),
                dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa,
            )
    except (RuntimeError, TypeError, ValueError):
        return False
    return int(choice) == _FLASH


class MetaAttentionChoice(TorchFunctionMode):
    """On meta tensors, run ``scaled_dot_product_attention`` with the kernel a CPU run would use."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out = self._sdpa(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    @staticmethod
    def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> torch.Tensor | None:
        tensors = (query, key, value) + (() if attn_mask is None else (attn_mask,))
        if not all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tensors):
            return None
        if query.is_nested:
            return None
        if not _cpu_would_use_flash(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
            return None  # the CPU would take the math path too, which meta runs as is
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # the ops of sdpa's convert_boolean_attn_mask
            zero = torch.scalar_tensor(0.0, dtype=query.dtype, device=query.device)
            attn_mask = torch.where(attn_mask, zero, torch.scalar_tensor(float("-inf"), dtype=query.dtype,
                                                                          device=query.device))
        # grouped-query attention (fewer key/value heads): the CPU flash kernel takes them as they are
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


class MetaKernelFidelity(TorchDispatchMode):
    """On meta tensors, give ops the outputs their CPU kernels give where the meta kernels differ.

    Found by comparing the op streams of CPU and meta runs of the reference models (shapes and storage
    sizes of every output): the only difference is BatchNorm in eval mode, whose CPU kernel returns empty
    ``save_mean``/``save_invstd`` (backward uses the running statistics) while the meta kernel returns
    ``[C]``-shaped ones -- which autograd then saves, 8 bytes per channel per BatchNorm call.

    Also, ``native_batch_norm`` in training writes the running statistics although its schema does not
    say so, so nothing bumps their version counter; on CPU gradprobe sees the new values, on meta the
    version counter is all there is.  The writes are recorded in ``written`` (storage keys); bumping the
    version instead would trip autograd's check, which saved the statistics before the kernel ran.
    """

    def __init__(self, on_unknown_workspace: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.written: set[int] = set()
        self.on_unknown_workspace = on_unknown_workspace  # an LSTM workspace too costly to size: mark it approximate

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if is_meta_grouped_mm(func, args):  # the CPU kernel's dtypes and padded output (forward and backward)
            return grouped_mm_as_cpu(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if func is _RNN_LAYER and out[0].device.type == "meta":
            return self._rnn_layer(args, out)
        if func is _RNN_LAYER_BACKWARD and out[3] is out[4] and out[3].device.type == "meta":
            return (*out[:4], out[4].new_empty(out[4].shape), *out[5:])  # the CPU returns two bias gradients
        if func in _STAT_WRITERS:  # running_mean, running_var: updated in place by the real kernel in training
            self._stats_written(func, args, kwargs)
        if func in _NO_TRAINING_BN and isinstance(out, tuple) and out[0].device.type == "meta":
            training = func is _NATIVE_BN and (args[5] if len(args) > 5 else (kwargs or {}).get("training"))
            if not training:
                return (out[0], out[1].new_empty((0,)), out[2].new_empty((0,)))
        return out

    def _stats_written(self, func: Any, args: Any, kwargs: Any) -> None:
        """Record the running statistics a training BatchNorm op writes.  Which op the mode sees depends on the
        grad mode: ``native_batch_norm`` with grad or under no_grad, the undecomposed ``batch_norm`` under
        inference_mode (whose version bump is skipped too)."""
        at = _STAT_WRITERS[func]
        training = True if at is None else (args[at] if len(args) > at else (kwargs or {}).get("training"))
        if not training:
            return
        for stat in args[3:5]:
            if isinstance(stat, torch.Tensor) and stat.device.type == "meta":
                self.written.add(stat.untyped_storage()._cdata)


    def _rnn_layer(self, args: Any, out: Any) -> Any:
        """oneDNN's LSTM layer: the workspace its backward keeps has the CPU's size (meta returns it empty)."""
        size = rnn_workspace_bytes(args)
        if size is None:
            if self.on_unknown_workspace is not None:
                self.on_unknown_workspace()
            return out
        return (*out[:3], out[3].new_empty((size,)))


_RNN_LAYER = torch.ops.aten.mkldnn_rnn_layer.default
_RNN_LAYER_BACKWARD = torch.ops.aten.mkldnn_rnn_layer_backward.default
_NATIVE_BN = torch.ops.aten.native_batch_norm.default
_NO_TRAINING_BN = (_NATIVE_BN, torch.ops.aten._native_batch_norm_legit_no_training.default)
# ops that update running_mean/running_var (arguments 3 and 4) in training -> index of their ``training``
# argument (None: always training); their schemas do not mark the statistics as written
_STAT_WRITERS: dict[Any, int | None] = {
    _NATIVE_BN: 5,
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten._native_batch_norm_legit.default: 5,
    torch.ops.aten._batch_norm_with_update.default: None,
}


@contextlib.contextmanager
def meta_fidelity(on_unknown_workspace: Callable[[], None] | None = None) -> Iterator[MetaKernelFidelity]:
    """Both adjustments at once: the CPU attention kernel choice and the CPU kernels' outputs."""
    with MetaAttentionChoice(), MetaKernelFidelity(on_unknown_workspace) as kernels:
        yield kernels


_MESSAGES = (
    ("nonzero", "nonzero (torch.nonzero, boolean-mask indexing x[mask], torch.where(cond) with one argument, "
                "masked_select)"),
    ("item() cannot be called on meta", ".item() (also bool(t), int(t), float(t), `if t:`, and one_hot "
                                        "without num_classes)"),
    ("Cannot copy out of meta tensor", "copying values off the device (.tolist(), .numpy(), .cpu())"),
    ("cannot be converted to Scalar", "a tensor used as a Python number"),
    ("repeat_interleave", "repeat_interleave without output_size"),
)


def explain_meta_failure(exc: BaseException) -> str | None:
    """Which value-dependent op failed on meta, in words, or None when ``exc`` is something else."""
    text = str(exc)
    for needle, label in _MESSAGES:
        if needle in text:
            return label
    marker = "attempted to run this operator with Meta tensors"
    if marker in text:
        op = text.split(":", 1)[0].strip()
        return f"{op} (no meta kernel: its output size depends on values)"
    if "Could not run" in text and "'Meta' backend" in text:
        op = text.split("'")[1] if "'" in text else "an op"
        return f"{op} (no meta kernel)"
    return None


def meta_failure_message(op: str, module: str) -> str:
    """The one-line error for a forward that cannot run on the meta device."""
    return (f"forward on the meta device failed in module {module}: {op} needs tensor values, which the meta "
            f"device does not have; run with --device cpu (a smaller --init or --shape keeps it fast), or make the "
            f"op shape-static (e.g. one_hot(x, num_classes=N))")
