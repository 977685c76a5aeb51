"""Versioned JSON documents for machines and CI (``gradprobe.inspect/1``).

The field names are a public contract: add fields freely, never rename.
"""

from __future__ import annotations

import math
from typing import Any

from gradprobe.facts.run import (
    BufferFact,
    GraphFact,
    InspectReport,
    MemoryFact,
    ParamFact,
    TensorFact,
    TrainingStepEstimate,
)
from gradprobe.render.common import dumps, finding_json
from gradprobe.render.inspect.experts import experts_json
from gradprobe.render.inspect.grad_text import grad_health_json

__all__ = ["INSPECT_SCHEMA", "dumps", "inspect_json"]  # dumps: the CLI writes every document through it
from gradprobe.render.memory.view import memory_detail_json

INSPECT_SCHEMA = "gradprobe.inspect/1"


def _num(x: float | None) -> float | str | None:
    """JSON has no NaN/Inf: write them as strings rather than emit invalid JSON."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def param_json(p: ParamFact) -> dict[str, Any]:
    return {
        "name": p.name, "aliases": list(p.aliases), "shape": list(p.shape), "dtype": p.dtype,
        "requires_grad": p.requires_grad, "grad": p.grad and p.grad.value,
        "grad_norm": _num(p.grad_norm),
        "module": p.module, "module_training": p.module_training, "numel": p.numel, "bytes": p.nbytes,
    }


def buffer_json(b: BufferFact) -> dict[str, Any]:
    return {"name": b.name, "shape": list(b.shape), "dtype": b.dtype, "changed": b.changed, "module": b.module}


def tensor_json(t: TensorFact) -> dict[str, Any]:
    return {
        "module": t.module, "call": t.call, "path": t.path, "shape": list(t.shape), "dtype": t.dtype,
        "requires_grad": t.requires_grad, "grad_fn": t.grad_fn, "is_leaf": t.is_leaf,
        "is_inference": t.is_inference, "bytes": t.nbytes,
    }


def graph_json(g: GraphFact | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"nodes": g.nodes, "depth": g.depth, "reached_parameters": sorted(g.reached_params)}


def training_step_json(t: TrainingStepEstimate | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "optimizer_state": t.optimizer, "param_dtype": t.param_dtype, "method": t.method,
        "parameter_bytes": t.parameter_bytes, "gradient_bytes": t.gradient_bytes,
        "optimizer_state_bytes": t.optimizer_state_bytes, "activation_peak_bytes": t.activation_peak_bytes,
        "total_bytes": t.total_bytes, "backward_measured": t.backward_measured,
    }


def checkpoint_json(report: InspectReport) -> dict[str, Any]:
    """``memory.checkpoint_advice[]`` and ``memory.checkpoint_plan``: the report's advice, as every view shows it."""
    candidates, plan = report.checkpoint_advice, report.checkpoint_plan
    return {
        "checkpoint_advice": [
            {"module": c.module, "call": c.call, "type": c.module_type, "inside_saved_bytes": c.inside_saved_bytes,
             "expected_saving_bytes": c.expected_saving_bytes}
            for c in candidates
        ],
        "checkpoint_plan": None if plan is None else {
            "type": plan.module_type, "calls": plan.calls, "expected_saving_bytes": plan.expected_saving_bytes,
        },
    }


def memory_json(m: MemoryFact | None, report: InspectReport | None = None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "method": m.method,
        "forward_peak_bytes": m.forward_peak_bytes,
        "backward_peak_bytes": m.backward_peak_bytes,
        "saved_for_backward_bytes": m.saved_for_backward_bytes,
        "parameter_bytes": m.parameter_bytes,
        "gradient_bytes": m.gradient_bytes,
        "cuda_max_allocated_bytes": m.cuda_max_allocated_bytes,
        "by_module": [
            {"module": x.module, "call": x.call, "saved_for_backward_bytes": x.saved_for_backward_bytes,
             "output_bytes": x.output_bytes, "inside_saved_bytes": x.inside_saved_bytes,
             "checkpoint_saving_bytes": x.checkpoint_saving_bytes}
            for x in m.by_module
        ],
        "training_step": training_step_json(m.training_step),
        "approximate": [
            {"module": a.module, "call": a.call, "op": a.op, "reason": a.reason,
             "cpu_saved_bytes": a.cpu_saved_bytes, "meta_saved_bytes": a.meta_saved_bytes}
            for a in m.approximate
        ],
        **(checkpoint_json(report) if report is not None else {}),
        **memory_detail_json(m),
    }


def inspect_json(report: InspectReport) -> dict[str, Any]:
    """The ``gradprobe.inspect/1`` document."""
    f = report.facts
    trainable = [p for p in f.parameters if p.requires_grad]
    return {
        "schema": INSPECT_SCHEMA,
        "target": f.target,
        "torch": f.torch_version,
        "device": f.device,
        "mode": f.mode,
        "grad_mode": f.grad_mode,
        "backward": f.backward,
        "backward_skipped_reason": f.backward_skipped_reason,
        "loss": _num(f.loss),
        "global_grad_enabled": f.global_grad_enabled,
        "summary": {
            "parameters": len(f.parameters),
            "parameters_requiring_grad": len(trainable),
            "parameters_frozen": len(f.parameters) - len(trainable),
            "numel": sum(p.numel for p in f.parameters),
            "numel_requiring_grad": sum(p.numel for p in trainable),
            "bytes_requiring_grad": sum(p.nbytes for p in trainable),
            "bytes_frozen": sum(p.nbytes for p in f.parameters if not p.requires_grad),
            "modules_training": sum(m.training for m in f.modules),
            "modules_eval": sum(not m.training for m in f.modules),
            "forward_time_s": f.forward_time_s,
            "backward_time_s": f.backward_time_s,
        },
        "parameters": [param_json(p) for p in f.parameters],
        "buffers": [buffer_json(b) for b in f.buffers],
        "tensors": [tensor_json(t) for t in f.tensors],
        "outputs": [tensor_json(t) for t in f.outputs],
        "graph": graph_json(f.graph),
        "memory": memory_json(f.memory, report),
        "findings": [finding_json(x) for x in report.findings],
        "notes": list(f.notes),
        "skipped": list(f.skipped),
        "nonfinite_outputs": list(f.nonfinite_outputs),
        "modified_parameters": list(f.modified_parameters),
        "graph_cuts": [
            {"module": c.module, "call": c.call, "how": c.how, "op": c.op, "parameters": list(c.parameters),
             "complete": c.complete}
            for c in f.graph_cuts
        ],
        "requires_grad_changed": list(f.requires_grad_changed),
        "training_changed": list(f.training_changed),
        "modified_in_backward": list(f.modified_in_backward),
        # measured in the autograd graph: parameters whose exactly zero gradient an all-zero factor explains
        "zero_grad_partners": None if f.zero_grad_partners is None else [
            {"parameter": name, "zero_factors": list(partners)} for name, partners in f.zero_grad_partners],
        "parameter_changes": [{"name": c.name, "phase": c.phase, "how": c.how} for c in f.param_changes],
        "leaves": [{"name": x.name, "module": x.module, "shape": list(x.shape), "dtype": x.dtype,
                    "grad": x.grad and x.grad.value, "grad_norm": _num(x.grad_norm)} for x in f.leaves],
        # fused mixture-of-experts parameters: routing and each expert slice's gradient (gradprobe.facts.experts)
        "experts": [experts_json(e) for e in f.experts],
        "weights": {"missing_keys": list(f.missing_keys), "unexpected_keys": list(f.unexpected_keys)},
        **grad_health_json(report),  # "grad_health", only with --grads (gradprobe.render.inspect.grad_text)
    }
