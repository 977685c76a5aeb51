"""Will it fit? The three paths of per-rank memory side by side on larger models, with the usual anchors.

For each model (HF configs in benchmarks/configs, nothing downloaded) and world size:

* simulated   ``gradprobe inspect CONFIG --wrap fsdp --shard GLOB --world-size N``: rank 0 through torch's fake
              process group, its local shards allocated on the CPU (only where they fit this machine)
* estimated   the same with ``--device meta``: the step under FakeTensorMode, nothing allocated
* measured    (``--measured``, small models only) torchrun on gloo with N ranks, tests/dist/fit_reference.py
* ZeRO-3      DeepSpeed's model-state estimate, written from its documentation ("Memory Requirements",
              ``estimate_zero3_model_states_mem_needs_all_params``; deepspeed is not installed): per GPU
              ``4 * largest_layer_params + 18 * total_params / total_gpus`` bytes (offload none).  Model states
              only (mixed-precision fp16 params/grads + fp32 Adam), no activations.
* params      parameter-only count, as ``accelerate estimate-memory`` reports it: total fp32 parameter bytes
              (and divided by N).

Every gradprobe figure is a whole process: ``/usr/bin/time -v`` gives wall time and peak RSS.
``python benchmarks/fit.py [--quick] [--markdown PATH]``; results in benchmarks/results-fit.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "benchmarks" / "configs"

# (name, target, shard glob, local batch shape, world sizes, simulate too)
MODELS = [
    ("gpt2-xl", str(CONFIGS / "gpt2-xl"), "transformer.h.*", "1,1024", (8, 64), False),
    ("llama-7b", str(CONFIGS / "llama-7b"), "model.layers.*", "1,2048", (8, 64), False),
]
QUICK = [("tiny-llama", "fit_models:tiny_llama", "model.layers.*", None, (2, 4), True)]


def run_gradprobe(target: str, glob: str, shape: str | None, sizes: tuple[int, ...], meta: bool) -> dict[str, Any]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "gradprobe", "inspect", target, "--wrap", "fsdp", "--shard",
           glob, "--world-size", ",".join(map(str, sizes)), "--format", "json", "--path", str(REPO / "tests/dist")]
    if shape:
        cmd += ["--shape", shape]
    if meta:
        cmd += ["--device", "meta"]
    env = {**os.environ, "GRADPROBE_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] }
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    seconds = None
    if wall:
        h, m, s = wall.groups()
        seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    doc = json.loads(proc.stdout)
    return {"seconds": seconds, "rss_bytes": int(rss.group(1)) * 1024 if rss else None,
            "peaks": {r["world_size"]: r["peak_bytes"] for r in doc["memory"]["per_rank"]},
            "model_states": {r["world_size"]: (r["forward"]["sharded_parameters_bytes"],
                                               r["optimizer"]["gradients_bytes"],
                                               r["forward"]["optimizer_state_bytes"])
                             for r in doc["memory"]["per_rank"]}}


def anchors(target: str, glob: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Parameter counts on meta, and DeepSpeed's ZeRO-3 model-state formula from its documentation."""
    import torch

    sys.path.insert(0, str(REPO / "tests/dist"))
    from gradprobe.api import load

    loaded, _ = load(target, device="meta", path=[str(REPO / "tests/dist")])
    model = loaded.model
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    del model
    torch.set_num_threads(1)
    return {"params": total, "param_bytes_fp32": 4 * total,
            "zero3": {n: 4 * largest + 18 * total // n for n in sizes},
            "params_per_rank": {n: 4 * total // n for n in sizes}}


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    results = []
    for name, target, glob, shape, sizes, simulate in (QUICK if args.quick else MODELS):
        row: dict[str, Any] = {"model": name, "world_sizes": sizes, **anchors(target, glob, sizes)}
        row["estimated"] = run_gradprobe(target, glob, shape, sizes, meta=True)
        if simulate:
            row["simulated"] = run_gradprobe(target, glob, shape, sizes, meta=False)
        results.append(row)
        print(json.dumps(row, default=str), flush=True)
    (REPO / "benchmarks" / "results-fit.json").write_text(json.dumps(results, indent=1, default=str))
    lines = ["| model | N | estimated peak | simulated peak | gradprobe model states (params+grads+Adam) | "
             "ZeRO-3 formula (model states) | fp32 params / N | estimate wall, RSS |", "|" + "---|" * 8]
    for row in results:
        est, sim = row["estimated"], row.get("simulated", {})
        for n in row["world_sizes"]:
            states = est.get("model_states", {}).get(n)
            lines.append(f"| {row['model']} | {n} | {gib(est.get('peaks', {}).get(n))} | "
                         f"{gib(sim.get('peaks', {}).get(n)) if sim else '-'} | "
                         f"{gib(sum(states)) if states else '-'} | {gib(row['zero3'][n])} | "
                         f"{gib(row['params_per_rank'][n])} | {est.get('seconds')} s, {gib(est.get('rss_bytes'))} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
