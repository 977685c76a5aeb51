"""``--loss``: a reduction name, a user function ``module:fn(outputs, inputs)``, or the model's own loss.

Importing this module does not import torch: the CLI checks ``--loss`` before loading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gradprobe.errors import RunError, UsageError
from gradprobe.load.user_code import load_object

LossFn = Callable[[Any, Any], Any]

LOSS_FORMS = "sum, mean, or MOD:fn (a function of (outputs, inputs) returning a scalar)"


def check_loss_spec(spec: str) -> None:
    """Refuse a ``--loss`` that is neither a reduction nor a spec, before any user code runs."""
    if spec not in ("sum", "mean") and ":" not in spec:
        raise UsageError(f"--loss '{spec}' is not a loss: use {LOSS_FORMS}")


def resolve_loss(spec: str | None) -> str | LossFn:
    """``sum``/``mean`` stay names; ``module:fn`` is imported."""
    if spec is None or spec in ("sum", "mean"):
        return spec or "sum"
    check_loss_spec(spec)
    fn = load_object(spec, "--loss")
    if not callable(fn):
        raise UsageError(f"--loss '{spec}' is a {type(fn).__name__}, not a function(outputs, inputs) -> scalar")
    return fn  # type: ignore[no-any-return]


def model_loss(outputs: Any, inputs: Any) -> Any:
    """The loss the model computed itself (a Hugging Face output's ``.loss`` when labels are passed)."""
    import torch

    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise RunError("the model returned no loss although labels were passed; give --loss sum or --loss MOD:fn")
    return loss
