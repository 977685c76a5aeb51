"""Run under ``torchrun`` on gloo: the real N-rank training step that ``--world-size N`` simulates.

Every rank builds the model with real values, wraps it the way gradprobe's ``--wrap`` does, and measures one
step with the same counting gradprobe uses (torch's FSDPMemTracker/MemTracker, through
gradprobe.run.fit.step.measure_step) but real collectives, plus plain-PyTorch figures the tracker is not asked
for: the bytes of each local parameter shard, gradient and optimizer state tensor.  Rank r writes rank{r}.json.

    torchrun --nproc-per-node N fit_reference.py OUT TARGET fsdp|ddp [GLOB ...]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


def local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind the local parts of ``tensors`` (gradient shards share one)."""
    seen: dict[int, int] = {}
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        st = local.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def main() -> None:
    warnings.simplefilter("ignore")
    out, target, kind, *globs = sys.argv[1:]
    dist.init_process_group("gloo")
    from gradprobe.api import load
    from gradprobe.run.fit.prepare import ddp_wrap, fully_shard_units
    from gradprobe.run.fit.step import StepSpec, measure_step

    loaded, example = load(target, path=[str(Path(__file__).resolve().parent)])
    model = loaded.model
    args, kwargs = example.args, example.kwargs
    buckets = 0
    if kind == "fsdp":
        fully_shard_units(model, globs, True)
    else:
        model, buckets = ddp_wrap(model, args, kwargs, fake_group=False)
    spec = StepSpec(wrap=kind)
    fit = measure_step(model, kind, args, kwargs, "sum", spec, buckets=buckets)
    inner = getattr(model, "module", model)
    params = list(inner.parameters())
    grad_bytes = local_bytes([p.grad for p in params if p.grad is not None])
    adam = torch.optim.Adam(params)  # the state Adam keeps for these local shards, counted in plain PyTorch
    adam.step()
    opt_state = local_bytes([t for state in adam.state.values() for t in state.values()
                             if isinstance(t, torch.Tensor)])
    doc = {
        "rank": dist.get_rank(),
        "phases": {p.phase: {"total": p.total, **dict(p.categories)} for p in fit.phases},
        "plain": {"parameter_bytes": local_bytes(params),
                  "gradient_bytes": grad_bytes,
                  "optimizer_state_bytes": opt_state},
    }
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(doc))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
