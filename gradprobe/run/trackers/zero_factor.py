"""Which all-zero parameter makes another parameter's gradient exactly zero: a product with a zero factor.

LoRA computes ``B(A(x))`` with ``B`` initialised to zeros, so on the first step ``A``'s gradient
``B^T g x^T`` is exactly zero: not a dead ReLU or a mask, and expected.  This is read off the autograd
graph the backward ran, never guessed from names or shapes: every product node (``mm``, ``bmm``,
``addmm``, ``mul``, convolution...) whose operand comes, through view and copy nodes only, from an
all-zero parameter sends exactly zero gradient to its *other* operands.  A parameter the loss reaches
only through such edges has a zero gradient because of those factors; they are its partners.

The walk runs only when some parameter's gradient is exactly zero and some parameter is all zeros, over
node names and ``next_functions`` (both survive the backward), and reads only the candidate parameters'
values.  Graph nodes are walked iteratively (graphs of 10^5 nodes are normal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

# backward nodes of products: the operand positions (in next_functions) that multiply each other
_PRODUCTS: dict[str, tuple[int, ...]] = {
    "MmBackward0": (0, 1), "BmmBackward0": (0, 1), "MulBackward0": (0, 1), "MvBackward0": (0, 1),
    "DotBackward0": (0, 1), "VdotBackward0": (0, 1), "MatmulBackward0": (0, 1), "OuterBackward0": (0, 1),
    "AddmmBackward0": (1, 2), "BaddbmmBackward0": (1, 2), "AddbmmBackward0": (1, 2), "AddmvBackward0": (1, 2),
    "LinearBackward0": (0, 1), "ConvolutionBackward0": (0, 1), "EinsumBackward0": (0, 1),
    "ScaledMmBackward0": (0, 1), "GroupedMmBackward0": (0, 1), "BaddbmmBackward1": (1, 2),
}
# nodes that only move, reshape or cast values: zeros in, zeros out
_PASS = frozenset({
    "TBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "TransposeBackward0",
    "TransposeBackward1", "PermuteBackward0", "ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "SqueezeBackward4", "AsStridedBackward0",
    "SelectBackward0", "SliceBackward0", "CloneBackward0", "ToCopyBackward0", "AliasBackward0",
    "ViewAsRealBackward0", "ViewAsComplexBackward0", "IndexBackward0", "UnbindBackward0",
    "SplitBackward0", "SplitWithSizesBackward0", "ChunkBackward0", "NegBackward0", "ContiguousBackward0",
})
_MAX_CHAIN = 64  # view/copy nodes followed from a product's operand to a parameter


def zero_factor_partners(roots: Sequence[Any], names: Mapping[int, str], zero_grad: Iterable[str],
                         candidates: Iterable[torch.Tensor]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(parameter, (all-zero partners, ...))`` for each name in ``zero_grad`` explained by a zero factor.

    ``roots``: the grad_fn the backward started from; ``names``: id(parameter) -> name; ``candidates``: the
    parameters that might be all zeros (those requiring grad).
    """
    wanted = set(zero_grad)
    zero_ids = _all_zero_ids(list(candidates)) if wanted else set()
    if not wanted or not zero_ids or not roots:
        return ()
    blocked, reached = _walk_blocked(roots, zero_ids)
    found: dict[str, list[str]] = {}
    for child, partner in blocked:
        for pid in _params_below(child, reached):
            name = names.get(pid)
            if name in wanted and partner not in found.setdefault(name, []) and names.get(partner) is not None:
                found[name].append(partner)  # type: ignore[arg-type]
    return tuple((name, tuple(sorted(names[q] for q in qs))) for name, qs in sorted(found.items()) if qs)


def _all_zero_ids(params: list[torch.Tensor]) -> set[int]:
    """ids of the all-zero parameters: one ``_foreach_norm`` read per dtype and device, zero norms confirmed.

    Tensor subclasses (a DTensor holds only this rank's shard: a zero shard says nothing of the whole
    parameter) are never candidates, so no verdict rests on part of a parameter."""
    readable = [p for p in params if p.device.type != "meta" and p.layout == torch.strided and p.numel() and
                (p.is_floating_point() or p.is_complex()) and type(p.detach()) is torch.Tensor and _backed(p)]
    return {id(p) for p, zero in zip(readable, all_zeros(readable), strict=True) if zero}


def all_zeros(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Whether each tensor (dense, floating or complex, non-empty, with its values here) holds only zeros: one
    ``_foreach_norm`` per device and dtype, a zero norm confirmed element-wise (squares of tiny values underflow)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    found = [False] * len(tensors)
    with torch.no_grad():
        for idx in groups.values():
            norms = torch.stack(torch._foreach_norm([tensors[i].detach() for i in idx])).tolist()
            for i, n in zip(idx, norms, strict=True):
                found[i] = n == 0 and not bool(torch.any(tensors[i] != 0))
    return found


def _backed(t: torch.Tensor) -> bool:
    """The tensor's storage holds all its elements: FSDP frees an unsharded parameter's storage between uses
    (``resize_(0)``), and reading such a tensor would read freed memory."""
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return t.untyped_storage().nbytes() >= (t.storage_offset() + extent) * t.element_size()


def _zero_source(node: Any, zero_ids: set[int]) -> int | None:
    """id of the all-zero parameter ``node`` carries through view/copy nodes only, else None."""
    for _ in range(_MAX_CHAIN):
        if node is None:
            return None
        name = type(node).__name__
        if name == "AccumulateGrad":
            pid = id(node.variable)
            return pid if pid in zero_ids else None
        if name not in _PASS:
            return None
        nxt = [n for n, _ in node.next_functions if n is not None]
        if len(nxt) != 1:
            return None
        node = nxt[0]
    return None


def _walk_blocked(roots: Sequence[Any], zero_ids: set[int]) -> tuple[list[tuple[Any, int]], set[Any]]:
    """Every node the loss reaches without crossing a zero factor, and the edges that would cross one."""
    blocked: list[tuple[Any, int]] = []
    reached: set[Any] = set()
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in reached:
            continue
        reached.add(node)
        nexts = [n for n, _ in node.next_functions]
        operands = _PRODUCTS.get(type(node).__name__, ())
        zero_at = {i: _zero_source(nexts[i], zero_ids) for i in operands if i < len(nexts)}
        for i, child in enumerate(nexts):
            if child is None:
                continue
            others = [q for j, q in zero_at.items() if j != i and q is not None]
            if i in zero_at and others:
                blocked.append((child, others[0]))
            else:
                stack.append(child)
    return blocked, reached


def _params_below(start: Any, reached: set[Any]) -> set[int]:
    """Parameters (AccumulateGrad variables) reachable from ``start`` through nodes the free walk missed."""
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node in seen or node in reached:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":
            found.add(id(node.variable))
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found
