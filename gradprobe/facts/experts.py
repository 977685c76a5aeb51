"""Facts about fused mixture-of-experts parameters: one gradient state per expert slice, and the routing.

In ``transformers`` 5 the experts of a layer are one 3-D parameter (``gate_up_proj`` of shape
``(experts, 2 * intermediate, hidden)``): the parameter's gradient is "nonzero" while whole expert slices of
it are exactly zero because no token was routed to those experts.  These facts keep the slices apart.
Plain values only (no torch), like the rest of :mod:`gradprobe.facts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradprobe.facts.run import GradState


@dataclass(frozen=True)
class ExpertParamGrads:
    """One fused parameter's gradient, expert slice by expert slice (``grad[e]``)."""

    name: str  # qualified parameter name
    shape: tuple[int, ...]
    states: tuple[GradState, ...]  # per expert: zero / nonzero / none (no .grad at all)
    norms: tuple[float | None, ...]  # L2 norm of each slice's gradient (None: no .grad)


@dataclass(frozen=True)
class ExpertsFact:
    """A module holding fused expert parameters, what the router sent it, and each expert's gradient."""

    module: str  # qualified name of the experts module ("" for the model itself)
    type: str  # its class name
    experts: int  # size of the leading expert dimension
    recognised_by: str  # "num_experts" (the attribute that names the count), "config.num_local_experts", "shape"
    parameters: tuple[ExpertParamGrads, ...]
    # routing measured from the router's top-k indices handed to the module in this run (None: not seen)
    tokens: tuple[int, ...] | None = None  # token assignments per expert, over every call
    routed_rows: int | None = None  # tokens (rows of the index tensor) that entered the layer, over every call
    top_k: int | None = None  # assignments per token
    # of ``tokens``, those whose token's output row of the module got a nonzero gradient in the backward (the
    # loss depends on it); the rest are tokens the loss ignores (padded or label-masked positions)
    tokens_with_gradient: tuple[int, ...] | None = None

    @property
    def unrouted(self) -> tuple[int, ...]:
        """Experts no token was routed to (empty when routing was not seen)."""
        return tuple(e for e, n in enumerate(self.tokens or ()) if n == 0)

    @property
    def ignored(self) -> tuple[int, ...]:
        """Experts that got tokens, but only tokens whose outputs got an exactly zero gradient."""
        if self.tokens is None or self.tokens_with_gradient is None:
            return ()
        return tuple(e for e, (n, g) in enumerate(zip(self.tokens, self.tokens_with_gradient, strict=True))
                     if n and not g)

    def zero_experts(self) -> tuple[int, ...]:
        """Experts whose slice is exactly zero (or absent) in every fused parameter that has a gradient."""
        with_grad = [p for p in self.parameters if any(s is not GradState.ABSENT for s in p.states)]
        if not with_grad:
            return ()
        return tuple(e for e in range(self.experts)
                     if all(p.states[e] in (GradState.ZERO, GradState.ABSENT) for p in with_grad))
