"""Tracker for ``--grads``: per module call, NaN/Inf in the forward and the gradient norm reaching it in backward.

Forward (a pair of global module hooks, removed on exit): every call's floating output is checked for NaN/Inf
(a sum per output, exact counts only when it is not finite); outputs and inputs that require grad get a tensor
hook (``Tensor.register_hook``) that records the norm of the gradient reaching them.  A tensor is hooked once,
however many calls return or take it (a Sequential returns its last child's output), keyed by identity and
version (an in-place ReLU makes a new version with its own gradient).  No graph is retained and no extra
backward runs.  ReLU/ReLU6 calls also record, per unit, whether any sample activated it.

The first call that returned NaN/Inf from finite inputs keeps a copy of its inputs: after the run the op that
made the value is located by running that call once more (:mod:`gradprobe.run.trackers.nonfinite_origin`).

Backward: before it starts, the graph under the model's outputs is walked once and the nodes whose formula can
turn finite gradients into NaN/Inf (sqrt, pow, div, log, norms, custom ``autograd.Function``\\ s, ...) get a
post-hook recording whether they did.  The tracker's own ops run under ``no_grad`` and out of sight of the
run's dispatch modes, so the memory figures are the model's.

The run pauses the cyclic garbage collector (:func:`gradprobe.run.gc_pause.gc_paused`): the records kept per call
and per tensor would otherwise be promoted to the collector's oldest generation and trigger full collections of
the whole process every few runs.

Modules: ``records`` (what is kept per call, tensor and node), ``forward`` and ``backward`` (the hooks of each
phase), ``build`` (records → :class:`~gradprobe.facts.grad_health.GradHealthFacts`), ``tracker`` (the tracker
that installs them).
"""

from gradprobe.run.trackers.grad_health.tracker import GradHealthTracker

__all__ = ["GradHealthTracker"]
