"""gradprobe's per-rank cost under torchrun, side by side with a plain DDP / FSDP2 forward+backward.

``python benchmarks/distributed.py`` relaunches itself under ``torch.distributed.run`` with 2 ranks on gloo
(``--nproc N`` to change; ``--quick`` for small models and 3 repeats).  On every rank, for each model and
wrapper, two variants run alternately (a barrier before each, outside the timing, so both ranks start together):

* plain        the wrapped model's forward, the sum of its outputs, backward, gradients dropped
* engine       ``gradprobe.api.probe`` through the wrapper alone: the single-process engine's share of the cost
* gradprobe    what ``gradprobe inspect`` does per rank once the model is loaded: the run through the wrapper
               with every tracker on (live bytes, saved tensors, module outputs, grad_fn walk), the per-rank
               observers (local gradients, FSDP all-gather/reduce-scatter bytes, buffer digests), the
               checkpoints on the control store, ``gather_object`` of the rank's facts, and on rank 0 the merge
               and every judge

Each figure is the median over ``--repeats`` rounds per rank; the ratio is gradprobe / plain on that rank, of
wall-clock time and of the main thread's CPU time (``time.thread_time``: on a loaded machine the wall clock also
counts the time a rank waits for a core or for the other rank; the CPU time is what the rank computed).
Results go to ``benchmarks/results-distributed.json`` (git-ignored) and, with ``--markdown PATH``, a table.
Torch runs one intra-op thread per rank (two ranks share this machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = ["mlp", "resnet_small", "tiny_gpt", "resnet50", "gpt2_small"]  # the sizes of benchmarks/run.py
QUICK_MODELS = ["mlp", "resnet_small", "tiny_gpt"]
KWARGS: dict[str, dict[str, int]] = {}


def relaunch(argv: list[str], nproc: int) -> int:
    """Start this script on ``nproc`` ranks through torch's own launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
           *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def fsdp_units(model: Any) -> list[str]:
    """The modules to ``fully_shard`` before the root, as a training script would: each block / stage."""
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if name and parts[-1].isdigit() and any(True for _ in module.parameters()):
            names.append(name)  # ModuleList/Sequential items: transformer blocks, ResNet blocks, MLP layers
    return sorted(names, key=lambda n: -n.count("."))


def build(name: str, wrapper: str) -> tuple[Any, Any]:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from tests.fixtures import zoo

    torch.manual_seed(0)
    model = getattr(zoo, name)(**KWARGS.get(name, {}))
    x = model.example_input_array
    if wrapper == "ddp":
        return DistributedDataParallel(model), x
    from torch.distributed.fsdp import fully_shard

    modules = dict(model.named_modules())
    for unit in fsdp_units(model):
        fully_shard(modules[unit])
    fully_shard(model)
    return model, x


def variants(name: str, wrapper: str, session: Any) -> dict[str, Callable[[], Any]]:
    from gradprobe.api import probe
    from gradprobe.api_distributed.inspect import inspect_loaded
    from gradprobe.api_distributed.rank import RankModel
    from gradprobe.load.target import ExampleInputs, LoadedModel
    from gradprobe.run.distributed.wrappers import describe

    model, x = build(name, wrapper)
    inputs = ExampleInputs((x,), {}, "example_input_array")
    rm = RankModel(describe(model), inputs, LoadedModel(model))

    def plain() -> None:
        out = model(x)
        out.float().sum().backward()
        for p in model.parameters():
            p.grad = None

    def engine() -> None:
        probe(model, inputs, loaded=rm.loaded)

    def gradprobe() -> None:
        inspect_loaded(session, rm, f"tests.fixtures.zoo:{name}")

    return {"plain": plain, "engine": engine, "gradprobe": gradprobe}


def alternate(fns: dict[str, Callable[[], Any]], repeats: int,
              barrier: Callable[[], None]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds of the main thread (``time.thread_time``: what this rank computed, not the time
    it waited for the other rank or for a core of a loaded machine) of each variant, run in turn."""
    for fn in fns.values():  # warm-up (lazy initialisation of FSDP, allocator, kernels)
        barrier()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            barrier()
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.thread_time() - start_cpu)
    return times, cpu


def rank_main(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from gradprobe.run.distributed.env import launch_env
    from gradprobe.run.distributed.session import DistSession

    torch.set_num_threads(1)
    env = launch_env()
    assert env is not None
    rows: list[dict[str, Any]] = []
    with DistSession(env, 300.0) as session:
        session.ensure_default_group(torch.device("cpu"))
        session.make_group()

        def barrier() -> None:
            dist.barrier(group=session.group)

        for wrapper in args.wrappers:
            for name in args.models:
                times, cpu = alternate(variants(name, wrapper, session), args.repeats, barrier)
                mine = {k: statistics.median(v) for k, v in times.items()}
                mine.update({f"{k}_cpu": statistics.median(v) for k, v in cpu.items()})
                everyone = [None] * env.world_size
                dist.all_gather_object(everyone, mine, group=session.group)
                if env.rank == 0:
                    row: dict[str, Any] = {"model": name, "wrapper": wrapper}
                    for r, medians in enumerate(everyone):
                        row[f"plain_ms_rank{r}"] = round(medians["plain"] * 1000, 2)
                        row[f"engine_ms_rank{r}"] = round(medians["engine"] * 1000, 2)
                        row[f"gradprobe_ms_rank{r}"] = round(medians["gradprobe"] * 1000, 2)
                        row[f"ratio_rank{r}"] = round(medians["gradprobe"] / medians["plain"], 2)
                        row[f"engine_ratio_rank{r}"] = round(medians["engine"] / medians["plain"], 2)
                        row[f"cpu_ratio_rank{r}"] = round(medians["gradprobe_cpu"] / medians["plain_cpu"], 2)
                        row[f"engine_cpu_ratio_rank{r}"] = round(medians["engine_cpu"] / medians["plain_cpu"], 2)
                    row["ratio_max"] = max(row[f"ratio_rank{r}"] for r in range(env.world_size))
                    row["cpu_ratio_max"] = max(row[f"cpu_ratio_rank{r}"] for r in range(env.world_size))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        code = session.finish(0)
    if env.rank == 0:
        report(rows, env.world_size, args)
    return code


def report(rows: list[dict[str, Any]], world: int, args: argparse.Namespace) -> None:
    import torch

    header = ["model", "wrapper"] + [f"plain ms r{r}" for r in range(world)] + \
        [f"gradprobe ms r{r}" for r in range(world)] + [f"ratio r{r}" for r in range(world)] + \
        [f"engine alone r{r}" for r in range(world)] + [f"CPU ratio r{r}" for r in range(world)] + \
        [f"engine alone CPU r{r}" for r in range(world)]
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.processor() or platform.machine()} "
             f"({os.cpu_count()} cores), Python {platform.python_version()}, torch {torch.__version__}, {world} ranks "
             f"on gloo (torch.distributed.run), 1 thread per rank, medians of {args.repeats} alternating rounds; "
             f"ratios of wall-clock time, and of the main thread's CPU time (time.thread_time).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["wrapper"]]
        cells += [str(row[f"plain_ms_rank{r}"]) for r in range(world)]
        cells += [str(row[f"gradprobe_ms_rank{r}"]) for r in range(world)]
        cells += [f"{row[f'ratio_rank{r}']:.2f}x" for r in range(world)]
        cells += [f"{row[f'engine_ratio_rank{r}']:.2f}x" for r in range(world)]
        cells += [f"{row[f'cpu_ratio_rank{r}']:.2f}x" for r in range(world)]
        cells += [f"{row[f'engine_cpu_ratio_rank{r}']:.2f}x" for r in range(world)]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    Path(args.json).write_text(json.dumps({"world_size": world, "repeats": args.repeats, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per variant (default 7, --quick 3)")
    parser.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--wrappers", default="ddp,fsdp", help="ddp, fsdp or both")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results-distributed.json"))
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
    args.wrappers = args.wrappers.split(",")
    args.repeats = args.repeats or (3 if args.quick else 7)
    return args


def main() -> int:
    argv = sys.argv[1:]
    args = parse(argv)
    if "RANK" not in os.environ:
        return relaunch(argv, args.nproc)
    return rank_main(args)


if __name__ == "__main__":
    sys.exit(main())
