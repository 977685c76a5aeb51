"""Run under ``torchrun`` on gloo: the real N-rank training step that ``--world-size N`` simulates.

Every rank builds the model with real values, wraps it the way gradprobe's ``--wrap`` does, and measures one
step with the same counting gradprobe uses (torch's FSDPMemTracker/MemTracker, through
gradprobe.run.fit.step.measure_step) but real collectives, plus plain-PyTorch figures the tracker is not asked
for: the bytes of each local parameter shard, gradient and optimizer state tensor.  Rank r writes rank{r}.json.

    torchrun --nproc-per-node N fit_reference.py OUT TARGET fsdp|ddp|self [--mp=PARAM[,REDUCE]] [--no-reshard]
             [GLOB ...]

``self``: the target wraps itself (fully_shard in its factory).  ``--mp``: FSDP2's MixedPrecisionPolicy, as
``--mixed-precision``; ``--no-reshard``: reshard_after_forward=False, as ``--no-reshard-after-forward``.
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
    out, target, kind, *rest = sys.argv[1:]
    flags = [a for a in rest if a.startswith("--")]
    globs = [a for a in rest if not a.startswith("--")]
    dist.init_process_group("gloo")
    from gradprobe.api import load
    from gradprobe.run.fit.prepare import ddp_wrap, fully_shard_units
    from gradprobe.run.fit.spec import parse_mixed_precision
    from gradprobe.run.fit.step import StepSpec, measure_step

    mp = next((parse_mixed_precision(f.split("=", 1)[1]) for f in flags if f.startswith("--mp=")), None)
    reshard = False if "--no-reshard" in flags else None
    loaded, example = load(target, path=[str(Path(__file__).resolve().parent)])
    model = loaded.model
    args, kwargs = example.args, example.kwargs
    buckets = 0
    if kind == "fsdp":
        fully_shard_units(model, globs, reshard, mp)
    elif kind == "ddp":
        model, buckets = ddp_wrap(model, args, kwargs, fake_group=False)
    kind = "fsdp" if kind == "self" else kind
    spec = StepSpec(wrap=kind)
    hidden: list[int] = []
    fit = measure_step(model, kind, args, kwargs, "sum", spec, buckets=buckets, backend_bytes=hidden)
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
        "backend_bytes": hidden,  # gloo's own working copies, kept out of the categories (run/fit/tracker.py)
        "plain": {"parameter_bytes": local_bytes(params),
                  "gradient_bytes": grad_bytes,
                  "optimizer_state_bytes": opt_state},
    }
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(doc))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
