"""FSDP1: which original parameters autograd gave a gradient on this rank, before FSDP1 reduce-scatters it.

FSDP1 flattens a unit's parameters into one flat parameter, so a parameter that one rank's forward never used
still ends up with a (zero) slice of a reduced flat gradient there, and nothing on the flat parameter tells
"unused here" from "used".  In the forward, though, FSDP1 puts plain tensor views of the unsharded flat parameter
in the original parameters' places (``FlatParamHandle._use_unsharded_views(as_params=False)``); autograd reaches
such a view only if this rank's forward used it.  A tensor hook on each forward view records exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

import torch

from gradprobe.facts.distributed import clean_name


def hook_forward_views(units: Sequence[Any], trainable: Collection[str],
                       record: Callable[[str, torch.Tensor], None]) -> list[Callable[[], None]]:
    """Make every unit's forward views call ``record(original name, gradient)`` when autograd computes their
    gradient (trainable parameters only).  Returns the undo callables."""
    undo: list[Callable[[], None]] = []
    for unit in units:
        handle = getattr(unit, "handle", None)
        flat = getattr(handle, "flat_param", None)
        if flat is None or not hasattr(flat, "_param_infos"):
            continue
        names = [f"{unit.name}.{clean_name(f)}" if unit.name else clean_name(f) for f in flat._fqns]
        original = handle._use_unsharded_views

        def use_unsharded_views(*args: Any, _orig: Any = original, _handle: Any = handle,
                                _names: list[str] = names, **kwargs: Any) -> Any:
            out = _orig(*args, **kwargs)
            as_params = kwargs.get("as_params", args[0] if args else True)
            if not as_params and getattr(_handle._training_state, "name", "") == "FORWARD":
                for name, (param_name, module, _) in zip(_names, _handle.flat_param._param_infos, strict=False):
                    view = getattr(module, param_name, None)
                    if name in trainable and isinstance(view, torch.Tensor) and view.requires_grad:
                        view.register_hook(partial(record, name))
            return out

        handle._use_unsharded_views = use_unsharded_views
        undo.append(lambda h=handle: h.__dict__.pop("_use_unsharded_views", None))
    return undo
