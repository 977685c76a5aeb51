"""Cost of the memory event log (``--memory-detail``, issue 14): ``python benchmarks/event_log.py``.

For each benchmark model, ``gradprobe.api.probe`` runs alternately without and with the event log (median of
``--repeats`` runs each, one intra-op thread), and the log's size is measured: the packed columns it keeps
(bytes per op) and, with tracemalloc, the Python memory the run's tracking allocated at its peak (bytes per
op, with and without the log).  ``--million`` adds a model of about 10^6 ops (a 500,000-step chain of
element-wise ops, forward and backward) to show the memory stays bounded per op.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from gradprobe.api import probe  # noqa: E402
from tests.fixtures import zoo  # noqa: E402

MODELS = {"mlp": zoo.mlp, "resnet_small": zoo.resnet_small, "tiny_gpt": zoo.tiny_gpt, "resnet50": zoo.resnet50,
          "gpt2_small": zoo.gpt2_small}


class Chain(nn.Module):
    """``steps`` element-wise ops in the forward (and as many in the backward): ~2 * steps aten ops."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(16))
        self.steps = steps
        self.example_input_array = torch.ones(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.w
        for _ in range(self.steps):
            y = y * 1.0000001
        return y


def traced_peak(model: nn.Module, detail: bool) -> int:
    tracemalloc.start()
    try:
        probe(model, model.example_input_array, memory_detail=detail, tensors=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(name: str, model: nn.Module, repeats: int) -> dict[str, float]:
    x = model.example_input_array
    times: dict[bool, list[float]] = {False: [], True: []}
    for detail in (False, True):  # warm-up
        probe(model, x, memory_detail=detail)
    for _ in range(repeats):
        for detail in (False, True):
            start = time.perf_counter()
            probe(model, x, memory_detail=detail)
            times[detail].append(time.perf_counter() - start)
    log = probe(model, x, memory_detail=True).facts.memory.events
    without, with_log = statistics.median(times[False]), statistics.median(times[True])
    plain, detailed = traced_peak(model, False), traced_peak(model, True)
    return {"model": name, "ops": log.ops, "events": log.events, "probe_ms": round(without * 1000, 1),
            "probe_with_log_ms": round(with_log * 1000, 1), "time_ratio": round(with_log / without, 3),
            "kept_bytes_per_op": round(log.nbytes / log.ops, 1),
            "traced_extra_bytes_per_op": round((detailed - plain) / log.ops, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--million", action="store_true", help="also a ~10^6-op chain (slow)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        rows.append(measure(name, MODELS[name](), args.repeats))
        print(rows[-1], flush=True)
    if args.million:
        torch.manual_seed(0)
        rows.append(measure("chain_500k", Chain(500_000), 1))
        print(rows[-1], flush=True)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")


if __name__ == "__main__":
    main()
