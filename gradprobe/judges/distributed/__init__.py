"""Cross-rank verdicts: pure functions of every rank's facts (``DistFacts``), no torch.

Each finding names the parameters/modules and the ranks.  Codes are a public contract.  ``replicas``: the ranks
disagree about the model (parameters, freezes, gradients, values, buffers); ``wrappers``: what DDP/FSDP make of
it (unused parameters, find_unused cost, FSDP units mixing frozen and trainable parameters); ``text``: names and
ranks in words.
"""

from __future__ import annotations

from gradprobe.facts.distributed import DistFacts
from gradprobe.facts.run import Finding, RunFacts
from gradprobe.judges.distributed.replicas import (
    buffers_diverge,
    grad_differs,
    params_differ,
    requires_grad_differs,
    shape_differs,
    values_differ,
)
from gradprobe.judges.distributed.wrappers import ddp_find_unused_cost, ddp_unused, fsdp1_frozen_grads, fsdp2_mixed

CODES = {
    "dist-grad-differs": "a parameter gets a gradient on some ranks and none on others",
    "dist-requires-grad-differs": "a parameter requires grad on some ranks only",
    "dist-shape-differs": "a parameter's shape differs across ranks",
    "dist-params-differ": "the ranks register different parameters, or in a different order",
    "dist-values-differ": "parameter values differ across ranks before the first step, and nothing broadcasts them",
    "dist-buffers-diverge": "buffers (BatchNorm statistics) differ across ranks after the forward",
    "ddp-unused-parameters": "DDP (find_unused_parameters=False) with parameters that get no gradient",
    "ddp-find-unused-cost": "DDP find_unused_parameters=True although every parameter gets a gradient",
    "fsdp1-frozen-grad-memory": "an FSDP1 unit (use_orig_params=True) mixes frozen and trainable parameters",
    "fsdp-mixed-unit": "an FSDP2 unit mixes frozen and trainable parameters",
}


def judge_distributed(dist: DistFacts, facts: RunFacts | None = None) -> list[Finding]:
    """Every cross-rank finding, most severe kinds first."""
    out: list[Finding] = []
    per = dist.per_param()
    out += params_differ(dist)
    out += shape_differs(dist, per)
    out += requires_grad_differs(dist, per)
    out += grad_differs(dist, per)
    out += ddp_unused(dist, per)
    out += values_differ(dist, per)
    out += buffers_diverge(dist)
    out += ddp_find_unused_cost(dist, per, facts)
    out += fsdp1_frozen_grads(dist)
    out += fsdp2_mixed(dist)
    return out

