"""Fused CPU kernels that a meta run must follow, and the ones it cannot: marked approximate, per module.

Some functions choose their kernel by device in C++ or Python, so the meta device, having no kernel choice,
runs a different op sequence than the CPU would -- and saves different tensors for backward:

* ``torch._VF.lstm`` (``nn.LSTM``): on the CPU, float32 LSTMs without projections run oneDNN's fused
  ``mkldnn_rnn_layer`` per layer and direction (aten/src/ATen/native/mkldnn/RNN.cpp); meta decomposes the
  cell.  :func:`lstm_as_cpu` calls ``mkldnn_rnn_layer`` on meta the way the CPU's ``lstm`` does (it has meta
  kernels, forward and backward), so the saved tensors match.  Other dtypes (bfloat16/float16 use oneDNN only
  on CPUs with the instructions for them) are marked approximate, the reason saying which kernel this machine's
  CPU takes.
* ``F.multi_head_attention_forward`` reached on meta while the module could take ``nn.MultiheadAttention``'s
  fused fast path (eval, no grad): the fast path checks ``query.device.type`` against a list without meta.
* ``F.scaled_dot_product_attention`` is followed by :class:`~gradprobe.run.trackers.meta.MetaAttentionChoice`.

Each mark says the module, the op, both kernels and (when cheap: the call's tensors are small) the bytes
saved for backward by that one call on the CPU and on meta, measured on zero-filled stand-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

from gradprobe.facts.run import MemoryApproximation

MEASURE_NUMEL = 1 << 20  # a call whose tensors hold more elements than this is not re-run to measure the gap
WORKSPACE_FLOPS = 2e9  # an LSTM layer costing more than this on the CPU is not run to learn its workspace size
_LSTM_MODE = 2  # mkldnn's mode number for LSTM


def _is_lstm(func: Any) -> bool:
    return getattr(func, "__name__", "") == "lstm" and func is torch._VF.lstm  # type: ignore[attr-defined]


_OTHER_RNNS = {"gru", "rnn_tanh", "rnn_relu"}
_PRECOMPUTE = ("on the CPU the {op} projects the input of all time steps at once (one matmul: aten's RNN layer "
               "branches on the device), meta projects it step by step: peaks differ, saved bytes may not")


def _is_other_rnn(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return name in _OTHER_RNNS and func is getattr(torch._VF, name, None)


def _mkldnn_on_cpu(x: torch.Tensor, params: Sequence[torch.Tensor], per: int, layers: int, dirs: int) -> bool:
    """torch's ``use_mkldnn`` for an LSTM, as it would decide for CPU tensors like these."""
    return (torch._C._get_mkldnn_enabled() and torch.backends.mkldnn.is_available() and x.numel() != 0
            and len(params) == per * layers * dirs)  # more params: projections (w_hr), never mkldnn


def _onednn_takes(dtype: torch.dtype) -> bool:
    """Whether this machine's CPU runs a ``dtype`` LSTM through oneDNN, as aten's ``use_mkldnn`` decides: bfloat16
    and float16 only where the CPU has the instructions (float16 also only without grad, never the case here)."""
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()) and not torch.is_grad_enabled()
    except (AttributeError, RuntimeError):  # a torch without these checks: say the aten layer, the common case
        return False
    return False


def lstm_as_cpu(input: torch.Tensor, hx: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
                batch_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch._VF.lstm`` as the CPU's oneDNN path runs it: one ``mkldnn_rnn_layer`` per layer and direction."""
    x = (input.transpose(0, 1) if batch_first else input).contiguous()
    h0, c0 = hx
    dirs, per = (2 if bidirectional else 1), (4 if has_biases else 2)
    hidden = h0.shape[-1]
    hy: list[torch.Tensor] = []
    cy: list[torch.Tensor] = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            idx = layer * dirs + d
            w = list(params[idx * per:(idx + 1) * per])
            h, c = h0[idx], c0[idx]
            if not has_biases:  # the CPU passes zero biases shaped like the weights (w_hh's first)
                b_hh = torch.zeros(w[1].shape, dtype=w[1].dtype, device=w[1].device)
                w += [torch.zeros(w[0].shape, dtype=w[0].dtype, device=w[0].device), b_hh]
            out, h_n, c_n, _ = torch.ops.aten.mkldnn_rnn_layer(
                x, w[0], w[1], w[2], w[3], h, c, d == 1, [], _LSTM_MODE, hidden, num_layers, has_biases,
                bidirectional, batch_first, train)
            outs.append(out)
            hy.append(h_n)
            cy.append(c_n)
        x = torch.cat(outs, -1) if dirs == 2 else outs[0]
        if dropout != 0 and train and layer < num_layers - 1:
            x = torch.dropout(x, dropout, train)
    output = x.transpose(0, 1) if batch_first else x
    return output, torch.stack(hy, 0), torch.stack(cy, 0)


_WORKSPACE: dict[tuple[Any, ...], int] = {}


def rnn_workspace_bytes(args: Sequence[Any]) -> int | None:
    """The bytes of oneDNN's workspace for one ``mkldnn_rnn_layer`` call, which only oneDNN knows (it is padded
    to pages, with no formula torch exposes; meta's kernel returns an empty one): learned by running the layer
    once on zero-filled CPU stand-ins of the same sizes, cached.  None when that run would cost too much."""
    x, w0, w1 = args[0], args[1], args[2]
    key = (tuple(x.shape), tuple(w0.shape), tuple(w1.shape), x.dtype, *(tuple(a) if isinstance(a, list) else a
                                                                     for a in args[7:]))
    if key in _WORKSPACE:
        return _WORKSPACE[key]
    if x.numel() * (w0.shape[0] * (w0.shape[1] + w1.shape[1])) * 2 > WORKSPACE_FLOPS:
        return None

    def zeros(v: Any) -> Any:
        return torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v

    with _disable_current_modes(), torch._C.DisableTorchFunction():
        workspace = torch.ops.aten.mkldnn_rnn_layer(*[zeros(a) for a in args])[3]
    _WORKSPACE[key] = workspace.untyped_storage().nbytes()
    return _WORKSPACE[key]


class MetaFusedChoice(TorchFunctionMode):
    """On meta tensors: run fused CPU kernels where torch exposes them, mark the calls it cannot follow."""

    def __init__(self, where: Callable[[], tuple[str, int]]) -> None:
        super().__init__()
        self.where = where  # the innermost module call running now
        self.approximate: list[MemoryApproximation] = []
        self.unknown_workspace = False  # set by the dispatch side when a workspace size could not be learned

    def workspace_unknown(self) -> None:
        """The dispatch side could not size an LSTM layer's oneDNN workspace: the running call is approximate."""
        self.unknown_workspace = True

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if _is_lstm(func) and len(args) == 9 and isinstance(args[1], (tuple, list)) and _meta(args[0]):
            return self._lstm(func, args, kwargs)
        if _is_lstm(func) and _meta(args[0]):  # the packed-sequence overload (data, batch_sizes, ...)
            self._mark(func, args, kwargs, "lstm", "a packed-sequence LSTM: the CPU takes a device-specific path "
                       "(oneDNN, or aten's layer projecting all time steps at once), meta the step-by-step one")
            return func(*args, **kwargs)
        if _is_other_rnn(func) and _meta(args[0]):
            self._mark(func, args, kwargs, func.__name__, _PRECOMPUTE.format(op=func.__name__.upper()))
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward and _meta(args[0]) and not kwargs.get("training", True) \
                and not _grad_needed(args):
            self._mark(func, args, kwargs, "multi_head_attention_forward",
                       "nn.MultiheadAttention's fast path (torch._native_multi_head_attention) runs on the CPU "
                       "in eval without grad; meta runs the decomposed attention")
        return func(*args, **kwargs)

    def _lstm(self, func: Any, args: Any, kwargs: Any) -> Any:
        x, _, params, has_biases, layers, _, _, bidirectional, _ = args
        per, dirs = (4 if has_biases else 2), (2 if bidirectional else 1)
        if not _mkldnn_on_cpu(x, params, per, layers, dirs):  # projections, or oneDNN off: aten's own layer
            self._mark(func, args, kwargs, "lstm", _PRECOMPUTE.format(op="LSTM"))
            return func(*args, **kwargs)
        if x.dtype == torch.float32:
            out = lstm_as_cpu(*args)
            if self.unknown_workspace:
                self.unknown_workspace = False
                self._mark(func, args, kwargs, "lstm",
                           "oneDNN's workspace (saved for backward) is too costly to size here: the CPU's "
                           "mkldnn_rnn_layer ran on meta with an empty workspace")
            return out
        dtype = str(x.dtype).removeprefix("torch.")
        if _onednn_takes(x.dtype):
            reason = (f"on this machine's CPU a {dtype} LSTM runs oneDNN's fused mkldnn_rnn_layer; meta runs the "
                      f"decomposed LSTM cell")
        else:  # this CPU has no oneDNN kernel for the dtype: aten's own layer, as for projections
            reason = _PRECOMPUTE.format(op="LSTM") + (f" (this machine's CPU has no oneDNN {dtype} LSTM; "
                                                      f"one that has runs oneDNN's fused mkldnn_rnn_layer)")
        self._mark(func, args, kwargs, "lstm", reason)
        return func(*args, **kwargs)

    def _mark(self, func: Any, args: Any, kwargs: Any, op: str, reason: str) -> None:
        module, call = self.where()
        cpu, meta = _measure(func, args, kwargs)
        self.approximate.append(MemoryApproximation(module, call, op, reason, cpu, meta))


def _meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


def _grad_needed(args: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in tree_flatten(args)[0])


def _measure(func: Any, args: Any, kwargs: Any) -> tuple[int | None, int | None]:
    """Bytes saved for backward by this one call, on CPU and on meta, on stand-ins; None when too big."""
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    if sum(t.numel() for t in tensors) > MEASURE_NUMEL or not _grad_needed(args):
        return None, None  # too big to re-run, or nothing is saved (no grad): the gap is not in saved bytes
    return _saved_bytes(func, args, kwargs, "cpu"), _saved_bytes(func, args, kwargs, "meta")


def _saved_bytes(func: Any, args: Any, kwargs: Any, device: str) -> int | None:
    given: set[int] = set()  # the call's own arguments (parameters, inputs) cost nothing new when saved

    def key(t: torch.Tensor) -> int:
        s = t.untyped_storage()
        return s._cdata if device == "meta" else s.data_ptr()

    def stand_in(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        t = torch.zeros(v.shape, dtype=v.dtype, device=device).requires_grad_(v.requires_grad)
        given.add(key(t))
        return t

    saved: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # kept until counted: a freed storage's address could be counted again

    def pack(t: torch.Tensor) -> None:
        alive.append(t)
        if key(t) not in given:
            saved[key(t)] = t.untyped_storage().nbytes()

    try:
        with _disable_current_modes(), torch._C.DisableTorchFunction(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            func(*tree_map(stand_in, args), **tree_map(stand_in, kwargs))
    except Exception:
        return None
    return sum(saved.values())
