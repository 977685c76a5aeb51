"""``--modes`` text → the train/eval x grad-mode pairs compare-modes runs (torch-free: parsed before torch loads)."""

from __future__ import annotations

from collections.abc import Iterable

from gradprobe.errors import UsageError
from gradprobe.facts.compare import ALL_MODES, label
from gradprobe.facts.run import GRAD_MODES, MODES

_GRAD_ALIASES = {"no-grad": "no_grad", "nograd": "no_grad", "inference-mode": "inference_mode",
                 "inference": "inference_mode", "enable_grad": "grad"}

ModesSpec = str | Iterable[str | tuple[str, str]] | None


def parse_modes(spec: ModesSpec) -> list[tuple[str, str]]:
    """``"train:grad,eval:no_grad"`` (or a list of such items or pairs) → pairs, in the order given.

    ``None``/``"all"`` means all six.  Duplicates are dropped; anything else outside the six is a
    usage error naming the accepted spellings.
    """
    if spec is None:
        return list(ALL_MODES)
    items: list[str | tuple[str, str]] = list(spec.split(",")) if isinstance(spec, str) else list(spec)
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str) and item.strip().lower() == "all":
            parsed = list(ALL_MODES)
        elif isinstance(item, str):
            parsed = [] if not item.strip() else [_parse_item(item)]
        else:
            parsed = [_check(*item)]
        pairs.extend(p for p in parsed if p not in pairs)
    if not pairs:
        raise UsageError("--modes is empty; give at least one MODE:GRAD such as eval:no_grad, or leave it out "
                         "for all six")
    return pairs


def _parse_item(item: str) -> tuple[str, str]:
    mode, sep, grad_mode = item.strip().lower().partition(":")
    if not sep:
        raise UsageError(f"--modes: '{item}' is not MODE:GRAD; write e.g. train:grad,eval:no_grad "
                         f"(MODE: train|eval, GRAD: grad|no_grad|inference_mode)")
    return _check(mode, grad_mode)


def _check(mode: str, grad_mode: str) -> tuple[str, str]:
    mode, grad_mode = mode.strip(), _GRAD_ALIASES.get(grad_mode.strip(), grad_mode.strip())
    if mode not in MODES:
        raise UsageError(f"--modes: '{mode}' in '{label(mode, grad_mode)}' is not a mode; use train or eval")
    if grad_mode not in GRAD_MODES:
        raise UsageError(f"--modes: '{grad_mode}' in '{label(mode, grad_mode)}' is not a grad mode; "
                         f"use grad, no_grad or inference_mode")
    return mode, grad_mode
