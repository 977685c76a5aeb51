"""DDP's unused-parameter failure, proven rather than predicted.

With ``find_unused_parameters=False``, DDP's reducer waits for a gradient of every parameter; a parameter
that gets none leaves the reduction unfinished and the *next* iteration raises.  gradprobe runs that next
forward (every rank at once, only when every rank saw the same unused parameters, so nothing can hang) and
quotes the error torch raises.  The model's state is restored afterwards; the DDP reducer is not (it is in
the state training would leave it in).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradprobe.run.state import preserved

EXPECTED = "Expected to have finished reduction"


def quote(error: BaseException) -> str:
    """The first sentence of DDP's error, plus the line naming the parameter indices without gradient."""
    text = " ".join(str(error).split())
    first = text.split(". ", 1)[0].rstrip(".") + "."
    marker = "Parameter indices which did not receive grad for rank"
    if marker in text:
        tail = text[text.index(marker):]
        tail = tail.split(" In addition", 1)[0].split(" Parameters which did not", 1)[0].strip()
        first += " " + tail.rstrip(".") + "."
    return first


def second_iteration(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Run the next training forward through ``model`` (a DDP module); the error it raises, quoted, or None."""
    with preserved(model):
        model.train()
        try:
            with torch.enable_grad():
                out = model(*args, **kwargs)
        except RuntimeError as exc:
            return quote(exc)
        del out
    return None
