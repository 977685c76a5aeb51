"""Sentences the inspect views (rich, Markdown) share, so they say the same thing in the same words."""

from __future__ import annotations

from gradprobe.facts.run import CheckpointCandidate, CheckpointPlan, MemoryApproximation
from gradprobe.units import human_bytes

CHECKPOINT_TITLE = "Activation checkpointing (torch.utils.checkpoint, use_reentrant=False)"


def call_label(module: str, call: int) -> str:
    """``layers.0``, ``block #1`` (its second call), ``(model)`` for the model itself."""
    return (module or "(model)") + (f" #{call}" if call else "")


def candidate_cells(c: CheckpointCandidate) -> tuple[str, str, str, str]:
    return (call_label(c.module, c.call), c.module_type, human_bytes(c.inside_saved_bytes),
            human_bytes(c.expected_saving_bytes))


def plan_text(plan: CheckpointPlan) -> str:
    share = plan.expected_saving_bytes / plan.saved_for_backward_bytes if plan.saved_for_backward_bytes else 0.0
    return (f"wrapping every {plan.module_type} call ({plan.calls}): about "
            f"{human_bytes(plan.expected_saving_bytes)} less saved for backward ({share:.0%}), "
            f"for one more forward of each inside backward")


APPROXIMATE_TITLE = "Approximate: the meta run used another kernel than the CPU would"


def approximate_cells(a: MemoryApproximation) -> tuple[str, str, str, str]:
    """(module call, op, why, the gap measured for that call alone on stand-ins, or "not measured")."""
    if a.cpu_saved_bytes is not None and a.meta_saved_bytes is not None:
        gap = f"saved {human_bytes(a.cpu_saved_bytes)} on CPU vs {human_bytes(a.meta_saved_bytes)} on meta"
    else:
        gap = "not measured (too big to re-run, or no grad)"
    return call_label(a.module, a.call), a.op, a.reason, gap
